"""Section 1 (HTTP) and the stack plumbing that section 5 (scale-out) shares.

Rows: NGINX `return 200` on the balancer (the ceiling), a bare Quart hello-world on Hypercorn
with the API's worker count (the framework ceiling), GET /health, a cached GET /api/members,
an uncached GET /api/members?page=3 and POST /api/messages to a 100-member group (enqueue
only); through the balancer with TLS and keepalive, and straight at one app server.

On the `make up` stack the hello-world is started by the bench on port 3001 of each app
server (a transient systemd unit, stopped at the end), and the SAQ workers are stopped while
rows run (the POST rows' jobs would otherwise be sent on the same two cores during the next
rows); they are started again afterwards and drain the queue before the next section, for
at most --drain-timeout: what is left then waits, workers stopped, until the run ends.
The balancer rows go to /__bench/... (nginx_bench_endpoints): the same TLS server and
proxying as the public API, without its rate limit (100 r/s per client address).
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from bench.common import (
    APP_CONTAINERS,
    APP_PORT,
    DB_CONTAINER,
    HELLO_PORT,
    LB_HTTPS,
    ROOT,
    BenchError,
    Section,
    StackNotUp,
    api,
    container_ip,
    dexec,
    docker,
    log,
    message_body,
    pct,
    require_stack,
    row_ok,
    seed_church,
    table,
    wrk,
)

REMOTE_VENV = "/opt/koinonia/current/venv"
REMOTE_HELLO_DIR = "/opt/koinonia-bench"
HELLO_UNIT = "koinonia-bench-hello"


@dataclass
class Target:
    """Where one set of rows goes: the app's base URL and the ceilings next to it."""

    label: str
    app_base: str  # prefix for /health, /api/...
    hello_url: str
    nginx_url: str | None = None


@dataclass
class Load:
    seconds: float
    connections: int
    post_seconds: float
    post_connections: int


def row_specs(target: Target, token: str, group_id: str) -> list[tuple[str, str, dict]]:
    auth = f"Authorization: Bearer {token}"
    post = {
        "WRK_METHOD": "POST",
        "WRK_BODY": message_body(group_id),
        "WRK_HEADERS": f"{auth}|Content-Type: application/json",
    }
    rows = []
    if target.nginx_url:
        rows.append(("NGINX return 200 (ceiling)", target.nginx_url, {}))
    rows += [
        ("bare Quart hello-world (framework ceiling)", target.hello_url, {}),
        ("GET /health", target.app_base + "/health", {}),
        ("GET /api/members (cached)", target.app_base + "/api/members", {"WRK_HEADERS": auth}),
        (
            "GET /api/members?page=3 (uncached)",
            target.app_base + "/api/members?page=3&limit=20",
            {"WRK_HEADERS": auth},
        ),
        ("POST /api/messages, 100-member group (enqueue)", target.app_base + "/api/messages", post),
    ]
    return rows


def measure(
    target: Target,
    token: str,
    group_id: str,
    load: Load,
    only: tuple[str, ...] = (),
    **extra: Any,
) -> list[dict]:
    """wrk over the target's rows (those whose name starts with one of `only`, if given)."""
    results = []
    for name, url, env in row_specs(target, token, group_id):
        if only and not name.startswith(only):
            continue
        is_post = env.get("WRK_METHOD") == "POST"
        seconds = load.post_seconds if is_post else load.seconds
        conns = load.post_connections if is_post else load.connections
        figures = wrk(url, seconds, conns, **env)
        results.append({"target": target.label, "row": name, **extra, **figures})
        log(f"{target.label} · {name}: {figures['rps']:.0f} req/s p99 {figures['p99_ms']:.1f} ms")
    nginx = next((r["rps"] for r in results if r["row"].startswith("NGINX")), None)
    hello = next((r["rps"] for r in results if r["row"].startswith("bare Quart")), None)
    for r in results:
        r["of_nginx_ceiling"] = r["rps"] / nginx if nginx else None
        r["of_framework_ceiling"] = r["rps"] / hello if hello else None
    return results


def markdown_rows(rows: list[dict], extra_cols: tuple[str, ...] = ()) -> list[str]:
    headers = [
        "target",
        *extra_cols,
        "row",
        "conns",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "of NGINX",
        "of hello",
    ]
    body = [
        [
            r["target"],
            *[r.get(c) for c in extra_cols],
            r["row"],
            r["connections"],
            round(r["rps"]),
            round(r["p50_ms"], 2),
            round(r["p95_ms"], 2),
            round(r["p99_ms"], 2),
            r["non_2xx"] + r["socket_errors"],
            pct(r["of_nginx_ceiling"]),
            pct(r["of_framework_ceiling"]),
        ]
        for r in rows
    ]
    return table(headers, body, align_right_from=len(headers) - 9)


