"""`make bench-app`: the service's HTTP throughput and latency on this machine.

Starts real PostgreSQL, PgBouncer and Redis on loopback (the same launcher as the tests),
migrates, serves the app with `koinonia serve`, seeds a church with a 100-member group, and
drives each route with wrk next to the framework ceiling (a bare Quart hello-world on
Hypercorn with the same worker count), all in one run. wrk (Debian's package) is the load
generator: it is C, so it drives more load than a Python client could from the same two
cores, and it keeps a full latency histogram (percentiles read by bench/wrk/report.lua).
Load is bounded (duration and connections) and aimed only at 127.0.0.1.

Writes a markdown table to stdout and both forms to .cache/bench/app_http.{md,json}.
`--profile ROW[,ROW...]` also samples one server worker (the hello-world's for its row)
with py-spy (dev extra) during the matching rows, writes the folded stacks next to them
(.cache/bench/profile-<n>.folded, for flamegraph tools) and prints where the samples were:
profile the worker under load, compare rows. The machine's load average is printed with the
figures: compare ratios from one run.
Each row also says how much CPU the server spent per request (its processes' user + system
time over the row): on a shared machine req/s follows the other work, CPU per request much
less. `--rounds N` repeats hello-world, /health and cached members back to back N times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "app" / "tests")]

from bench.common import OUT_DIR, seed_church, wrk  # noqa: E402
from servers import TestServers, free_port, wait_for_port  # noqa: E402


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def start(stack: ExitStack, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    stack.callback(stop)
    return proc


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a server process and its live workers (/proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [str(pid)]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        pending += children
    return total


def measured(
    server: subprocess.Popen,
    url: str,
    seconds: float,
    connections: int,
    db_pid: int | None = None,
    **env: str,
):
    """wrk's figures, plus the server's CPU microseconds per request: unlike req/s, that
    hardly moves when other work shares the machine. With ``db_pid`` (PostgreSQL's
    postmaster) also the database's: its backends' CPU per request."""
    before = tree_cpu_seconds(server.pid)
    db_before = tree_cpu_seconds(db_pid) if db_pid else 0.0
    figures = wrk(url, seconds, connections, **env)
    used = tree_cpu_seconds(server.pid) - before
    requests = max(figures["requests"], 1)
    figures["server_cpu_us_per_request"] = used / requests * 1e6
    if db_pid:
        figures["db_cpu_us_per_request"] = (tree_cpu_seconds(db_pid) - db_before) / requests * 1e6
    return figures


def profile_summary(folded: Path, top: int = 25) -> str:
    """The frames most samples were in (inclusive) and at the top of (self), in percent."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # By function: py-spy names a frame "function (file:line)".
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return "no samples"

    def listing(counts: dict[str, int]) -> list[str]:
        # Frames in every sample (the process's entry points) say nothing.
        ranked = sorted(
            ((frame, n) for frame, n in counts.items() if n < total),
            key=lambda item: -item[1],
        )[:top]
        return [f"  {n / total:6.1%}  {frame}" for frame, n in ranked]

    return "\n".join([f"{total} samples; inclusive:", *listing(inclusive), "self:", *listing(own)])


