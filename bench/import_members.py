"""`python bench/import_members.py`: time to import 10,000 members from one CSV file.

Starts real PostgreSQL, PgBouncer and Redis on loopback (the tests' launcher), migrates,
serves the app with `koinonia serve` (one worker), registers a church and POSTs a 10,000-row
CSV to /api/members/import: once into an empty church (every row created) and once more (every
row matched by phone, unchanged: the idempotent re-import). Prints a markdown table and
writes .cache/bench/import_members.{md,json}. Traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "app" / "tests")]

from bench.app_http import start, wait_http  # noqa: E402
from bench.common import OUT_DIR, api, table  # noqa: E402
from servers import TestServers, free_port  # noqa: E402


def members_csv(rows: int) -> bytes:
    lines = ["firstName,lastName,phone,email,optInSms"]
    lines += [
        f"Member{i},Bench,+1415{5550000 + i:07d},member{i}@example.org,yes" for i in range(rows)
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def post_import(base: str, token: str, body: bytes) -> tuple[float, dict]:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        base + "/api/members/import",
        method="POST",
        data=body,
        headers={"Content-Type": "text/csv", "Authorization": f"Bearer {token}"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
        result = json.loads(response.read())
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    body = members_csv(args.rows)
    with ExitStack() as stack:
        servers = TestServers.start()
        stack.callback(servers.stop)
        env = {
            **os.environ,
            "KOINONIA_DATABASE_URL": servers.pgbouncer.url,
            "KOINONIA_MIGRATION_DATABASE_URL": servers.postgres.url,
            "KOINONIA_REDIS_URL": servers.redis.url,
            "KOINONIA_ENVIRONMENT": "production",
            "KOINONIA_COOKIE_SECURE": "false",
            "KOINONIA_LOG_LEVEL": "WARNING",
            "KOINONIA_WORKERS": "1",
        }
        koinonia = str(Path(sys.executable).parent / "koinonia")
        subprocess.run([koinonia, "migrate"], env=env, check=True, capture_output=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        app = start(stack, [koinonia, "serve", "--bind", f"127.0.0.1:{port}"], env)
        wait_http(base + "/health/live", app)
        owner = api(
            base,
            "POST",
            "/api/auth/register",
            {"churchName": "Import Chapel", "email": "import@example.org", "password": "x" * 12},
        )
        rows = []
        for label in ("new church (all created)", "same file again (all unchanged)"):
            seconds, result = post_import(base, owner["token"], body)
            rows.append(
                {
                    "run": label,
                    "rows": result["rows"],
                    "created": result["created"],
                    "unchanged": result["unchanged"],
                    "seconds": round(seconds, 2),
                    "rowsPerSecond": round(result["rows"] / seconds),
                }
            )
    lines = table(
        ["import", "rows", "created", "unchanged", "seconds", "rows/s"],
        [list(r.values()) for r in rows],
    )
    text = "\n".join([f"Member import, {args.rows:,}-row CSV ({len(body):,} bytes):", *lines])
    print(text)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "import_members.md").write_text(text + "\n")
    (OUT_DIR / "import_members.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