# --- the `make up` stack ----------------------------------------------------------------------


def api_workers(container: str) -> int:
    """KOINONIA_WORKERS of the API on that server (the hello-world gets the same)."""
    out = dexec(container, "sh", "-c", "cat /etc/koinonia/*.env 2>/dev/null", check=False).stdout
    for line in out.splitlines():
        if line.startswith("KOINONIA_WORKERS="):
            return int(line.split("=", 1)[1].strip().strip('"'))
    nproc = dexec(container, "nproc", check=False).stdout.strip()
    return int(nproc) if nproc.isdigit() else 1


def start_hello(containers: tuple[str, ...] | list[str], workers: int) -> None:
    for name in containers:
        dexec(name, "mkdir", "-p", REMOTE_HELLO_DIR)
        docker("cp", str(ROOT / "bench" / "hello.py"), f"{name}:{REMOTE_HELLO_DIR}/hello.py")
        dexec(name, "chmod", "-R", "a+rX", REMOTE_HELLO_DIR)
        dexec(name, "systemctl", "reset-failed", HELLO_UNIT, check=False)
        if (
            dexec(name, "systemctl", "is-active", HELLO_UNIT, check=False).stdout.strip()
            == "active"
        ):
            continue
        dexec(
            name,
            "systemd-run",
            f"--unit={HELLO_UNIT}",
            "-p",
            "User=koinonia",
            "-p",
            f"WorkingDirectory={REMOTE_HELLO_DIR}",
            f"{REMOTE_VENV}/bin/hypercorn",
            "--workers",
            str(workers),
            "--worker-class",
            "uvloop",
            "--bind",
            f"0.0.0.0:{HELLO_PORT}",
            "hello:app",
        )
    for name in containers:
        wait_remote_port(name, HELLO_PORT)


def stop_hello(containers: tuple[str, ...] | list[str]) -> None:
    for name in containers:
        dexec(name, "systemctl", "stop", HELLO_UNIT, check=False)


