"""playbooks/switchover.yml against the scenario's cluster."""

import os
import pathlib
import subprocess

from conftest import wait_healthy

testinfra_hosts = ["hd-witness"]

PLAYBOOK = pathlib.Path(__file__).resolve().parents[3] / "playbooks" / "switchover.yml"


def test_switchover_playbook_hands_the_leader_to_the_replica(host):
    leader, replica = wait_healthy(host)
    # The scenario's inventory (and its group_vars: the REST API account) as Molecule wrote it.
    result = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(PLAYBOOK),
            "-e",
            f"switchover_candidate={replica}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert wait_healthy(host) == (replica, leader)
