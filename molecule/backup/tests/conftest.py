"""Shared helpers of the backup scenario's Testinfra tests (pgBackRest on the single-node
topology). The test-only values live in molecule.yml's inventory; the tests read them there."""

import json
import os
import pathlib
import shlex
import sys

import pytest
import testinfra
import yaml

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
# The shared test helpers (stackops.run_playbook: a playbook run as an operator would;
# debian: the PostgreSQL major each release packages; stackclient.wait_for: a bounded poll).
sys.path.insert(0, str(SCENARIO_DIR.parent / "resources" / "tests"))
STANZA = "koinonia"
REPO_PATH = "/var/lib/pgbackrest"


@pytest.fixture(scope="session")
def cfg():
    molecule_yml = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
    return molecule_yml["provisioner"]["inventory"]["group_vars"]["all"]


def get_host(name):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


@pytest.fixture(scope="session")
def db():
    return get_host("bk-db")


@pytest.fixture(scope="session")
def repo():
    return get_host("bk-repo")


def as_postgres(command):
    return f"runuser -u postgres -- {command}"


def psql(sql, database="postgres", port=5432):
    """psql as the postgres superuser over the local socket (peer authentication)."""
    return as_postgres(
        f"psql -XAtq -v ON_ERROR_STOP=1 -p {port} -d {database} -c {shlex.quote(sql)}"
    )


def repo_info(repo):
    result = repo.run(as_postgres(f"pgbackrest --stanza={STANZA} --output=json info"))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)[0]


def backups(repo, backup_type):
    return [b for b in repo_info(repo).get("backup", []) if b["type"] == backup_type]