def wait_remote_port(container: str, port: int, timeout: float = 60) -> None:
    probe = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), 1).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dexec(container, "python3", "-c", probe, check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise BenchError(f"{container}: nothing listens on :{port} after {timeout}s")


def set_job_workers(active: bool, containers=APP_CONTAINERS) -> None:
    for name in containers:
        dexec(name, "systemctl", "start" if active else "stop", "koinonia-worker", check=False)


def db_scalar(sql: str) -> str:
    return dexec(
        DB_CONTAINER, "runuser", "-u", "postgres", "--", "psql", "-d", "koinonia", "-Atc", sql
    ).stdout.strip()


def drain_stack_queue(timeout: float) -> dict:
    """Start the SAQ workers again and wait until they have sent what the POST rows queued.

    Bounded: stops at `timeout`, or once the count of queued deliveries has not moved for
    20 s. wrk cuts the last POST of each connection off when a row ends; a message whose
    request was cut between its database write and its enqueue keeps its deliveries queued
    until the worker's stalled-delivery sweep (every 5 minutes) enqueues them again.
    """
    # Deliveries sent from now on: the database's first and last sent_at of them give a rate
    # that does not depend on this loop's polling interval.
    since = db_scalar("select now()")
    set_job_workers(True)

    def queued() -> int:
        # `sending` rows are claimed by a job and not yet recorded: not drained either.
        return int(
            db_scalar("select count(*) from delivery where status in ('queued', 'sending')") or 0
        )

    started = time.monotonic()
    first = last = queued()
    last_change = time.monotonic()
    log(f"stack queue: {first} deliveries queued by the POST rows; the SAQ workers send them")
    while last and time.monotonic() - started < timeout and time.monotonic() - last_change < 20:
        time.sleep(2)
        now = queued()
        if now != last:
            last, last_change = now, time.monotonic()
    sent = first - last
    seconds = max(last_change - started, 0.001)
    result = {
        "queued_after_rows": first,
        "still_queued": last,
        "drain_seconds": round(seconds, 1),
        "sent_per_second_3_workers": round(sent / seconds, 1) if sent else None,
        "drain_bound_seconds": timeout,
        "hit_bound": bool(last) and time.monotonic() - started >= timeout,
    }
    # `since` is the database's own now(), not input.
    sent_since = (
        "select count(*), coalesce(extract(epoch from max(sent_at) - min(sent_at)), 0) "  # noqa: S608
        f"from delivery where status = 'sent' and sent_at >= '{since}'"
    )
    count, span = db_scalar(sent_since).split("|")
    result["sent_in_database"] = int(count)
    result["first_to_last_sent_seconds"] = round(float(span), 2)
    if int(count) > 1 and float(span) > 0:
        result["sent_per_second_first_to_last"] = round(int(count) / float(span), 1)
    log(f"stack queue: {result}")
    if last:
        # Left to send in the background, they would load the machine while the next
        # sections measure: the workers wait until the run ends (resume_stack_workers).
        log(f"stack queue: SAQ workers stopped again until the run ends ({last} still queued)")
        set_job_workers(False)
    return result


def resume_stack_workers() -> None:
    """At the end of a run: the SAQ workers on, whatever a section left them as."""
    set_job_workers(True)


@dataclass
class StackSession:
    """Seeded bench church on the stack, hello-world running, SAQ workers stopped."""

    token: str
    group_id: str
    workers: int
    app1_ip: str


def open_stack(stack: ExitStack) -> StackSession:
    require_stack(need_lb=True)
    workers = api_workers(APP_CONTAINERS[0])
    app1_ip = container_ip(APP_CONTAINERS[0])
    # Seeding goes through /__bench/app (no rate limit); a new church per run.
    base = LB_HTTPS + "/__bench/app"
    email = f"bench-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}@example.org"
    log(f"stack: seeding a church with a 100-member group ({email})")
    token, group_id = seed_church(base, email)
    api(base, "GET", "/api/members", token=token)  # warm the cached first page
    log(f"stack: hello-world on :{HELLO_PORT} of each app server ({workers} workers)")
    stack.callback(stop_hello, APP_CONTAINERS)
    start_hello(APP_CONTAINERS, workers)
    log("stack: SAQ workers stopped while rows run")
    set_job_workers(False)
    return StackSession(token, group_id, workers, app1_ip)


def stack_targets(session: StackSession) -> list[Target]:
    direct = f"http://{session.app1_ip}:{APP_PORT}"
    return [
        Target(
            "balancer (TLS, keepalive, 3 app servers)",
            LB_HTTPS + "/__bench/app",
            LB_HTTPS + "/__bench/hello",
            LB_HTTPS + "/__bench/ceiling",
        ),
        Target(
            "one app server (app1, plain HTTP)",
            direct,
            f"http://{session.app1_ip}:{HELLO_PORT}/",
        ),
    ]


def run_stack(session: StackSession, load: Load) -> Section:
    section = Section("http", "HTTP: balancer and one app server, next to their ceilings")
    for target in stack_targets(session):
        section.rows += measure(target, session.token, session.group_id, load)
    section.extra["api_workers_per_server"] = session.workers
    section.extra["load"] = load.__dict__
    section.notes += [
        f"wrk on this machine, -t2, {load.connections} connections x {load.seconds:g} s per "
        f"GET row; POST rows {load.post_connections} connections x {load.post_seconds:g} s "
        "(each POST writes a message, 100 deliveries and enqueues 100 jobs).",
        f"Each app server runs the API with {session.workers} Hypercorn workers; the "
        "hello-world gets the same count. All containers share this machine's cores with wrk.",
        "Balancer rows use /__bench/… (nginx_bench_endpoints): the public TLS server and "
        "proxying without its 100 r/s per-address rate limit and without the access log.",
        "SAQ workers are stopped while rows run; jobs enqueued by the POST rows are sent "
        "afterwards, before the next section, for at most --drain-timeout (what is left then "
        "waits, workers stopped, until the run ends). wrk cuts off the POSTs in flight when a row "
        "ends: a message whose request was cut between its database write and its enqueue "
        "keeps its deliveries queued until the worker's stalled-delivery sweep (every 5 min) "
        "enqueues them again.",
    ]
    return section.finish()


# --- loopback (no stack: --smoke in make test, or --loopback-http) ------------------------------


def run_loopback(load: Load, workers: int) -> Section:
    from bench.loopback import Loopback

    section = Section("http", "HTTP: straight at the app on loopback (no balancer)")
    with ExitStack() as stack:
        lb = Loopback.start(stack, workers)
        token, group_id = seed_church(lb.base, "bench@example.org")
        api(lb.base, "GET", "/api/members", token=token)
        target = Target("loopback app (plain HTTP)", lb.base, lb.hello_base + "/")
        section.rows += measure(target, token, group_id, load)
    section.extra["api_workers_per_server"] = workers
    section.extra["load"] = load.__dict__
    section.notes.append(
        "No `make up` stack: the app and the hello-world ran on loopback against PostgreSQL, "
        "PgBouncer and Redis from app/tests/servers.py; no balancer rows."
    )
    return section.finish()


def run(args, stack: ExitStack | None = None, session: StackSession | None = None) -> Section:
    load = Load(args.seconds, args.connections, args.post_seconds, args.post_connections)
    if session is None:
        return run_loopback(load, os.cpu_count() or 1)
    return run_stack(session, load)


def failed_rows(section: Section) -> list[str]:
    return [f"{r['target']} · {r['row']}" for r in section.rows if not row_ok(r)]


__all__ = ["StackNotUp", "drain_stack_queue", "markdown_rows", "measure", "open_stack", "run"]
