"""Fault 3: PgBouncer restarts, then PostgreSQL stops for a few seconds, under load:
readiness answers 503 on every app server while the database is away and 200 again by
itself, no request hangs past its timeout, no worker dies, no POST is lost or duplicated
(a failed one is sent again with its Idempotency-Key, as a client would)."""

from debian import postgresql_unit
from stackclient import wait_for

from .conftest import (
    APPS,
    LOAD_TIMEOUT,
    UP_DEADLINE,
    ChaosLoad,
    all_serving,
    delivery_outcome,
    messages_per_key,
    print_phases,
    ready_status,
    request_outcome,
    unit,
    wait_ready_everywhere,
)


def workers(apps) -> dict[str, tuple[str, str]]:
    return {
        name: (u["MainPID"], u["NRestarts"])
        for name, host in apps.items()
        for u in [unit(host, "koinonia-worker")]
    }


def test_3_pgbouncer_and_postgresql_restarts_turn_readiness_503_and_recover_alone(
    lb, apps, db, redis, owner_token, group_id, healthy_stack
):
    workers_before = workers(apps)
    assert all(pid != "0" for pid, _n in workers_before.values()), workers_before
    phases = {}
    with ChaosLoad(owner_token, group_id) as load:
        wait_for(lambda: load.report.sent >= 40, 120, what="load running")

        phases["pgbouncer"] = load.settle()
        db.check_output("systemctl restart pgbouncer")
        wait_ready_everywhere(apps)
        resumed = load.report.sent
        wait_for(lambda: load.report.sent >= resumed + 40, 120, what="load after PgBouncer")

        phases["postgresql"] = load.settle()
        readiness_while_away = {}
        db.check_output("systemctl stop %s", postgresql_unit(db))
        try:
            for name in APPS:
                wait_for(
                    lambda h=apps[name]: ready_status(h) == 503,
                    60,
                    what=f"{name} readiness 503 while PostgreSQL is stopped",
                )
                readiness_while_away[name] = 503
        finally:
            db.check_output("systemctl start %s", postgresql_unit(db))
        print(f"readiness while PostgreSQL was stopped: {readiness_while_away}")
        # Back by itself: nobody touches the app servers.
        wait_ready_everywhere(apps)
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
        phases["after"] = load.settle()
        resumed = load.report.sent
        wait_for(lambda: load.report.sent >= resumed + 40, 120, what="load after PostgreSQL")
    phases["end"] = load.snapshot()

    print_phases("fault 3", phases)
    retried = load.retry_failed_posts()
    outcome = request_outcome(db, load, retried)
    print(f"fault 3 (PgBouncer + PostgreSQL restarts): {outcome}")
    message_ids = [
        m for ids in messages_per_key(db, load.report.idempotency_keys).values() for m in ids
    ]
    sends, _rows = delivery_outcome(db, redis, message_ids)
    print(f"fault 3 (PgBouncer + PostgreSQL restarts): {sends}")

    # No request hung: a request past the load's timeout is a failure named TimeoutError.
    hung = [f for f in load.report.failures if "timed out" in f or "TimeoutError" in f]
    assert hung == [], (LOAD_TIMEOUT, hung)
    # Failures belong to the outage only: none once every server was ready again.
    assert phases["end"][1] == phases["after"][1], load.report.failures
    assert all(200 <= status < 300 for _key, status in retried), retried
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert sends.lost == 0 and sends.duplicated == 0 and sends.unknown == 0, sends
    # No worker died: same main process, no restart.
    assert workers(apps) == workers_before
