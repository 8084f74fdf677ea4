"""Fault 1: `kill -9` of one app server's API (Hypercorn's main process and its workers)
under load: no GET fails, a POST is never duplicated (a failed one sent again with its
Idempotency-Key makes no second message), systemd restarts the API, the balancer takes the
server back."""

from stackclient import wait_for

from .conftest import (
    APPS,
    UP_DEADLINE,
    ChaosLoad,
    all_serving,
    delivery_outcome,
    messages_per_key,
    peer_state,
    ready_status,
    request_outcome,
    unit,
    unit_pids,
)


def test_1_api_killed_under_load_fails_no_get_duplicates_no_post_and_comes_back(
    lb, apps, db, redis, owner_token, group_id, healthy_stack
):
    victim = APPS[0]
    host = apps[victim]
    before = unit(host, "koinonia-api")
    with ChaosLoad(owner_token, group_id) as load:
        wait_for(lambda: load.report.sent >= 40, 120, what="load running")
        pids = unit_pids(host, "koinonia-api")
        assert int(before["MainPID"]) in pids, (before, pids)
        print(f"kill -9 {pids} (koinonia-api on {victim}, MainPID {before['MainPID']})")
        host.check_output(
            "kill -9 " + " ".join(str(int(p)) for p in pids)
        )  # ints: nothing to quote
        # systemd restarts it (Restart=on-failure): a new main process, one more restart.
        after = wait_for(
            lambda: (
                (u := unit(host, "koinonia-api"))["MainPID"] not in ("0", before["MainPID"])
                and u["ActiveState"] == "active"
                and u
            ),
            90,
            what="koinonia-api restarted by systemd",
        )
        wait_for(lambda: ready_status(host) == 200, 120, what=f"{victim} ready again")
        # The balancer takes it back.
        wait_for(lambda: peer_state(lb, victim) == "up", UP_DEADLINE, what=f"{victim} up")
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
        resumed = load.report.sent
        wait_for(lambda: load.report.sent >= resumed + 40, 120, what="load after the restart")
    after = unit(host, "koinonia-api")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)

    retried = load.retry_failed_posts()
    outcome = request_outcome(db, load, retried)
    failed_gets = [f for f in load.report.failures if " GET " in f]
    failed_posts = [f for f in load.report.failures if " POST " in f]
    print(
        f"fault 1 (kill -9 API on {victim}): {outcome}; failed GET {len(failed_gets)}, "
        f"failed POST {len(failed_posts)} (retried: {retried})"
    )
    message_ids = [
        m for ids in messages_per_key(db, load.report.idempotency_keys).values() for m in ids
    ]
    sends, _rows = delivery_outcome(db, redis, message_ids)
    print(f"fault 1 (kill -9 API on {victim}): {sends}")

    assert load.report.sent >= 80, load.report.summary()
    assert failed_gets == [], failed_gets
    assert all(200 <= status < 300 for _key, status in retried), retried
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert sends.lost == 0 and sends.duplicated == 0 and sends.unknown == 0, sends
