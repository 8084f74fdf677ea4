"""Shared helpers of the data scenario's Testinfra tests.

The test-only credentials live in one place, molecule.yml's inventory (group_vars/all);
the tests read them from there instead of repeating them.
"""

import os
import pathlib
import shlex
import sys

import pytest
import testinfra
import yaml

# The helpers shared by the scenarios (sandbox.py: systemd-analyze security).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cfg():
    molecule_yml = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
    return molecule_yml["provisioner"]["inventory"]["group_vars"]["all"]


def other_host(name):
    """A Testinfra host other than the one the test module targets."""
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


def with_env(command, **env):
    """`command` run with environment variables set (test-only credentials)."""
    assignments = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in env.items())
    return f"{assignments} {command}" if assignments else command
