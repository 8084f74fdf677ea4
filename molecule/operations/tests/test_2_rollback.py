"""Rollback (playbooks/rollback.yml): back to the release installed before the current one,
with the same drain and health gate, zero failed requests."""

from conftest import (
    APPS,
    HTTPS_PORT,
    UP_DEADLINE,
    all_serving,
    current_release,
    db_now,
    messages_since,
    run_playbook,
    serving_release,
    task_results,
)
from load import BoundedLoad
from stackclient import wait_for


def test_2_rollback_under_load_returns_every_host_to_the_previous_release(
    lb, apps, db, owner_token, group_id, releases, healthy_stack
):
    assert {current_release(h) for h in apps.values()} == {releases["new"]}
    since = db_now(db)
    with BoundedLoad(HTTPS_PORT, owner_token, group_id) as load:
        run = run_playbook("rollback.yml")
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
    report = load.report
    print(f"rollback: {report.summary()}")

    assert run.returncode == 0, run.stdout[-6000:]
    for name, host in apps.items():
        assert current_release(host) == releases["converged"], name
        assert serving_release(host) == releases["converged"], name
    assert report.sent >= 30, report.summary()
    assert report.failed == 0, report.failures[:20]
    assert len(set(report.message_ids)) == report.posts
    assert messages_since(db, since) == (report.posts, report.posts)
    # The target was checked once on every host (before any drain), not again per batch.
    checks = task_results(run.stdout, "Find the complete releases on the host")
    assert sorted(h for s, h in checks if s == "ok") == sorted(APPS), checks


def test_2_rollback_to_a_release_the_hosts_do_not_have_is_refused_before_any_drain(
    lb, apps, releases
):
    run = run_playbook("rollback.yml", "-e", "rollback_to=0.0.0-doesnotexist")
    output = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert "cannot roll back to 0.0.0-doesnotexist" in output, output[-3000:]
    assert releases["converged"] in output  # the message lists what is installed
    for name, host in apps.items():
        assert current_release(host) == releases["converged"], name
    # Refused up front: no host was taken out of rotation.
    assert "Take the peer out of rotation" not in run.stdout
    assert all_serving(lb)