def profile(server_pid: int, seconds: int, out: Path) -> subprocess.Popen:
    """Sample one worker of `koinonia serve` (its first child; itself with one worker)."""
    children = [
        pid
        for pid in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
        # Workers are spawned processes; not multiprocessing's resource tracker.
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            children[0] if children else str(server_pid),
            "--duration",
            str(seconds),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def redis_round_trips(redis_url: str, url: str, header: str, requests: int = 200) -> float:
    """Redis commands the app sends per request of ``url``, one request at a time.

    Counted with MONITOR (the test Redis, no ACL): commands a script runs inside Redis are
    not round trips and are left out (client type ``lua``), and so are the background ones
    that no request waits for (pub/sub pings, the batched hit/miss counters: MULTI, HINCRBY,
    EXEC). What is left are the session and cache lookups a request waits on.
    """
    import threading

    import redis

    name, _, value = header.partition(": ")

    def get() -> None:
        request = urllib.request.Request(url, headers={name: value})  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass

    for _ in range(20):  # warm: sessions and pages cached where the app caches them
        get()
    background = {"PING", "MULTI", "HINCRBY", "EXEC", "PUBLISH", "INFO"}
    counted = [0]
    ready, stop = threading.Event(), threading.Event()
    client = redis.Redis.from_url(redis_url)

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                words = command["command"].split()
                if command.get("client_type") != "lua" and words[0].upper() not in background:
                    counted[0] += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(5)
    for _ in range(requests):
        get()
    stop.set()
    redis.Redis.from_url(redis_url).ping()  # wakes the watcher to see ``stop``
    watcher.join(5)
    return counted[0] / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--profile",
        metavar="ROW",
        help="py-spy (dev extra) one server worker during the rows whose name contains ROW "
        "(comma-separated for several, e.g. hello,health,cached); folded stacks go to "
        ".cache/bench/profile-<n>.folded, a summary to stderr",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="then N more rounds of hello-world, /health and cached members back to back; "
        "prints the median of each round's ratios (steadier on a shared machine)",
    )
    parser.add_argument(
        "--rows",
        metavar="ROW",
        help="measure only the rows whose name contains ROW (comma-separated for several, "
        "e.g. POST); the hello-world ceiling is always measured first",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 s per row, 8 connections: proves the bench runs (make test)",
    )
    args = parser.parse_args()
    if args.rows and args.rounds > 1:
        parser.error("--rounds needs every row: no --rows with it")
    if args.smoke:
        args.seconds, args.connections = 1, 8

    with ExitStack() as stack:
        servers = TestServers.start()
        stack.callback(servers.stop)
        env = os.environ | {
            "KOINONIA_DATABASE_URL": servers.pgbouncer.url,
            "KOINONIA_MIGRATION_DATABASE_URL": servers.postgres.url,
            "KOINONIA_REDIS_URL": servers.redis.url,
            "KOINONIA_ENVIRONMENT": "production",
            "KOINONIA_COOKIE_SECURE": "false",
            "KOINONIA_LOG_LEVEL": "WARNING",
            "KOINONIA_WORKERS": str(args.workers),
        }
        koinonia = str(Path(sys.executable).parent / "koinonia")
        subprocess.run([koinonia, "migrate"], env=env, check=True, capture_output=True)

        app_port, hello_port = free_port(), free_port()
        app = start(stack, [koinonia, "serve", "--bind", f"127.0.0.1:{app_port}"], env)
        hello = start(
            stack,
            [
                str(Path(sys.executable).parent / "hypercorn"),
                "--workers",
                str(args.workers),
                "--worker-class",
                "uvloop",
                "--bind",
                f"127.0.0.1:{hello_port}",
                "bench.hello:app",
            ],
            env | {"PYTHONPATH": str(ROOT)},
        )
        base, hello_base = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{hello_port}"
        wait_http(base + "/health", app)
        wait_for_port(hello_port, proc=hello)

        token, group_id = seed_church(base, "bench@example.org")
        auth = f"Authorization: Bearer {token}"
        message = json.dumps(
            {"content": "Service moved to 11am", "targetType": "group", "targetIds": [group_id]}
        )
        post = {
            "WRK_METHOD": "POST",
            "WRK_BODY": message,
            "WRK_HEADERS": f"{auth}|Content-Type: application/json",
        }
        rows = [
            ("bare Quart hello-world (ceiling)", hello_base + "/", {}),
            ("GET /health", base + "/health", {}),
            ("GET /api/members (cached first page)", base + "/api/members", {"WRK_HEADERS": auth}),
            (
                "GET /api/members?page=3 (uncached)",
                base + "/api/members?page=3&limit=20",
                {"WRK_HEADERS": auth},
            ),
            (
                "POST /api/messages, 100-member group (enqueue)",
                base + "/api/messages",
                post,
            ),
            # The enqueue latency itself: with -c64 every POST also waits behind 63 others
            # (each writes 101 rows and 100 jobs), so that row measures the queue, not the
            # request. One connection at a time is the latency a sender sees.
            (
                "POST /api/messages, 100-member group (enqueue, 1 connection)",
                base + "/api/messages",
                post | {"CONNECTIONS": "1"},
            ),
        ]
        if args.rows:
            wanted = args.rows.split(",")
            rows = rows[:1] + [row for row in rows[1:] if any(part in row[0] for part in wanted)]
        round_trips = redis_round_trips(servers.redis.url, base + "/api/members", auth)
        print(f"Redis round trips per cached request: {round_trips:.2f}", file=sys.stderr)
        results = []
        load_before = os.getloadavg()
        for number, (name, url, lua_env) in enumerate(rows):
            connections = int(lua_env.pop("CONNECTIONS", args.connections))
            spy = None
            server = hello if number == 0 else app
            if args.profile and any(part in name for part in args.profile.split(",")):
                folded = OUT_DIR / f"profile-{number}.folded"
                spy = profile(server.pid, args.seconds, folded)
            db_pid = servers.postgres.proc.pid if server is app and servers.postgres.proc else None
            figures = measured(server, url, args.seconds, connections, db_pid, **lua_env)
            if spy is not None:
                spy.wait()
                print(f"py-spy, {name}:\n{profile_summary(folded)}", file=sys.stderr)
            results.append(
                {"row": name, **figures}
                | ({"connections": connections} if connections != args.connections else {})
            )
            print(f"measured {name}: {figures['rps']:.0f} req/s", file=sys.stderr)

        # On a shared machine the load moves between rows; ratios taken from rows run back
        # to back, round after round, and their median say more than one sequence does.
        paired: list[dict[str, float]] = []
        for _ in range(args.rounds if args.rounds > 1 else 0):
            ceiling = measured(hello, rows[0][1], args.seconds, args.connections)
            health = measured(app, rows[1][1], args.seconds, args.connections)
            cached = measured(app, rows[2][1], args.seconds, args.connections, **rows[2][2])
            cpu = "server_cpu_us_per_request"
            paired.append(
                {
                    "health": health["rps"] / ceiling["rps"],
                    "cached_members": cached["rps"] / ceiling["rps"],
                    "health_by_cpu": ceiling[cpu] / health[cpu],
                    "cached_members_by_cpu": ceiling[cpu] / cached[cpu],
                }
            )
            print(f"round {len(paired)}: {paired[-1]}", file=sys.stderr)
        load_after = os.getloadavg()

    ceiling = results[0]["rps"]
    load = (
        " / ".join(f"{a:.1f}" for a in load_before)
        + " before, "
        + " / ".join(f"{a:.1f}" for a in load_after)
        + " after (1/5/15 min)"
    )
    lines = [
        f"Workers: {args.workers} (Hypercorn, uvloop) · wrk -t2 -c{args.connections} "
        f"-d{args.seconds}s on the same {os.cpu_count()}-core machine · straight at the app, "
        "no balancer",
        "",
        "| row | req/s | p50 ms | p95 ms | p99 ms | non-2xx | socket errors | of ceiling "
        "| server CPU µs/req | of ceiling by CPU | PostgreSQL CPU µs/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ceiling_cpu = results[0]["server_cpu_us_per_request"]
    for r in results:
        cpu = r["server_cpu_us_per_request"]
        lines.append(
            f"| {r['row']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['non_2xx']} | {r['socket_errors']} | "
            f"{r['rps'] / ceiling:.0%} | {cpu:.0f} | {ceiling_cpu / cpu:.0%} | "
            + (f"{r['db_cpu_us_per_request']:.0f} |" if "db_cpu_us_per_request" in r else "- |")
        )
    lines += [
        "",
        f"Redis round trips per cached GET /api/members on a warm process: {round_trips:.2f}",
        f"Load average: {load}",
    ]
    if paired:
        lines.append(
            f"Paired rounds ({len(paired)}, each hello-world, /health, cached members back to "
            "back): median /health "
            f"{statistics.median(r['health'] for r in paired):.0%}, median cached members "
            f"{statistics.median(r['cached_members'] for r in paired):.0%} of the hello-world; "
            "by server CPU per request: /health "
            f"{statistics.median(r['health_by_cpu'] for r in paired):.0%}, cached members "
            f"{statistics.median(r['cached_members_by_cpu'] for r in paired):.0%}"
        )
    table = "\n".join(lines)
    print(table)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "app_http.md").write_text(table + "\n")
    (OUT_DIR / "app_http.json").write_text(
        json.dumps(
            {
                "workers": args.workers,
                "seconds": args.seconds,
                "connections": args.connections,
                "redis_round_trips_per_cached_request": round_trips,
                "load_average": {"before": load_before, "after": load_after},
                "paired_rounds": paired,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    failed = [r["row"] for r in results if r["non_2xx"] or r["socket_errors"]]
    if failed:
        print(f"errors in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
