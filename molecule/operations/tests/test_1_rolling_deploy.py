"""Rolling deploy (playbooks/deploy.yml): one host at a time, drained at the balancer,
migrations once before any new code serves, a backup first, zero failed requests."""

import uuid

from conftest import (
    APPS,
    DB,
    HTTPS_PORT,
    UP_DEADLINE,
    all_serving,
    current_release,
    db_now,
    deploy_args,
    messages_since,
    run_playbook,
    serving_release,
    source_copy,
    task_results,
)
from load import BoundedLoad
from stackclient import wait_for


def test_1_rolling_deploy_under_load_drops_no_request(
    lb, apps, db, owner_token, group_id, releases, tmp_path_factory, healthy_stack
):
    before = {name: current_release(host) for name, host in apps.items()}
    assert len(set(before.values())) == 1, before
    releases["converged"] = before[APPS[0]]
    dumps_before = db.check_output("ls /var/backups/koinonia/postgresql/ 2>/dev/null || true")

    source = source_copy(tmp_path_factory.mktemp("release"), f"new-{uuid.uuid4().hex[:8]}")
    since = db_now(db)
    with BoundedLoad(HTTPS_PORT, owner_token, group_id) as load:
        run = run_playbook("deploy.yml", *deploy_args(source))
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
    report = load.report
    print(f"rolling deploy: {report.summary()}")

    assert run.returncode == 0, run.stdout[-6000:]
    after = {name: current_release(host) for name, host in apps.items()}
    assert len(set(after.values())) == 1, after
    assert after[APPS[0]] != releases["converged"]
    releases["new"] = after[APPS[0]]
    for name, host in apps.items():
        assert serving_release(host) == releases["new"], name

    # Zero failed requests, every POST made exactly one message.
    assert report.sent >= 100, report.summary()
    assert report.failed == 0, report.failures[:20]
    assert len(set(report.message_ids)) == report.posts
    assert messages_since(db, since) == (report.posts, report.posts)

    # One host at a time, each drained before its restart and back after it.
    drains = task_results(run.stdout, "Take the peer out of rotation")
    assert [host for status, host in drains if status in ("ok", "changed")] == APPS, drains
    # Migrations ran once, on the first host, before its switch.
    migrations = task_results(run.stdout, "Apply pending migrations")
    assert [h for s, h in migrations if s in ("ok", "changed")] == [APPS[0]], migrations
    assert run.stdout.index("Apply pending migrations") < run.stdout.index(
        "Switch the current symlink"
    )
    # The release was installed everywhere before the first host was drained: on each host
    # the locked dependencies (hashes checked), then the app's own wheel.
    installs = task_results(run.stdout, "Install the service from the wheels only")
    assert sorted(h for s, h in installs if s == "changed") == sorted(APPS * 2), installs
    assert run.stdout.index("Install the service from the wheels only") < run.stdout.index(
        "Take the peer out of rotation"
    )
    # Staged once per run: the one-by-one batches neither build nor look for the release again.
    builds = task_results(run.stdout, "Build or reuse the release bundle")
    assert len([s for s, _h in builds if s in ("ok", "changed")]) == 1, builds
    looks = task_results(run.stdout, "Look for the release on the host")
    assert sorted(h for s, h in looks if s == "ok") == sorted(APPS), looks
    # The backup ran first.
    assert task_results(run.stdout, "Dump the database with pg_dump") == [("changed", DB)]
    dumps_after = db.check_output("ls /var/backups/koinonia/postgresql/")
    assert len(dumps_after.split()) > len(dumps_before.split())


def test_1_deployed_release_is_recorded_on_every_host(apps, releases):
    for name, host in apps.items():
        recorded = host.file(f"/opt/koinonia/releases/{releases['new']}/RELEASE")
        assert recorded.exists, name
        assert host.file(f"/opt/koinonia/releases/{releases['converged']}/.installed").exists, name
