"""Fault 4: the SAQ worker killed (`kill -9`) while it processes deliveries: the jobs it
held are swept and retried by SAQ, and every delivery is sent exactly once."""

import json
import uuid

from stackclient import wait_for

from .conftest import (
    APPS,
    bulk_group,
    delivery_outcome,
    post_messages,
    psql,
    queued_count,
    redis_cli,
    unit,
    unit_pids,
)

# The kill must land mid-run on any machine, however fast its worker: the last message's
# delivery rows are held FOR UPDATE by a session of our own, so the worker sends every other
# delivery and then waits in its claim of those rows (the claim takes them FOR UPDATE, without
# SKIP LOCKED). That wait is the racy point: the worker is killed there, then the rows are let go.
MEMBERS, MESSAGES = 1000, 3
ACTIVE = "saq:koinonia-sms:active"  # SAQ's list of the job ids being processed
# A killed job misses its heartbeat (20 s) and is swept at the next sweep (every 10 s).
SWEEP_DEADLINE = 20 + 10 + 60
ROW_LOCKER = "fault-4-row-locker"  # application_name of the session holding the rows
LOCKER_HOLDING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE application_name = 'fault-4-row-locker' AND wait_event = 'PgSleep'"
)
LOCKER_ENDED = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE application_name = 'fault-4-row-locker'"
)
CLAIMS_WAITING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE wait_event_type = 'Lock' AND application_name <> 'fault-4-row-locker'"
)
CLAIMS_ENDED = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE wait_event_type = 'Lock' AND application_name <> 'fault-4-row-locker'"
)


def hold_delivery_rows(db, message_id: str) -> None:
    """Lock one message's delivery rows in a session that outlives this call (bounded by its
    own pg_sleep), until release_delivery_rows ends it."""
    where = f"message_id = '{uuid.UUID(message_id)}'"  # a UUID: nothing to quote
    sql = f"BEGIN; SELECT 1 FROM delivery WHERE {where} FOR UPDATE; SELECT pg_sleep(600);"  # noqa: S608
    db.check_output(
        "setsid -f runuser -u postgres -- env PGAPPNAME=%s psql --no-psqlrc -X -q -d koinonia "
        "-c %s >/dev/null 2>&1",
        ROW_LOCKER,
        sql,
    )
    wait_for(lambda: psql(db, LOCKER_HOLDING) == "1", 30, what="the row locker holding its rows")


def release_delivery_rows(db) -> None:
    psql(db, LOCKER_ENDED)


def claims_waiting_on_a_row_lock(db) -> int:
    return int(psql(db, CLAIMS_WAITING))


def test_4_worker_killed_mid_job_has_its_jobs_retried_and_sends_each_delivery_once(
    apps, db, redis, owner_token, healthy_stack
):
    victim = APPS[1]
    host = apps[victim]
    gid, tag = bulk_group(db, owner_token, MEMBERS)
    # No worker runs while the messages are recorded and their last rows locked; then only
    # the victim works, so the jobs in SAQ's active list when it dies are its own.
    for name in APPS:
        apps[name].check_output("systemctl stop koinonia-worker")
    try:
        message_ids = post_messages(owner_token, gid, tag, MESSAGES)
        total = MEMBERS * MESSAGES
        hold_delivery_rows(db, message_ids[-1])
        host.check_output("systemctl start koinonia-worker")
        before = unit(host, "koinonia-worker")
        wait_for(
            lambda: queued_count(db, message_ids) == MEMBERS and claims_waiting_on_a_row_lock(db),
            300,
            step=1,
            what=f"{victim}'s worker sending all but the locked rows, then waiting on them",
        )
        pids = unit_pids(host, "koinonia-worker")
        host.check_output(
            "kill -9 " + " ".join(str(int(p)) for p in pids)
        )  # ints: nothing to quote
        active = redis_cli(redis, "LRANGE", ACTIVE, "0", "-1").split()
        killed_jobs = [job for job in active if ":deliveries:" in job]  # not the cron jobs
        # Attempts SAQ had counted for each (0: dequeued by the victim, not yet started).
        held = {job: json.loads(redis_cli(redis, "GET", job) or "{}") for job in killed_jobs}
        held_attempts = {job: record.get("attempts", 0) for job, record in held.items()}
        left = queued_count(db, message_ids)
        # The dead worker's claims still wait on the rows: let go, they would commit (a
        # backend notices its client gone only when it next writes to it) and turn `unknown`
        # only after the stale-claim age, the path of the app test "worker killed during the
        # provider call". Here they end with their worker, so its jobs' retries claim the rows.
        ended_claims = int(psql(db, CLAIMS_ENDED))
        release_delivery_rows(db)
        print(
            f"kill -9 {pids} (koinonia-worker on {victim}) with {left} of {total} "
            f"deliveries queued, {len(killed_jobs)} jobs active ({killed_jobs}) and "
            f"{ended_claims} claims waiting on the locked rows"
        )
        assert left == MEMBERS, left  # mid-run: all but the locked message sent
        assert killed_jobs, "no job was active when the worker died"
        after = wait_for(
            lambda: (
                (u := unit(host, "koinonia-worker"))["MainPID"] not in ("0", before["MainPID"])
                and u["ActiveState"] == "active"
                and u
            ),
            90,
            what="koinonia-worker restarted by systemd",
        )
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
    finally:
        release_delivery_rows(db)  # also when an assertion above failed
        for name in APPS:
            apps[name].check_output("systemctl start koinonia-worker")

    # SAQ runs each chunk the victim held again (swept once its heartbeat stops, retried),
    # and it completes: it claims nothing the victim had claimed. The victim's claimed rows
    # turn `unknown` and are settled by the log provider's record (sent) or its absence
    # (sent now, once). Calls are counted after all that, so a second call would be seen.
    def killed_jobs_retried_and_complete() -> dict[str, dict] | None:
        records = {job: json.loads(redis_cli(redis, "GET", job) or "{}") for job in killed_jobs}
        done = all(
            r.get("attempts", 0) > held_attempts[job] and r.get("status") == "complete"
            for job, r in records.items()
        )
        return records if done else None

    try:
        records = wait_for(
            killed_jobs_retried_and_complete,
            SWEEP_DEADLINE,
            step=3,
            what="the killed jobs swept, retried and complete",
        )
    except AssertionError as exc:
        print(f"fault 4: {exc}")  # the assertions below name the job and its record
        records = {job: json.loads(redis_cli(redis, "GET", job) or "{}") for job in killed_jobs}
    sends, rows = delivery_outcome(db, redis, message_ids)
    print(f"fault 4 (kill -9 worker on {victim}): {sends}")
    attempts = {job: (r.get("attempts", 0), r.get("status")) for job, r in records.items()}
    print(
        f"fault 4: attempts of the killed jobs when killed {held_attempts}, now {attempts}; "
        f"deliveries with attempts > 1: {sum(1 for r in rows.values() if r[2] > 1)}"
    )
    for job, (n, status) in attempts.items():
        assert n > held_attempts[job] and status == "complete", (job, held[job], records[job])
        for delivery_id in (records[job].get("kwargs") or {}).get("delivery_ids", []):
            assert rows[delivery_id][0] == "sent", (job, delivery_id, rows[delivery_id])
    assert sends.sent == total, sends
    assert sends.lost == 0 and sends.duplicated == 0 and sends.unknown == 0, sends
