"""Shared helpers of the ha-balancer scenario's Testinfra tests.

The addresses and timings live in molecule.yml; the tests read them from there. Every fault
test starts from the healthy state (both balancers up, hb-lb1 holding the virtual address)
and leaves it behind, so the tests do not depend on their order.
"""

import json
import os
import pathlib
import subprocess
import time

import pytest
import testinfra
import yaml

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
ROLE_DIR = SCENARIO_DIR.parent.parent / "roles" / "keepalived"
BALANCERS = ["hb-lb1", "hb-lb2"]
PREFERRED, OTHER = BALANCERS
CLIENT = "hb-client"
LOAD_SCRIPT = pathlib.Path(__file__).with_name("balancer_load.py")


def balancer_vars():
    molecule_yml = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
    return molecule_yml["provisioner"]["inventory"]["group_vars"]["loadbalancers"]


VIRTUAL_ADDRESS = balancer_vars()["keepalived_virtual_address"]
SERVER_NAME = balancer_vars()["nginx_server_name"]
PREEMPT_DELAY = balancer_vars()["keepalived_preempt_delay"]


def get_host(name):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


@pytest.fixture(scope="session")
def client():
    return get_host(CLIENT)


def docker(*args, check=True):
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True)


def config_test_command(name, path):
    """keepalived's check of the configuration at `path` on `name`, as the role runs it there
    (vars/main.yml's __keepalived_config_test_command, on a file with no x bit)."""
    release = docker("exec", name, "sh", "-c", ". /etc/os-release && echo $VERSION_ID").stdout
    role_vars = yaml.safe_load((ROLE_DIR / "vars" / f"Debian-{release.strip()}.yml").read_text())
    runner = role_vars["__keepalived_config_test_runner"].split()
    return [*runner, "/usr/sbin/keepalived", "--all-config", "--config-test", "-f", path]


def wait_for(what, check, timeout, interval=0.5):
    """check() until it returns a true value, at most `timeout` seconds; that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, subprocess.CalledProcessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def is_running(name):
    return docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"


def holders():
    """The running balancers that have the virtual address on an interface."""
    found = []
    for name in BALANCERS:
        if not is_running(name):
            continue
        out = docker("exec", name, "ip", "-4", "-o", "addr", "show").stdout
        if f" {VIRTUAL_ADDRESS}/" in out:
            found.append(name)
    return found


def transitions(name, since):
    """keepalived's state changes on a balancer since a time (epoch seconds), in order."""
    out = docker(
        "exec",
        name,
        "journalctl",
        "-u",
        "keepalived",
        "--no-pager",
        "-o",
        "cat",
        "--since",
        f"@{since:.3f}",
    ).stdout
    return [
        line.split("Entering ")[1].split(" STATE")[0]
        for line in out.splitlines()
        if "Entering " in line and " STATE" in line
    ]


def vrrp_state_metric(name):
    """The VRRP state keepalived's notify script last wrote for node_exporter on a balancer."""
    out = docker(
        "exec", name, "cat", "/var/lib/prometheus/node-exporter/koinonia_keepalived.prom"
    ).stdout
    sample = 'koinonia_keepalived_vrrp_state{vrrp_instance="koinonia_balancers"} '
    return next(int(line.split()[-1]) for line in out.splitlines() if line.startswith(sample))


def answers_over_tls(client):
    """The HTTP status of GET /api/... on the virtual address from the client, over HTTPS."""
    cmd = client.run(
        "curl --silent --insecure --max-time 3 --output /dev/null --write-out '%%{http_code} %%{scheme}' "
        "--resolve %s:443:%s https://%s/api/ha-balancer/check",
        SERVER_NAME,
        VIRTUAL_ADDRESS,
        SERVER_NAME,
    )
    return cmd.stdout.strip().upper()


def wait_healthy(timeout=60):
    """Both balancers up and the preferred one holding the virtual address (alone)."""
    for name in BALANCERS:
        if not is_running(name):
            docker("start", name)
        wait_for(
            f"{name} booted",
            lambda n=name: (
                docker(
                    "exec", n, "systemctl", "is-system-running", "--wait", check=False
                ).stdout.strip()
                in ("running", "degraded")
            ),
            timeout,
        )
        wait_for(
            f"nginx on {name}",
            lambda n=name: (
                docker("exec", n, "systemctl", "is-active", "nginx", check=False).stdout.strip()
                == "active"
            ),
            timeout,
        )
    wait_for(
        f"{PREFERRED} alone holds {VIRTUAL_ADDRESS}",
        lambda: holders() == [PREFERRED],
        timeout + PREEMPT_DELAY,
    )


@pytest.fixture
def healthy():
    wait_healthy()
    yield
    wait_healthy()


class Load:
    """balancer_load.py running on the client container until its LOAD_SECONDS are over."""

    def __init__(self, seconds, threads=3, interval=0.1):
        self.seconds, self.threads = seconds, threads
        self.report_path = f"/var/tmp/hb-load-{time.time_ns()}.json"
        docker("cp", str(LOAD_SCRIPT), f"{CLIENT}:/var/tmp/balancer_load.py")
        env = {
            "LOAD_ADDRESS": VIRTUAL_ADDRESS,
            "LOAD_SERVER_NAME": SERVER_NAME,
            "LOAD_SECONDS": str(seconds),
            "LOAD_THREADS": str(threads),
            "LOAD_INTERVAL": str(interval),
            "LOAD_REPORT": self.report_path,
        }
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        docker("exec", "-d", *env_args, CLIENT, "python3", "/var/tmp/balancer_load.py")

    def report(self):
        def read():
            out = docker("exec", CLIENT, "cat", self.report_path, check=False)
            return json.loads(out.stdout) if out.returncode == 0 else None

        return wait_for("the load report", read, self.seconds + 30)
