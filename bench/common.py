"""Shared pieces of `make bench` (bench/run.py): the load generator, HTTP helpers, the local
stack's addresses, docker exec, load averages and the markdown table."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / ".cache" / "bench"
REPORT_LUA = ROOT / "bench" / "wrk" / "report.lua"

# The `make up` stack (scripts/up.sh, inventories/local).
LB_HTTPS = "https://127.0.0.1:8443"
LB_CONTAINER = "koinonia-lb"
APP_CONTAINERS = ("koinonia-app1", "koinonia-app2", "koinonia-app3")
DB_CONTAINER = "koinonia-db"
NETWORK = "koinonia-local"
APP_PORT = 3000
HELLO_PORT = 3001  # nginx_bench_hello_port

UP_FIRST = "the `make up` stack is not running or not ready: run `make up` first"


class StackNotUp(RuntimeError):
    """The section needs the `make up` stack."""


class BenchError(RuntimeError):
    """A section could not measure what it was asked to (with the reason)."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Section:
    """One section's results: rows (dicts), notes, and the load average around it."""

    name: str
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loadavg_before: list[float] = field(default_factory=loadavg)
    loadavg_after: list[float] | None = None
    started: float = field(default_factory=time.time)
    seconds: float | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> Section:
        self.loadavg_after = loadavg()
        self.seconds = round(time.time() - self.started, 1)
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "notes": self.notes,
            "rows": self.rows,
            **self.extra,
        }


# --- load generator ---------------------------------------------------------------------------


def wrk(url: str, seconds: float, connections: int, threads: int = 2, **lua_env: str) -> dict:
    """wrk's figures for one row (bench/wrk/report.lua reads percentiles from its histogram)."""
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (make setup installs the Debian package)")
    out = subprocess.run(
        [
            "wrk",
            f"-t{max(1, min(threads, connections))}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(REPORT_LUA),
            url,
        ],
        env=os.environ | lua_env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise BenchError(f"wrk {url} failed: {out.stderr.strip() or out.stdout.strip()}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["connections"] = connections
    return figures


def row_ok(figures: dict) -> bool:
    return not figures.get("non_2xx") and not figures.get("socket_errors")


# --- HTTP ---------------------------------------------------------------------------------------

_INSECURE = ssl.create_default_context()
_INSECURE.check_hostname = False
_INSECURE.verify_mode = ssl.CERT_NONE  # the local stack's self-signed certificate


def http(
    base: str,
    method: str,
    path: str,
    body: object | None = None,
    token: str | None = None,
    timeout: float = 30,
) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded JSON or None, headers); HTTP errors are returned, not raised."""
    request = urllib.request.Request(  # noqa: S310 - loopback and our own containers only
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    context = _INSECURE if base.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status, _decode(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read()), dict(exc.headers)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def api(base: str, method: str, path: str, body: object | None = None, token: str | None = None):
    status, decoded, _ = http(base, method, path, body, token)
    if status >= 400:
        raise BenchError(f"{method} {base}{path} answered {status}: {decoded}")
    return decoded


def seed_church(base: str, email: str, members: int = 100) -> tuple[str, str]:
    """A new church with `members` opted-in members in one group: (token, group id)."""
    owner = api(
        base,
        "POST",
        "/api/auth/register",
        {
            "churchName": "Bench Chapel",
            "email": email,
            "password": "bench-password-123",
            "firstName": "Bea",
            "lastName": "Bench",
        },
    )
    token = owner["token"]
    ids = [
        api(
            base,
            "POST",
            "/api/members",
            {
                "firstName": f"Member{i}",
                "lastName": "Bench",
                "phone": f"+1415555{i:04d}",
                "optInSms": True,
            },
            token,
        )["id"]
        for i in range(members)
    ]
    group = api(base, "POST", "/api/groups", {"name": f"Everyone ({members})"}, token)
    api(base, "POST", f"/api/groups/{group['id']}/members", {"memberIds": ids}, token)
    return token, group["id"]


def message_body(group_id: str, content: str = "Service moved to 11am") -> str:
    return json.dumps({"content": content, "targetType": "group", "targetIds": [group_id]})


# --- docker (the `make up` stack) ---------------------------------------------------------------


def docker(*argv: str, check: bool = True, timeout: float = 120, **kwargs: Any):
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, check=check, timeout=timeout, **kwargs
    )


def dexec(container: str, *argv: str, check: bool = True, timeout: float = 120, user=None):
    prefix = ["exec"] + (["-u", user] if user else []) + [container]
    return docker(*prefix, *argv, check=check, timeout=timeout)


def container_ip(name: str) -> str:
    out = docker(
        "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}', name
    ).stdout.strip()
    if not out:
        raise StackNotUp(f"{name} has no address on {NETWORK}: {UP_FIRST}")
    return out


def require_stack(need_lb: bool = True) -> None:
    """Raise StackNotUp with a clear message unless the `make up` stack answers."""
    if shutil.which("docker") is None:
        raise StackNotUp(f"docker is not installed: {UP_FIRST}")
    try:
        names = docker("ps", "--format", "{{.Names}}", timeout=20).stdout.split()
    except (subprocess.SubprocessError, OSError) as exc:
        raise StackNotUp(f"docker does not answer ({exc}): {UP_FIRST}") from exc
    needed = [*APP_CONTAINERS, DB_CONTAINER] + ([LB_CONTAINER] if need_lb else [])
    missing = [n for n in needed if n not in names]
    if missing:
        raise StackNotUp(f"containers not running: {', '.join(missing)}: {UP_FIRST}")
    if need_lb:
        deadline = time.monotonic() + 60  # app servers that were just restarted: a minute
        while True:
            try:
                status, _, _ = http(LB_HTTPS, "GET", "/health", timeout=5)
            except OSError as exc:
                raise StackNotUp(f"{LB_HTTPS}/health does not answer ({exc}): {UP_FIRST}") from exc
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise StackNotUp(f"{LB_HTTPS}/health answered {status}: {UP_FIRST}")
            time.sleep(2)
        status, _, _ = http(LB_HTTPS, "GET", "/__bench/ceiling", timeout=5)
        if status != 200:
            raise StackNotUp(
                f"{LB_HTTPS}/__bench/ceiling answered {status}: the balancer has no bench "
                "endpoints (nginx_bench_endpoints: true in inventories/local/group_vars/"
                "loadbalancers.yml); re-run `make up`"
            )


# --- markdown -----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.{2 if abs(value) < 10 else digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]], align_right_from: int = 1) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append(
        "| "
        + " | ".join("---" if i < align_right_from else "---:" for i in range(len(headers)))
        + " |"
    )
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
