"""Section 5 (scale-out): the balancer's HTTP rows with 1, 2 and 3 app servers in rotation.

Servers are taken out of rotation with the balancer's drain endpoint (PUT
/upstream_peers/<name>/drain on its status port, from inside koinonia-lb); on a balancer
without it, the API of the removed servers is stopped and the health checker's verdict
awaited. Their hello-world is stopped too, so the framework ceiling scales the same way.
Everything shares this machine's cores (wrk, NGINX, every app server, PostgreSQL, Redis):
more app servers add processes, not cores. Per-core figures divide by the machine's cores.
"""

from __future__ import annotations

import json
import os
import time

from bench.common import APP_CONTAINERS, LB_CONTAINER, LB_HTTPS, BenchError, Section, dexec, log
from bench.http_stack import Load, StackSession, Target, measure, start_hello, stop_hello

STATUS = "http://127.0.0.1:8080"


def lb_request(method: str, path: str) -> tuple[int, dict | None]:
    script = (
        "import sys, urllib.request, urllib.error\n"
        f"r = urllib.request.Request({STATUS + path!r}, method={method!r})\n"
        "try:\n"
        "    resp = urllib.request.urlopen(r, timeout=5)\n"
        "    print(resp.status); print(resp.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    out = dexec(LB_CONTAINER, "python3", "-c", script, check=False).stdout.split("\n", 1)
    try:
        return int(out[0]), json.loads(out[1]) if len(out) > 1 and out[1].strip() else None
    except ValueError:
        return 0, None


def peers() -> list[dict]:
    status, body = lb_request("GET", "/upstream_status")
    if status != 200 or not body:
        raise BenchError(f"koinonia-lb {STATUS}/upstream_status answered {status}")
    return body["peers"]


def drain_supported() -> bool:
    status, _ = lb_request("GET", f"/upstream_peers/{APP_CONTAINERS[0]}/drain")
    return status == 200


def wait_available(expected: set[str], timeout: float = 60) -> None:
    """Until exactly `expected` peers are up and not drained."""
    deadline = time.monotonic() + timeout
    while True:
        now = {p["name"] for p in peers() if p["status"] == "up" and not p.get("drained")}
        if now == expected:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"balancer peers available {sorted(now)}, wanted {sorted(expected)}")
        time.sleep(1)


def set_rotation(active: list[str], use_drain: bool, workers: int) -> None:
    for name in APP_CONTAINERS:
        if use_drain:
            lb_request("DELETE" if name in active else "PUT", f"/upstream_peers/{name}/drain")
        else:
            dexec(name, "systemctl", "start" if name in active else "stop", "koinonia-api")
    stop_hello([n for n in APP_CONTAINERS if n not in active])
    start_hello(active, workers)
    wait_available(set(active), timeout=90)


def run(session: StackSession, load: Load, nginx_rps: float | None, reuse3: list[dict]) -> Section:
    section = Section("scaleout", "Scale-out: 1, 2 and 3 app servers behind the balancer")
    cores = os.cpu_count() or 1
    use_drain = drain_supported()
    section.extra["method"] = "drain endpoint" if use_drain else "API stopped on removed servers"
    log(f"scale-out: servers leave rotation by {section.extra['method']}")
    target = Target(
        "balancer (TLS, keepalive)", LB_HTTPS + "/__bench/app", LB_HTTPS + "/__bench/hello"
    )
    try:
        for n in (1, 2, 3):
            if n == 3 and reuse3:
                rows = [dict(r, app_servers=3, reused_from="http") for r in reuse3]
            else:
                set_rotation(list(APP_CONTAINERS[:n]), use_drain, session.workers)
                rows = measure(target, session.token, session.group_id, load, app_servers=n)
            for r in rows:
                r["target"] = target.label
                r["app_servers"] = n
                r["rps_per_core"] = r["rps"] / cores
                r["rps_per_app_server"] = r["rps"] / n
                if nginx_rps:
                    r["of_nginx_ceiling"] = r["rps"] / nginx_rps
            section.rows += [r for r in rows if not r["row"].startswith("NGINX")]
    finally:
        set_rotation(list(APP_CONTAINERS), use_drain, session.workers)
    section.notes += [
        f"One machine, {cores} cores: wrk, NGINX, all app servers, PostgreSQL, PgBouncer and "
        "Redis share them, so adding app servers adds processes, not CPU. Per-core = req/s ÷ "
        f"{cores}; the figure that would grow with real machines is per app server only when "
        "the app servers are the bottleneck.",
        f"Servers left rotation by the balancer's {section.extra['method']}; the 3-server rows "
        "are the HTTP section's balancer rows when that section ran in the same run.",
    ]
    return section.finish()
