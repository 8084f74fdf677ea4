"""A release that never turns ready stops the rollout at the first host: that host stays
out of rotation, the others keep serving the old release, the load sees no error. A named
rollback then brings the first host back."""

import uuid

from conftest import (
    APPS,
    HTTPS_PORT,
    UP_DEADLINE,
    all_serving,
    current_release,
    db_now,
    deploy_args,
    messages_since,
    recap,
    run_playbook,
    serving_release,
    source_copy,
    task_results,
    upstream_status,
)
from load import BoundedLoad
from stackclient import wait_for


def test_3_failing_release_stops_at_the_first_host_and_drops_no_request(
    lb, apps, db, owner_token, group_id, releases, tmp_path_factory, healthy_stack
):
    old = releases["converged"]
    source = source_copy(
        tmp_path_factory.mktemp("broken"), f"broken-{uuid.uuid4().hex[:8]}", broken_readiness=True
    )
    since = db_now(db)
    with BoundedLoad(HTTPS_PORT, owner_token, group_id) as load:
        run = run_playbook(
            "deploy.yml",
            *deploy_args(source),
            "-e",
            "deploy_backup=false",
            # fail the health gate in 10 s instead of 60
            "-e",
            "app_health_retries=10",
            "-e",
            "app_health_delay=1",
        )
        failed_report = load.report.summary()
        # The first host is out, the other two serve the old release.
        peers = upstream_status(lb)
        releases["broken"] = current_release(apps[APPS[0]])
        rollback = run_playbook("rollback.yml", "-e", f"rollback_to={old}")
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
    report = load.report
    print(f"failing release (until it stopped): {failed_report}")
    print(f"failing release + named rollback: {report.summary()}")

    output = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert f"koinonia-api on {APPS[0]} did not answer 200 on /health/ready" in output, output[
        -3000:
    ]
    counters = recap(run.stdout)
    assert counters[APPS[0]]["failed"] == 1, counters
    # The new release was installed everywhere (in parallel, before the one-by-one part),
    # but only the first host was switched; the others were never drained.
    switched = task_results(run.stdout, "Switch the current symlink")
    assert [h for s, h in switched if s == "changed"] == [APPS[0]], switched
    drained = task_results(run.stdout, "Take the peer out of rotation")
    assert [h for s, h in drained if s == "changed"] == [APPS[0]], drained

    assert releases["broken"] not in (old, releases.get("new"))
    assert peers[APPS[0]]["drained"] is True, peers
    for name in APPS[1:]:
        assert current_release(apps[name]) == old, name
        assert peers[name]["status"] == "up" and not peers[name]["drained"], peers

    assert report.failed == 0, report.failures[:20]
    assert len(set(report.message_ids)) == report.posts
    assert messages_since(db, since) == (report.posts, report.posts)

    assert rollback.returncode == 0, rollback.stdout[-4000:]
    for name, host in apps.items():
        assert current_release(host) == old, name
        assert serving_release(host) == old, name
