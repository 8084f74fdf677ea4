"""Section 3 (queue): SMS deliveries per second, from enqueue to `sent`, by N `koinonia worker`
processes (SAQ), with the `log` provider and with a provider that takes 200 ms per call.

On loopback (real PostgreSQL, PgBouncer and Redis from app/tests/servers.py): a church with a
100-member group; N workers are started and ready (their metrics port answers); then
POST /api/messages is sent DELIVERIES/100 times (4 at a time) and the clock runs from the
first POST until the database has every delivery of those messages `sent`. The 200 ms
provider is bench/fake_twilio.py playing Twilio's API on loopback (KOINONIA_SMS_PROVIDER=
twilio, KOINONIA_TWILIO_BASE_URL); there the provider calls a worker runs at once (its send
slots, KOINONIA_SMS_WORKER_SEND_CONCURRENCY, shared by KOINONIA_WORKER_CONCURRENCY jobs of
KOINONIA_SMS_CHUNK_SIZE deliveries each) bound the rate at workers x concurrency ÷ 0.2 s.
The fake counts every call per delivery (no dedup): `calls` and
`repeated` (calls beyond a delivery's first) come from it.
The same servers then serve section 2 (cache), whose church holds these deliveries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime

from bench.common import (
    ROOT,
    BenchError,
    Section,
    api,
    fmt,
    loadavg,
    log,
    message_body,
    pct,
    seed_church,
    table,
)
from bench.loopback import Loopback, free_port, wait_for_port

ACCOUNT_SID = "AC00000000000000000000000000000001"
CHUNK = 100  # deliveries per send job (the setting's default)


def fake_calls(env: dict[str, str]) -> dict[str, int]:
    """bench/fake_twilio.py's call counts ({} when the run uses the log provider)."""
    base = env.get("KOINONIA_TWILIO_BASE_URL")
    if not base:
        return {"calls": 0, "repeated": 0, "callSeconds": 0.0}
    with urllib.request.urlopen(base + "/calls", timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def count_by_status(lb: Loopback, since: datetime) -> dict[str, int]:
    import psycopg

    with psycopg.connect(lb.servers.postgres.superuser_dsn("koinonia")) as conn:
        rows = conn.execute(
            "select d.status, count(*) from delivery d join message m on m.id = d.message_id "
            "where m.created_at >= %s group by 1",
            (since,),
        ).fetchall()
    return {str(s): int(n) for s, n in rows}


class Progress:
    """The bench's watch on the deliveries, through ONE connection straight to PostgreSQL
    (a new connection per poll is a backend forked each time, counted as PostgreSQL's CPU),
    reading only the unfinished rows through the (message_id, status) index. Its backend's
    CPU is the bench's, not the service's (``backend_cpu``)."""

    def __init__(self, lb: Loopback) -> None:
        import psycopg

        self.conn = psycopg.connect(lb.servers.postgres.superuser_dsn("koinonia"), autocommit=True)
        self.backend_pid = self.conn.info.backend_pid

    def unfinished(self, message_ids: list[str]) -> int:
        row = self.conn.execute(
            "select count(*) from delivery where message_id = any(%s::uuid[]) "
            "and status in ('queued', 'sending')",
            (message_ids,),
        ).fetchone()
        return int(row[0]) if row else 0

    def backend_cpu(self) -> float:
        return cpu_seconds({"poll": [self.backend_pid]})["poll"]

    def close(self) -> None:
        self.conn.close()


def last_sent_at(lb: Loopback, since: datetime) -> datetime | None:
    import psycopg

    with psycopg.connect(lb.servers.postgres.superuser_dsn("koinonia")) as conn:
        row = conn.execute(
            "select max(d.sent_at) from delivery d join message m on m.id = d.message_id "
            "where m.created_at >= %s",
            (since,),
        ).fetchone()
    return row[0] if row else None


def redis_commands(lb: Loopback) -> int:
    """Commands Redis has run (INFO commandstats), all clients together."""
    import redis

    client = redis.Redis.from_url(lb.servers.redis.url)
    try:
        return sum(int(v["calls"]) for v in client.info("commandstats").values())
    finally:
        client.close()


def sql_transactions(lb: Loopback) -> int:
    """Transactions PostgreSQL committed or rolled back in the app's database. The app runs
    each statement on its own (no BEGIN through PgBouncer), so these count its statements.
    PostgreSQL publishes a backend's counts when it goes idle (at most once a second)."""
    import psycopg

    with psycopg.connect(lb.servers.postgres.superuser_dsn("koinonia")) as conn:
        row = conn.execute(
            "select xact_commit + xact_rollback from pg_stat_database "
            "where datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of the children it reaped)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        # After the name: state, ppid, ..., utime (14th field), stime, cutime, cstime.
        ppid, times = int(fields[1]), [int(v) for v in fields[11:15]]
        stats[int(entry)] = (ppid, sum(times) / _TICK)
    return stats


def cpu_seconds(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group of processes: the processes,
    their live descendants and the children they reaped (PostgreSQL's exited backends)."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for name, pids in roots.items():
        seen, todo = set(), [p for p in pids if p in stats]
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo += children.get(pid, [])
        totals[name] = sum(stats[p][1] for p in seen)
    return totals


def one_run(
    lb: Loopback,
    token: str,
    group_id: str,
    deliveries: int,
    workers: int,
    concurrency: int,
    provider: str,
    env: dict[str, str],
    timeout: float,
    provider_pids: list[int] | None = None,
) -> dict:
    messages = max(1, deliveries // 100)
    # ``concurrency`` provider calls per worker (its send slots): jobs of at most one chunk's
    # sends each, and one job more than the slots need, so a job waits with its chunk
    # dequeued (not claimed) while the others drain their last calls.
    sends_per_job = min(concurrency, CHUNK)
    worker_env = env | {
        "KOINONIA_WORKER_CONCURRENCY": str(-(-concurrency // sends_per_job) + 1),
        "KOINONIA_SMS_SEND_CONCURRENCY": str(sends_per_job),
        "KOINONIA_SMS_WORKER_SEND_CONCURRENCY": str(concurrency),
        "KOINONIA_SMS_CHUNK_SIZE": str(CHUNK),
    }
    calls_before = fake_calls(env)
    redis_before, sql_before = redis_commands(lb), sql_transactions(lb)
    procs = []
    for _ in range(workers):
        port = free_port()
        procs += lb.start_job_workers(
            1, **worker_env, KOINONIA_WORKER_METRICS_BIND=f"127.0.0.1:{port}"
        )
        wait_for_port(port, timeout=60, proc=procs[-1])
    time.sleep(1)  # past the metrics server: the worker's dequeue loop is up
    servers = lb.servers
    processes = {
        "api": [lb.app.pid],
        "workers": [p.pid for p in procs],
        "postgres": [servers.postgres.proc.pid],
        "pgbouncer": [servers.pgbouncer.proc.pid],
        "redis": [servers.redis.proc.pid],
    }
    if provider != "log" and provider_pids:
        processes["provider"] = provider_pids  # the stand-in (bench/fake_twilio.py)
    progress = Progress(lb)
    cpu_before, bench_before = cpu_seconds(processes), os.times()
    poll_before = progress.backend_cpu()
    load_before = loadavg()
    since = datetime.now(UTC)
    started = time.monotonic()
    body = json.loads(message_body(group_id, "Bench: queue throughput"))

    def post(_: int) -> str:
        return api(lb.base, "POST", "/api/messages", body, token)["id"]

    with ThreadPoolExecutor(4) as pool:
        message_ids = list(pool.map(post, range(messages)))
    enqueued = time.monotonic() - started
    expected = messages * 100
    while time.monotonic() - started < timeout:
        if progress.unfinished(message_ids) == 0:
            break
        if any(p.poll() is not None for p in procs):
            raise BenchError("a `koinonia worker` exited during the queue run")
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    cpu_after, bench_after = cpu_seconds(processes), os.times()
    poll_used = progress.backend_cpu() - poll_before
    progress.close()
    cpu_used = {name: cpu_after[name] - cpu_before[name] for name in processes}
    # The bench's own POSTs and polls (this process's threads, its poll's backend).
    cpu_used["postgres"] -= poll_used
    cpu_used["bench"] = (
        (bench_after.user + bench_after.system)
        - (bench_before.user + bench_before.system)
        + poll_used
    )
    counts = count_by_status(lb, since)
    last = last_sent_at(lb, since)
    db_elapsed = (last - since).total_seconds() if last else None
    lb.stop_job_workers()
    time.sleep(1.5)  # the stopped backends' statistics reach pg_stat_database
    redis_used, sql_used = redis_commands(lb) - redis_before, sql_transactions(lb) - sql_before
    sent = counts.get("sent", 0) + counts.get("delivered", 0)
    result = {
        "loadavg_before": load_before,
        "provider": provider,
        "workers": workers,
        "concurrency": concurrency,
        "deliveries": expected,
        "sent": sent,
        "failed": counts.get("failed", 0),
        "unfinished": expected - sum(counts.get(s, 0) for s in ("sent", "delivered", "failed")),
        "unknown": counts.get("unknown", 0),
        "enqueue_seconds": round(enqueued, 2),
        "seconds": round(db_elapsed if db_elapsed else elapsed, 2),
        "per_second": round(sent / (db_elapsed or elapsed), 1),
        "timed_out": elapsed >= timeout,
        # Over the whole run (the POSTs, the workers, their housekeeping), per delivery.
        "redis_commands_per_delivery": round(redis_used / expected, 2),
        "sql_statements_per_delivery": round(sql_used / expected, 2),
        # CPU time per delivery of each part, over the same interval: what the rate would
        # be on idle cores, whatever else runs on the machine.
        "cpu_ms_per_delivery": {k: round(1000 * v / expected, 3) for k, v in cpu_used.items()},
    }
    # The service's own parts: not the bench's client, not the provider's stand-in.
    service_ms = sum(
        v for k, v in result["cpu_ms_per_delivery"].items() if k not in ("bench", "provider")
    )
    result["cpu_bound_per_second"] = round((os.cpu_count() or 1) * 1000 / service_ms, 0)
    if provider != "log":
        result["ceiling_per_second"] = workers * concurrency / 0.2
        calls_after = fake_calls(env)
        result["calls"] = calls_after["calls"] - calls_before["calls"]
        result["repeated"] = calls_after["repeated"] - calls_before["repeated"]
        # Where a row falls short of its ceiling: slots left idle (calls in flight, on
        # average, below workers x concurrency) or a provider slower than its 200 ms (the
        # stand-in waiting for a core: the same calls in flight then send fewer per second).
        call_seconds = calls_after["callSeconds"] - calls_before["callSeconds"]
        if result["calls"]:
            result["provider_ms_per_call"] = round(1000 * call_seconds / result["calls"], 1)
            in_flight = call_seconds / result["seconds"]
            result["calls_in_flight"] = round(in_flight, 1)
            result["slots_busy"] = in_flight / (workers * concurrency)
    log(
        f"queue {provider} workers={workers} concurrency={concurrency}: {result['per_second']}/s "
        f"({sent}/{expected} sent in {result['seconds']} s)"
    )
    return result


GROUP_SIZES = (100, 1_000, 10_000)
GROUP_POSTS = 3  # messages per group size, one after the other


def add_members(lb: Loopback, group_id: str, count: int, tag: str) -> None:
    """``count`` opted-in members in the group's church and in the group, in one statement
    (as a church's import would leave them; the API's one-by-one POSTs would take minutes)."""
    import psycopg

    with psycopg.connect(lb.servers.postgres.superuser_dsn("koinonia")) as conn:
        conn.execute(
            """
            WITH g AS (SELECT id, church_id FROM member_group WHERE id = %(group)s),
            m AS (
              INSERT INTO member (id, church_id, first_name, last_name, phone, opt_in_sms,
                                  created_at, updated_at)
              SELECT gen_random_uuid(), g.church_id, 'Bulk' || i, %(tag)s,
                     '+1' || (2020000000 + %(offset)s + i)::text, true, now(), now()
              FROM g, generate_series(0, %(count)s - 1) AS i
              RETURNING id
            )
            INSERT INTO group_membership (id, group_id, member_id, created_at)
            SELECT gen_random_uuid(), g.id, m.id, now() FROM g, m
            """,
            # Numbers of their own: each size starts at itself (100.., 1,000.., 10,000..).
            {"group": group_id, "tag": tag, "count": count, "offset": count},
        )


def group_size_rows(lb: Loopback, token: str, timeout: float, sizes=GROUP_SIZES) -> list[dict]:
    """POST /api/messages to groups of growing size, 2 workers (log provider) running:
    each POST's latency (the recipients query, one insert of every delivery, the enqueue of
    one job per 100), and the time from the POST until every delivery is `sent`."""
    rows = []
    procs = []
    for _ in range(2):
        port = free_port()
        procs += lb.start_job_workers(1, KOINONIA_WORKER_METRICS_BIND=f"127.0.0.1:{port}")
        wait_for_port(port, timeout=60, proc=procs[-1])
    time.sleep(1)
    progress = Progress(lb)
    for size in sizes:
        group = api(lb.base, "POST", "/api/groups", {"name": f"Size {size}"}, token)
        add_members(lb, group["id"], size, f"size{size}")
        body = json.loads(message_body(group["id"], f"Bench: a group of {size}"))
        latencies, sent_after = [], []
        for _ in range(GROUP_POSTS):
            since = datetime.now(UTC)
            started = time.monotonic()
            message = api(lb.base, "POST", "/api/messages", body, token)
            latencies.append(time.monotonic() - started)
            while time.monotonic() - started < timeout:
                if progress.unfinished([message["id"]]) == 0:
                    break
                time.sleep(0.05)
            last = last_sent_at(lb, since)
            sent_after.append((last - since).total_seconds() if last else None)
            if message["recipientCount"] != size:
                raise BenchError(f"a group of {size} recorded {message['recipientCount']}")
        rows.append(
            {
                "group": size,
                "posts": GROUP_POSTS,
                "enqueue_ms": [round(1000 * x, 1) for x in latencies],
                "all_sent_seconds": [round(x, 2) if x else None for x in sent_after],
                "unfinished": size - count_by_status(lb, since).get("sent", 0),
            }
        )
        log(f"group of {size}: POST {rows[-1]['enqueue_ms']} ms, all sent {sent_after} s")
    progress.close()
    lb.stop_job_workers()
    return rows


def run(args, stack: ExitStack) -> tuple[Section, Loopback, str]:
    section = Section("queue", "Queue: SMS deliveries per second, enqueue to sent")
    lb = Loopback.start(stack, os.cpu_count() or 1, hello=False)
    token, group_id = seed_church(lb.base, "queue-bench@example.org")
    deliveries = 200 if args.smoke else args.deliveries
    slow = 100 if args.smoke else args.deliveries
    timeout = 60 if args.smoke else args.queue_timeout
    twilio_port = free_port()
    fake = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_twilio.py"), str(twilio_port), "0.2"]
    )
    stack.callback(fake.terminate)
    wait_for_port(twilio_port, proc=fake)
    twilio_env = {
        "KOINONIA_SMS_PROVIDER": "twilio",
        "KOINONIA_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "KOINONIA_TWILIO_AUTH_TOKEN": "bench-auth-token-0123456789abcdef",
        "KOINONIA_TWILIO_FROM_NUMBER": "+15005550006",
        "KOINONIA_TWILIO_BASE_URL": f"http://127.0.0.1:{twilio_port}",
    }
    plan = (
        [("log", 1, 10, deliveries, {}), ("200 ms", 1, 10, slow, twilio_env)]
        if args.smoke
        else [
            ("log", 1, 100, deliveries, {}),
            ("log", 2, 10, deliveries, {}),
            ("log", 2, 100, deliveries, {}),
            ("log", 4, 100, deliveries, {}),
            ("200 ms", 2, 10, slow, twilio_env),
            ("200 ms", 2, 50, slow, twilio_env),
            ("200 ms", 2, 200, slow, twilio_env),
        ]
    )
    wanted = {r.strip().replace(" ", "") for r in args.queue_rows.split(",") if r.strip()}
    for provider, workers, concurrency, count, env in plan:
        if wanted and f"{provider.replace(' ', '')}/{workers}/{concurrency}" not in wanted:
            continue
        section.rows.append(
            one_run(
                lb, token, group_id, count, workers, concurrency, provider, env, timeout, [fake.pid]
            )
        )
    sizes = [int(n) for n in args.group_sizes.split(",") if n.strip()]
    sizes = [n for n in sizes if n <= 1_000] if args.smoke else sizes
    if sizes:
        section.extra["group_sizes"] = group_size_rows(lb, token, timeout, sizes)
    section.notes += [
        "Loopback: PostgreSQL 15, PgBouncer (transaction pooling) and Redis from "
        "app/tests/servers.py; one `koinonia serve` for the POSTs; the workers are "
        "`koinonia worker` processes. Clock: first POST → last `sent_at` in the database "
        "(the POSTs themselves, 4 at a time, are inside it).",
        "200 ms provider: bench/fake_twilio.py (asyncio) answers Twilio's Messages.json after "
        "200 ms; the ceiling is workers x concurrency ÷ 0.2 s. Each worker's jobs share its "
        "`concurrency` send slots (KOINONIA_SMS_WORKER_SEND_CONCURRENCY), with one job more "
        "than the slots need. Provider ms/call: the stand-in's own time per POST, from request "
        "read to answer written (200 ms plus its waits for a core); calls in flight: those "
        "seconds over the row's, against workers x concurrency.",
        f"The machine has {os.cpu_count()} cores shared by the API, the workers, PostgreSQL, "
        "PgBouncer and Redis (and, when others run, by them: see each row's load).",
        "Service CPU ms/delivery: CPU time (user + system, /proc) of the API, the workers, "
        "PostgreSQL (with its exited backends), PgBouncer and Redis over the row, per "
        "delivery; not the bench's client nor the provider stand-in. CPU-bound/s: what that "
        f"cost allows on {os.cpu_count()} idle cores, whatever the load was.",
        "Log rows: concurrency/worker is the sends in flight per worker (its send slots, "
        "shared by jobs of 100 or of 10 as in the 200 ms rows); the log provider writes the "
        "calls waiting together in one MULTI/EXEC, so fewer in flight means more, smaller "
        "writes.",
    ]
    return section.finish(), lb, token


def markdown(section: Section) -> list[str]:
    return [*queue_table(section), "", *group_table(section)]


def group_table(section: Section) -> list[str]:
    rows = section.extra.get("group_sizes") or []
    if not rows:
        return []
    return [
        f"POST /api/messages to one group, {GROUP_POSTS} messages in turn per size, 2 workers "
        "(log provider, 10 jobs x 50 sends each: the settings' defaults): the POST's latency "
        "(recipients query, one insert of every delivery, one job per 100 enqueued) and the "
        "time from the POST to the last delivery's `sent_at`.",
        "",
        *table(
            [
                "group members",
                "POST ms (each)",
                "all sent after, s (each)",
                "deliveries/s (best)",
                "unfinished",
            ],
            [
                [
                    r["group"],
                    " / ".join(fmt(x) for x in r["enqueue_ms"]),
                    " / ".join(fmt(x) for x in r["all_sent_seconds"]),
                    round(r["group"] / min(x for x in r["all_sent_seconds"] if x), 1)
                    if any(r["all_sent_seconds"])
                    else None,
                    r["unfinished"],
                ]
                for r in rows
            ],
        ),
    ]


def _ceiling(row: dict) -> str | None:
    if not row.get("ceiling_per_second"):
        return None
    reached = pct(row["per_second"] / row["ceiling_per_second"])
    return f"{fmt(row['ceiling_per_second'])} ({reached})"


def queue_table(section: Section) -> list[str]:
    return table(
        [
            "provider",
            "workers",
            "concurrency/worker",
            "deliveries",
            "sent",
            "failed+unfinished",
            "seconds",
            "deliveries/s",
            "ceiling/s (reached)",
            "provider calls",
            "repeated calls",
            "provider ms/call",
            "calls in flight, mean (of slots)",
            "unknown",
            "Redis cmds/delivery",
            "SQL stmts/delivery",
            "service CPU ms/delivery",
            "CPU-bound/s",
            "load (1 min)",
        ],
        [
            [
                r["provider"],
                r["workers"],
                r["concurrency"],
                r["deliveries"],
                r["sent"],
                r["failed"] + r["unfinished"],
                r["seconds"],
                r["per_second"],
                _ceiling(r),
                r.get("calls"),
                r.get("repeated"),
                r.get("provider_ms_per_call"),
                r.get("calls_in_flight")
                and f"{fmt(r['calls_in_flight'])} ({pct(r['slots_busy'])})",
                r.get("unknown"),
                r.get("redis_commands_per_delivery"),
                r.get("sql_statements_per_delivery"),
                r.get("cpu_ms_per_delivery")
                and round(
                    sum(
                        v
                        for k, v in r["cpu_ms_per_delivery"].items()
                        if k not in ("bench", "provider")
                    ),
                    3,
                ),
                r.get("cpu_bound_per_second"),
                (r.get("loadavg_before") or [None])[0],
            ]
            for r in section.rows
        ],
    )
