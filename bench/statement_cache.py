"""Section statement-cache: asyncpg's statement cache through PgBouncer, on vs off.

PgBouncer 1.24 (Debian 13) keeps protocol-level prepared statements in transaction pooling
(`max_prepared_statements`), so the app turns asyncpg's statement cache on
(KOINONIA_DB_STATEMENT_CACHE_SIZE, roles/app `app_db_statement_cache_size: auto`). "Off" is
Debian 12's behaviour: cache size 0 and `max_prepared_statements = 0`, so asyncpg prepares
every statement unnamed and pays a second round trip for it.

Paired rounds on the `make up` stack: each round measures both states back to back, in
alternating order (on/off, off/on, ...), so load that other work puts on the shared cores
falls on both states alike. Each state: the app servers' env file and PgBouncer's
`max_prepared_statements` are edited in place, PgBouncer and the API restarted, then the
hello-world ceiling, the uncached GET and the message POST straight at app1 (the HTTP
section's rows). The deployed files are put back and the services restarted at the end.
"""

from __future__ import annotations

import re
import statistics
import time
from contextlib import ExitStack

from bench.common import (
    APP_CONTAINERS,
    APP_PORT,
    DB_CONTAINER,
    BenchError,
    Section,
    dexec,
    http,
    log,
    pct,
    table,
)
from bench.http_stack import Load, StackSession, measure, stack_targets

ENV_FILE = "/etc/koinonia/koinonia.env"
ENV_KEY = "KOINONIA_DB_STATEMENT_CACHE_SIZE"
PGBOUNCER_INI = "/etc/pgbouncer/pgbouncer.ini"
PGBOUNCER_KEY = "max_prepared_statements"
SAVED = ".bench-statement-cache"  # suffix of the deployed copies kept during the section
ROWS = ("bare Quart", "GET /api/members?page=3", "POST /api/messages")


def _read_setting(container: str, path: str, pattern: str) -> str | None:
    text = dexec(container, "cat", path).stdout
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip().strip('"') if found else None


def deployed_values() -> tuple[str | None, str | None]:
    """The app's cache size and PgBouncer's max_prepared_statements as deployed."""
    cache = _read_setting(APP_CONTAINERS[0], ENV_FILE, rf"^{ENV_KEY}=(.*)$")
    prepared = _read_setting(DB_CONTAINER, PGBOUNCER_INI, rf"^{PGBOUNCER_KEY}\s*=\s*(\S+)")
    return cache, prepared


