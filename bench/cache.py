"""Section 2 (cache): latency of GET /api/analytics/summary, cache miss vs cache hit.

Runs on the queue section's loopback servers, for the church that holds its deliveries (the
miss counts them). Each `days` value (1..N) is its own cache key, so the first request for
it is a miss (PostgreSQL: four aggregate queries) and the second a hit (the app process's own
copy, or one Redis round trip when another process served the miss); X-Cache
on every answer confirms which. One keep-alive connection, one request at a time: the
latency a caller sees, client overhead included for both.
"""

from __future__ import annotations

import http.client
import statistics
import time
from urllib.parse import urlsplit

from bench.common import BenchError, Section, log, table
from bench.loopback import Loopback


def timed_get(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[float, str]:
    started = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise BenchError(f"GET {path} answered {response.status}")
    return elapsed, response.headers.get("X-Cache", "")


def summarize(kind: str, values: list[float]) -> dict:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "kind": kind,
        "requests": len(values),
        "mean_ms": statistics.fmean(values),
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
    }


def run(args, lb: Loopback, token: str) -> Section:
    section = Section("cache", "Cache: analytics summary, hit vs miss")
    keys = 20 if args.smoke else min(args.cache_keys, 366)
    url = urlsplit(lb.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    misses, hits, wrong = [], [], 0
    for days in range(1, keys + 1):
        path = f"/api/analytics/summary?days={days}"
        ms, state = timed_get(conn, path, token)
        misses.append(ms)
        wrong += state != "MISS"
        ms, state = timed_get(conn, path, token)
        hits.append(ms)
        wrong += state != "HIT"
    conn.close()
    miss, hit = summarize("miss (PostgreSQL)", misses), summarize("hit (Redis)", hits)
    miss["ratio_to_hit_p50"] = miss["p50_ms"] / hit["p50_ms"]
    hit["ratio_to_hit_p50"] = 1.0
    section.rows += [miss, hit]
    import psycopg

    with psycopg.connect(lb.servers.postgres.superuser_dsn("koinonia")) as conn2:
        deliveries = conn2.execute("select count(*) from delivery").fetchone()[0]
        members = conn2.execute("select count(*) from member").fetchone()[0]
    section.extra |= {
        "x_cache_mismatches": wrong,
        "deliveries_in_db": deliveries,
        "members_in_db": members,
    }
    if wrong:
        section.notes.append(f"{wrong} answers had an unexpected X-Cache header")
    section.notes += [
        f"{keys} cache keys (days=1..{keys}), each requested twice in a row (miss, then hit), "
        "one keep-alive connection, straight at the app on loopback (no balancer, no TLS).",
        f"Data: the church of the queue section ({deliveries:,} deliveries, {members:,} members "
        "in the database); a miss runs the summary's aggregate queries, so its cost grows "
        "with the church's history while a hit does not.",
    ]
    log(
        f"cache: miss p50 {miss['p50_ms']:.2f} ms, hit p50 {hit['p50_ms']:.2f} ms "
        f"({miss['ratio_to_hit_p50']:.1f}x)"
    )
    return section.finish()


def markdown(section: Section) -> list[str]:
    return table(
        ["request", "requests", "mean ms", "p50 ms", "p95 ms", "p99 ms", "x hit p50"],
        [
            [
                r["kind"],
                r["requests"],
                round(r["mean_ms"], 2),
                round(r["p50_ms"], 2),
                round(r["p95_ms"], 2),
                round(r["p99_ms"], 2),
                round(r["ratio_to_hit_p50"], 1),
            ]
            for r in section.rows
        ],
    )
