"""playbooks/verify.yml against the database tier alone: the Patroni cluster's leader,
replicas, timeline and WAL archiving, and the newest backup in the pgBackRest repository."""

import json

from conftest import wait_healthy
from stackops import run_playbook
from test_pgbackrest import ensure_full_backup

testinfra_hosts = ["hd-witness"]

HA_ITEMS = {
    "Patroni: one leader",
    "Patroni: replicas streaming, lag within 1048576 bytes",
    "Patroni: every member on one timeline",
    "WAL archiving on the leader not failing",
    "pgBackRest: stanza and WAL archive readable",
    "pgBackRest: newest backup younger than 36.0 h",
}


def verify(tmp_path, *extra):
    report = tmp_path / "verify.json"
    result = run_playbook("verify.yml", "-e", f"verify_report={report}", *extra, timeout=300)
    rows = json.loads(report.read_text()) if report.exists() else []
    return result, rows


def test_verify_passes_the_cluster_and_its_backups(host, tmp_path):
    leader, _replica = wait_healthy(host)
    ensure_full_backup(host)
    result, rows = verify(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert {row["item"] for row in rows} >= HA_ITEMS, rows
    assert all(row["ok"] for row in rows), [row for row in rows if not row["ok"]]
    archiving = [row for row in rows if row["item"] == "WAL archiving on the leader not failing"]
    assert [row["host"] for row in archiving] == [leader]


def test_verify_fails_naming_a_backup_older_than_the_bound(host, tmp_path):
    wait_healthy(host)
    ensure_full_backup(host)
    result, rows = verify(tmp_path, "-e", "verify_max_backup_age_hours=0")
    assert result.returncode != 0
    failed = [row["item"] for row in rows if not row["ok"]]
    assert failed == ["pgBackRest: newest backup younger than 0.0 h"], rows
    assert "VERIFY FAILED: pgBackRest: newest backup younger than 0.0 h" in result.stdout
