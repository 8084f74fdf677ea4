"""playbooks/verify.yml: a PASS/FAIL table of the post-deployment checks; non-zero and the
failed item named when something is wrong. The tests read the table from the JSON report
verify.yml writes with -e verify_report=..."""

import json

from conftest import APPS, LB, UP_DEADLINE, all_serving, run_playbook
from stackclient import wait_for


def verify(tmp_path):
    report = tmp_path / "verify.json"
    run = run_playbook("verify.yml", "-e", f"verify_report={report}")
    rows = json.loads(report.read_text()) if report.exists() else []
    return run, [("PASS" if r["ok"] else "FAIL", r["item"], r["host"]) for r in rows]


def test_5_verify_passes_on_the_healthy_stack(lb, tmp_path, healthy_stack):
    run, table = verify(tmp_path)
    assert run.returncode == 0, run.stdout[-4000:]
    assert table and all(r == "PASS" for r, _, _ in table), table
    items = {item for _, item, _ in table}
    for expected in (
        "health through the balancer (TLS)",
        "every app server up and in rotation",
        "same release on every app server",
        "TLS 1.1 refused, TLS 1.2 accepted",
        "PgBouncer pool for koinonia visible",
    ):
        assert expected in items, items
    assert {host for _, _, host in table} >= set(APPS)
    # The table is printed for people too.
    assert "PASS  |  health through the balancer (TLS)" in run.stdout


def test_5_verify_fails_naming_the_stopped_app_server(lb, apps, tmp_path):
    stopped = APPS[1]
    apps[stopped].check_output("systemctl stop koinonia-api")
    try:
        run, table = verify(tmp_path)
        failed = [(item, host) for r, item, host in table if r == "FAIL"]
        assert run.returncode != 0
        assert ("API ready (direct, :3000)", stopped) in failed, failed
        # Only what the stopped API explains: itself, the balancer's peer list, the release.
        assert {host for _, host in failed} <= {stopped, LB, "all"}, failed
        assert f"VERIFY FAILED: API ready (direct, :3000) on {stopped}" in " ".join(
            run.stdout.split()
        )
    finally:
        apps[stopped].check_output("systemctl start koinonia-api")
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
