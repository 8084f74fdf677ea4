"""The firewall lets each tier reach only the ports it needs on fw-app, and nothing else."""

import json
import os
import pathlib
import re
import subprocess

import pytest
from conftest import DROPPED, connect, connects, other_host

testinfra_hosts = ["fw-app"]

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent
RULES_FILE = "/etc/nftables.d/koinonia.nft"


@pytest.mark.parametrize(
    ("port", "allowed", "refused"),
    [
        (3000, "fw-lb", "fw-worker"),
        (6432, "fw-worker", "fw-lb"),
        (6379, "fw-worker", "fw-lb"),
        (9100, "fw-lb", "fw-worker"),
        (2380, "fw-lb", "fw-worker"),
        (26379, "fw-worker", "fw-lb"),
    ],
    ids=[
        "app_port-accepts_the_balancer_and_refuses_other_hosts",
        "pgbouncer-accepts_app_servers_and_refuses_the_balancer",
        "redis-accepts_app_servers_and_refuses_the_balancer",
        "node_exporter-accepts_the_monitoring_host_and_refuses_other_hosts",
        "etcd_peer-accepts_etcd_members_and_refuses_a_patroni_node",
        "redis_sentinel-accepts_app_servers_and_refuses_the_balancer",
    ],
)
def test_port_accepts_its_tier_and_drops_the_others(listeners, port, allowed, refused):
    assert connects(allowed, port), f"{allowed} cannot reach fw-app:{port}"
    assert connect(refused, port) == DROPPED, f"{refused} was not dropped on fw-app:{port}"


def test_etcd_client_port_accepts_a_patroni_node_that_its_peer_port_drops(listeners):
    assert connects("fw-worker", 2379), "fw-worker (patroni) cannot reach etcd's client port"
    assert connect("fw-worker", 2380) == DROPPED


def test_port_no_rule_opens_is_dropped_for_every_host(listeners):
    # fw-app is not in the databases group: its 5432 listener is reachable by no one.
    assert connect("fw-lb", 5432) == DROPPED
    assert connect("fw-worker", 5432) == DROPPED


def test_ssh_is_open_to_every_host(host, listeners):
    assert (
        'tcp dport 22 accept comment "SSH"'
        in host.run("nft list table inet koinonia_filter").stdout
    )
    assert connects("fw-lb", 22)
    assert connects("fw-worker", 22)


def test_only_input_is_filtered_with_policy_drop(host):
    listed = host.run("nft -j list table inet koinonia_filter")
    assert listed.rc == 0, listed.stderr
    chains = [item["chain"] for item in json.loads(listed.stdout)["nftables"] if "chain" in item]
    assert [(c["name"], c["hook"], c["policy"]) for c in chains] == [("input", "input", "drop")]


def test_ruleset_file_is_managed_valid_and_loaded_at_boot(host):
    rules = host.file(RULES_FILE)
    assert rules.contains("Ansible managed")
    assert host.run(f"nft -c -f {RULES_FILE}").rc == 0
    conf = host.file("/etc/nftables.conf")
    assert conf.contains('include "/etc/nftables.d/\\*.nft"')
    # Debian's stock file starts with "flush ruleset", which would wipe Docker's tables.
    assert not re.search(r"^\s*flush", conf.content_string, re.M)
    assert host.service("nftables").is_enabled
    assert host.service("nftables").is_running


def test_restarting_nftables_keeps_the_rules_and_the_other_tables(host, listeners):
    def tables():
        # -s: without counters, which move between two listings.
        return host.run("nft -s list ruleset").stdout

    before = tables()
    assert "table inet koinonia_filter" in before
    assert "table ip molecule_other" in before
    restart = host.run("systemctl restart nftables")
    assert restart.rc == 0, restart.stderr
    after = tables()
    assert re.findall(r"^table .*$", after, re.M) == re.findall(r"^table .*$", before, re.M)
    section = re.compile(r"^table inet koinonia_filter \{.*?^\}", re.M | re.S)
    assert section.search(after).group(0) == section.search(before).group(0)
    assert connects("fw-lb", 3000)
    assert connect("fw-worker", 3000) == DROPPED


def test_other_tables_are_left_untouched(host):
    other = host.run("nft list table ip molecule_other")
    assert other.rc == 0, other.stderr
    assert "someone else's rule" in other.stdout
    # Docker's own table inside the container (its DNS) survived too: names still resolve.
    assert "DOCKER_OUTPUT" in host.run("nft list table ip nat").stdout
    assert host.run("getent hosts fw-lb").rc == 0


def run_playbook(playbook, *args):
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(PROJECT_DIR / "roles"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], *args]
    cmd.append(str(SCENARIO_DIR / playbook))
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    return run.returncode, " ".join((run.stdout + run.stderr).split())


def test_check_mode_with_diff_reports_no_change(host):
    rc, output = run_playbook("converge.yml", "--check", "--diff")
    assert rc == 0, output[-3000:]
    recap = re.search(r"fw-app\s*:\s*ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", output)
    assert recap, output[-3000:]


def test_check_mode_on_a_fresh_host_shows_the_ruleset_and_changes_nothing():
    worker = other_host("fw-worker")
    assert worker.run("dpkg -s nftables").rc != 0
    rc, output = run_playbook("check_fresh_host.yml", "--check", "--diff")
    assert rc == 0, output[-3000:]
    assert re.search(
        r"fw-worker\s*:\s*ok=\d+\s+changed=[1-9]\d*\s+unreachable=0\s+failed=0", output
    )
    assert "tcp dport 3000 accept" in output  # the diff of the rules file it would write
    assert worker.run("dpkg -s nftables").rc != 0
    assert not worker.file("/etc/nftables.d/koinonia.nft").exists