def _wait_ready(container: str, timeout: float = 120) -> None:
    ip = dexec(container, "hostname", "-I").stdout.split()[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, _ = http(f"http://{ip}:{APP_PORT}", "GET", "/health/ready", timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise BenchError(f"{container}: /health/ready not 200 within {timeout:.0f} s")


def apply_state(cache_size: int, max_prepared: int) -> None:
    """Stop the API, write both settings, restart PgBouncer, start the API and wait for it."""
    for name in APP_CONTAINERS:
        dexec(name, "systemctl", "stop", "koinonia-api", check=False)
        dexec(name, "sed", "-i", f"s/^{ENV_KEY}=.*/{ENV_KEY}={cache_size}/", ENV_FILE)
    dexec(
        DB_CONTAINER,
        "sed",
        "-i",
        rf"s/^{PGBOUNCER_KEY}\s*=.*/{PGBOUNCER_KEY} = {max_prepared}/",
        PGBOUNCER_INI,
    )
    dexec(DB_CONTAINER, "systemctl", "restart", "pgbouncer")
    for name in APP_CONTAINERS:
        dexec(name, "systemctl", "start", "koinonia-api")
    for name in APP_CONTAINERS:
        _wait_ready(name)
    if deployed_values() != (str(cache_size), str(max_prepared)):
        raise BenchError(f"settings not applied: {deployed_values()}")


def restore(stack: ExitStack) -> None:
    """Keep the deployed files; put them back (and restart) when the section ends."""
    for name in APP_CONTAINERS:
        dexec(name, "cp", "-p", ENV_FILE, ENV_FILE + SAVED)
    dexec(DB_CONTAINER, "cp", "-p", PGBOUNCER_INI, PGBOUNCER_INI + SAVED)

    def put_back() -> None:
        log("statement-cache: putting the deployed settings back")
        for name in APP_CONTAINERS:
            dexec(name, "systemctl", "stop", "koinonia-api", check=False)
            dexec(name, "mv", ENV_FILE + SAVED, ENV_FILE, check=False)
        dexec(DB_CONTAINER, "mv", PGBOUNCER_INI + SAVED, PGBOUNCER_INI, check=False)
        dexec(DB_CONTAINER, "systemctl", "restart", "pgbouncer", check=False)
        for name in APP_CONTAINERS:
            dexec(name, "systemctl", "start", "koinonia-api", check=False)
        for name in APP_CONTAINERS:
            _wait_ready(name)

    stack.callback(put_back)


def run(session: StackSession, load: Load, rounds: int, cache_on: int = 100) -> Section:
    section = Section(
        "statement-cache",
        "Statement cache: asyncpg's prepared statements through PgBouncer, on vs off",
    )
    cache, prepared = deployed_values()
    section.extra["deployed"] = {ENV_KEY: cache, PGBOUNCER_KEY: prepared}
    if prepared is None:
        section.skipped = (
            f"PgBouncer here has no {PGBOUNCER_KEY} (Debian 12's PgBouncer 1.18 cannot keep "
            "prepared statements in transaction pooling): nothing to turn on"
        )
        return section.finish()
    max_prepared_on = max(int(prepared), cache_on)
    # A few POSTs in 3 s say little on shared cores: the POST row runs as long as a GET row.
    load = Load(
        load.seconds, load.connections, max(load.post_seconds, load.seconds), load.post_connections
    )
    states = {"on": (cache_on, max_prepared_on), "off": (0, 0)}
    target = stack_targets(session)[1]  # straight at app1: no balancer between
    warm_up = Load(2, load.connections, 2, load.post_connections)
    with ExitStack() as stack:
        restore(stack)
        for number in range(1, rounds + 1):
            order = ("on", "off") if number % 2 else ("off", "on")
            for state in order:
                log(f"statement-cache: round {number}, cache {state}")
                apply_state(*states[state])
                # Untimed: each row's statements prepared and the pool's connections opened
                # before the clock starts, in both states alike.
                measure(target, session.token, session.group_id, warm_up, only=ROWS)
                rows = measure(target, session.token, session.group_id, load, only=ROWS)
                section.rows += [r | {"round": number, "cache": state} for r in rows]
    section.extra["states"] = {
        state: {ENV_KEY: cache_size, PGBOUNCER_KEY: max_prepared}
        for state, (cache_size, max_prepared) in states.items()
    }
    section.notes += [
        f"Straight at app1 (plain HTTP, {session.workers} Hypercorn workers), SAQ workers "
        f"stopped; {rounds} paired rounds, each measuring both states back to back in "
        "alternating order (on/off, then off/on, ...), so the load of other work on the "
        "shared cores falls on both alike.",
        f"on: {ENV_KEY}={cache_on}, PgBouncer {PGBOUNCER_KEY} = {max_prepared_on} (as "
        f"deployed on Debian 13); off: both 0 (Debian 12's behaviour: every statement "
        "prepared unnamed, two round trips). PgBouncer and the API are restarted for each "
        "state; the deployed files are put back at the end.",
        f"wrk -t2, GET rows {load.connections} connections x {load.seconds:g} s, POST row "
        f"{load.post_connections} connections x {load.post_seconds:g} s (each POST writes a "
        "message and 100 deliveries and enqueues their jobs), each state after an untimed "
        "2 s of every row (statements prepared, pool connections open).",
    ]
    return section.finish()


def markdown(section: Section) -> list[str]:
    rows = section.rows
    headers = ["round", "cache", "row", "conns", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    lines = table(
        [*headers, "errors", "of hello"],
        [
            [
                r["round"],
                r["cache"],
                r["row"],
                r["connections"],
                round(r["rps"]),
                round(r["p50_ms"], 2),
                round(r["p95_ms"], 2),
                round(r["p99_ms"], 2),
                r["non_2xx"] + r["socket_errors"],
                pct(r["of_framework_ceiling"]),
            ]
            for r in rows
        ],
        align_right_from=3,
    )
    # Per round, the ratio on/off of each row: paired, so drift in the machine's load cancels.
    summary = []
    for name in dict.fromkeys(r["row"] for r in rows):
        ratios_rps, ratios_p95, ratios_of_hello = [], [], []
        for number in sorted({r["round"] for r in rows}):
            pair = {r["cache"]: r for r in rows if r["row"] == name and r["round"] == number}
            if {"on", "off"} <= pair.keys() and pair["off"]["rps"] and pair["off"]["p95_ms"]:
                ratios_rps.append(pair["on"]["rps"] / pair["off"]["rps"])
                ratios_p95.append(pair["on"]["p95_ms"] / pair["off"]["p95_ms"])
                # Each state's share of its own hello-world ceiling: load that changed
                # between the two states moves the ceiling too.
                if pair["off"].get("of_framework_ceiling"):
                    ratios_of_hello.append(
                        pair["on"]["of_framework_ceiling"] / pair["off"]["of_framework_ceiling"]
                    )
        if ratios_rps:
            summary.append(
                [
                    name,
                    len(ratios_rps),
                    f"{statistics.median(ratios_rps):.2f}",
                    " / ".join(f"{x:.2f}" for x in ratios_rps),
                    f"{statistics.median(ratios_p95):.2f}",
                    f"{statistics.median(ratios_of_hello):.2f}" if ratios_of_hello else "-",
                ]
            )
    if summary:
        lines += ["", "On vs off, per pair (on ÷ off in the same round):", ""]
        lines += table(
            [
                "row",
                "pairs",
                "req/s on÷off (median)",
                "req/s on÷off (each)",
                "p95 on÷off (median)",
                "share of hello on÷off (median)",
            ],
            summary,
            align_right_from=1,
        )
    return lines
