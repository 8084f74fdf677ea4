"""Fault 4: the SAQ worker killed (`kill -9`) while it processes deliveries: the jobs it
held are swept and retried by SAQ, and every delivery is sent exactly once."""

import json

from stackclient import wait_for

from .conftest import (
    APPS,
    bulk_group,
    delivery_outcome,
    post_messages,
    queued_count,
    redis_cli,
    unit,
    unit_pids,
)

# 10,000 deliveries: one worker sends a few thousand a second, so fewer are all sent before
# the test has read the queue once and the kill would land after the run, not in it.
MEMBERS, MESSAGES = 1000, 10
ACTIVE = "saq:koinonia-sms:active"  # SAQ's list of the job ids being processed
# A killed job misses its heartbeat (20 s) and is swept at the next sweep (every 10 s).
SWEEP_DEADLINE = 20 + 10 + 60


def test_4_worker_killed_mid_job_has_its_jobs_retried_and_sends_each_delivery_once(
    apps, db, redis, owner_token, healthy_stack
):
    victim, others = APPS[1], [a for a in APPS if a != APPS[1]]
    host = apps[victim]
    gid, tag = bulk_group(db, owner_token, MEMBERS)
    # Only the victim works: the jobs in SAQ's active list when it dies are its own.
    for name in others:
        apps[name].check_output("systemctl stop koinonia-worker")
    try:
        before = unit(host, "koinonia-worker")
        message_ids = post_messages(owner_token, gid, tag, MESSAGES)
        total = MEMBERS * MESSAGES
        wait_for(
            lambda: queued_count(db, message_ids) <= total - 100,
            300,
            step=1,
            what=f"{victim}'s worker sending",
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
        print(
            f"kill -9 {pids} (koinonia-worker on {victim}) with {left} of {total} "
            f"deliveries queued and {len(killed_jobs)} jobs active: {killed_jobs}"
        )
        assert 0 < left < total, left  # mid-run
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
        for name in others:
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
