"""Helpers shared by the scenarios that drive the operators' playbooks against a deployed
stack (operations, chaos): run a playbook as an operator would, read its recap and task
results, and read the balancer's upstream status."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess

import testinfra

PROJECT_DIR = pathlib.Path(__file__).resolve().parents[3]


def docker_host(name: str):
    return testinfra.get_host(f"docker://{name}")


def run_playbook(name: str, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """ansible-playbook playbooks/<name> against the scenario's inventory, as an operator."""
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(PROJECT_DIR / "roles"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    # The inventory directory, not MOLECULE_INVENTORY_FILE: the stack's variables are a
    # second inventory source linked beside it (molecule/resources/stack/inventory.yml).
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    cmd = [
        "ansible-playbook",
        "-i",
        inventory,
        str(PROJECT_DIR / "playbooks" / name),
        *args,
    ]
    # stderr merged into stdout: with Molecule's ansible.cfg (display_failed_stderr) a
    # failed task's message goes to stderr, and the tests read the output as one stream.
    run = subprocess.run(
        cmd,
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    print(f"$ {' '.join(cmd)}  -> rc {run.returncode}")
    print(run.stdout[-6000:])
    return run


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    out = {}
    for host, counters in re.findall(r"^(\S+)\s*:\s*(ok=.*)$", output, re.M):
        out[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return out


def task_results(output: str, task: str) -> list[tuple[str, str]]:
    """(status, host) lines of every run of the tasks whose name contains `task`."""
    results = []
    for block in re.findall(
        r"^TASK \[[^\]]*" + re.escape(task) + r"[^\]]*\][^\n]*\n(.*?)(?=^TASK |^PLAY |\Z)",
        output,
        re.M | re.S,
    ):
        results += re.findall(r"^(ok|changed|skipping|failed|fatal): \[([^\]\s]+)", block, re.M)
    return results


def upstream_status(lb) -> dict:
    """The balancer's /upstream_status (internal port 8080) as {peer name: peer}."""
    out = lb.check_output("curl -s --max-time 5 http://127.0.0.1:8080/upstream_status")
    return {p["name"]: p for p in json.loads(out)["peers"]}
