"""playbooks/switchover.yml against the scenario's cluster."""

from conftest import wait_healthy
from stackops import run_playbook

testinfra_hosts = ["hd-witness"]


def test_switchover_playbook_hands_the_leader_to_the_replica(host):
    leader, replica = wait_healthy(host)
    # The scenario's inventory (and its group_vars: the REST API account) as Molecule wrote it.
    result = run_playbook("switchover.yml", "-e", f"switchover_candidate={replica}", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert wait_healthy(host) == (replica, leader)
