"""The checklist's load profiles against the service on loopback, with Locust.

Profiles (bench/load/profiles.py): smoke, load, spike (baseline -> spike -> baseline, with
the recovery time: seconds from the end of the spike until the p95 of a sliding window is
back within 1.5x the pre-spike p95), soak (its length a parameter: 15 minutes in `make
bench-soak`, 20 s in smoke mode) and conversation (members text in through correctly signed
Twilio webhooks, staff list conversations and reply). The realistic mix of the others: each
user logs in once, then lists members, reads a group, texts a 5-member group and reads that
message's deliveries.

The service is the one the other loopback sections measure (bench/loopback.py): real
PostgreSQL, PgBouncer and Redis from app/tests/servers.py, `koinonia serve` (Hypercorn, one
worker per core) and one `koinonia worker` with the log provider, started and stopped here.
Locust runs each profile in its own process (bench/load/driver.py), aimed at 127.0.0.1 only.
Recorded per profile: req/s, p50/p95/p99 per time slice and per request, errors by kind,
the RSS (and PSS) of each service process tree at start, end and its peak, and the queue's
drain after it. Writes .cache/bench/load_profiles.{json,md} (a soak alone:
load_profiles-soak.*; --smoke: under .cache/bench/smoke/); --write puts the markdown into
BENCHMARKS.md between the markers of that name (added at the end the first time).

Exit status 1 when a profile had an error, produced no samples, or an acknowledged inbound
text or reply is missing from the database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import OUT_DIR, api, fmt, loadavg, log, table  # noqa: E402
from bench.load import profiles as profile_defs  # noqa: E402
from bench.load.profiles import Profile  # noqa: E402
from bench.loopback import Loopback, free_port  # noqa: E402

TWILIO_AUTH_TOKEN = "load-profile-auth-token-" + uuid.uuid4().hex
PUBLIC_BASE_URL = "https://sms.load.example.org"
PASSWORD = "load-password-123"  # noqa: S105 - the seeded churches on loopback
ALL = ("smoke", "load", "spike", "soak", "conversation")


# --- the service's processes ---------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pids.append(current)
        pending += [int(c) for c in children]
    return pids


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pid: int) -> dict:
    """RSS and PSS (shared pages divided among their users) of a process and its children:
    PostgreSQL's backends share its buffers, which RSS counts once per backend."""
    pids = process_tree(pid)
    return {
        "processes": len(pids),
        "rss_mib": round(sum(_kib(f"/proc/{p}/status", "VmRSS") for p in pids) / 1024, 1),
        "pss_mib": round(sum(_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in pids) / 1024, 1),
    }


class MemoryWatch:
    """Samples every process tree every few seconds; start, end and peak RSS."""

    def __init__(self, pids: dict[str, int], every: float = 2.0) -> None:
        self.pids, self.every = pids, every
        self.start = {name: memory(pid) for name, pid in pids.items()}
        self.peak = {name: m["rss_mib"] for name, m in self.start.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], memory(pid)["rss_mib"])

    def finish(self) -> dict:
        self._stop.set()
        self._thread.join(10)
        end = {name: memory(pid) for name, pid in self.pids.items()}
        return {
            name: {"start": self.start[name], "end": end[name], "peak_rss_mib": self.peak[name]}
            for name in self.pids
        }


# --- data ------------------------------------------------------------------------------------


def staff_accounts(base: str, owner_token: str, church: int, count: int) -> list[str]:
    """``count`` staff accounts of a church (invited, then accepted with PASSWORD), several
    at once: each acceptance hashes a password (argon2)."""
    emails = [f"staff{i}-c{church}-{uuid.uuid4().hex[:6]}@example.org" for i in range(count)]

    def create(email: str) -> str:
        invite = api(base, "POST", "/api/staff/invites", {"email": email}, owner_token)
        api(
            base,
            "POST",
            "/api/auth/invites/accept",
            {"token": invite["token"], "password": PASSWORD, "firstName": "Sam"},
        )
        return email

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(create, emails))


def seed(base: str, churches: int, members: int, accounts: int) -> list[dict]:
    """Churches with opted-in members, an everyone group, a 5-member group, a number, and
    staff accounts: one per user that may log in at the same time. (Logins of one account
    at once count as attempts before the password is checked: more of them than
    KOINONIA_LOGIN_MAX_FAILURES answer 429 even with the right password.)"""
    seeded = []
    for c in range(churches):
        email = f"load{c}-{uuid.uuid4().hex[:8]}@example.org"
        owner = api(
            base,
            "POST",
            "/api/auth/register",
            {
                "churchName": f"Load Chapel {c}",
                "email": email,
                "password": PASSWORD,
                "firstName": "Lee",
                "lastName": "Load",
            },
        )
        token = owner["token"]
        phones = [f"+1415555{m:04d}" for m in range(members)]
        ids = [
            api(
                base,
                "POST",
                "/api/members",
                {"firstName": f"M{m}", "lastName": "Load", "phone": phone, "optInSms": True},
                token,
            )["id"]
            for m, phone in enumerate(phones)
        ]
        groups = {}
        for name, member_ids in (("Everyone", ids), ("Choir", ids[:5])):
            group = api(base, "POST", "/api/groups", {"name": name}, token)
            api(
                base, "POST", f"/api/groups/{group['id']}/members", {"memberIds": member_ids}, token
            )
            groups[name] = group["id"]
        number = f"+1415556{c:04d}"
        api(base, "POST", "/api/phone-numbers", {"number": number}, token)
        seeded.append(
            {
                "email": email,
                "staff": staff_accounts(base, token, c, accounts),
                "password": PASSWORD,
                "group_ids": list(groups.values()),
                "small_group_id": groups["Choir"],
                "member_phones": phones,
                "number": number,
            }
        )
    return seeded


def counts(database_url: str) -> dict:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        deliveries = dict(conn.execute("SELECT status, count(*) FROM delivery GROUP BY 1"))
        texts = dict(
            conn.execute("SELECT direction, count(*) FROM conversation_message GROUP BY 1")
        )
    return {"deliveries": deliveries, "conversation_messages": texts}


def drain(database_url: str, timeout: float) -> dict:
    """Waits (bounded) until no delivery is queued or being sent."""
    started = time.monotonic()
    while True:
        now = counts(database_url)
        pending = sum(now["deliveries"].get(s, 0) for s in ("queued", "sending"))
        if not pending or time.monotonic() - started > timeout:
            return now | {"pending": pending, "drain_s": round(time.monotonic() - started, 1)}
        time.sleep(1)


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# --- one profile -----------------------------------------------------------------------------


def run_profile(profile: Profile, config: dict, pids: dict[str, int], database_url: str, smoke):
    log(f"profile {profile.name}: {profile.seconds:.0f} s, load {loadavg()}")
    before = counts(database_url)
    load_before = loadavg()
    watch = MemoryWatch(pids)
    with tempfile.TemporaryDirectory(prefix="koinonia-load-") as tmp:
        config_path, result_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        config_path.write_text(json.dumps(config | {"profile": profile.as_json()}))
        done = subprocess.run(
            [sys.executable, "-m", "bench.load.driver", str(config_path), str(result_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=profile.seconds + 300,
        )
        if done.returncode != 0 or not result_path.exists():
            raise RuntimeError(
                f"the Locust driver failed ({done.returncode}): {done.stderr[-3000:]}"
            )
        result = json.loads(result_path.read_text())
    result["memory"] = watch.finish()
    result["loadavg_before"], result["loadavg_after"] = load_before, loadavg()
    after = drain(database_url, 60 if smoke else 300)
    result["queue"] = {
        "deliveries_created": sum(delta(after["deliveries"], before["deliveries"]).values()),
        "deliveries_by_status": delta(after["deliveries"], before["deliveries"]),
        "pending_after_drain": after["pending"],
        "drain_s": after["drain_s"],
        "conversation_messages": delta(
            after["conversation_messages"], before["conversation_messages"]
        ),
    }
    t = result["total"]
    log(
        f"profile {profile.name}: {t['requests']} requests, {t['rps']:.0f} req/s, "
        f"p95 {fmt(t['p95_ms'])} ms, {t['errors']} errors"
    )
    return result


def problems(results: dict[str, dict]) -> list[str]:
    """What makes the run fail: only what cannot flake on a busy machine."""
    found = []
    for name, r in results.items():
        if not r["total"]["requests"]:
            found.append(f"{name}: no samples")
        if r["total"]["errors"]:
            found.append(f"{name}: errors {r['total']['errors_by_kind']}")
        if r["timed_out"]:
            found.append(f"{name}: the shape did not finish in time")
        recorded = r["queue"]["conversation_messages"]
        if recorded.get("inbound", 0) < r["accepted"]["inbound"]:
            found.append(
                f"{name}: {r['accepted']['inbound']} inbound texts acknowledged, "
                f"{recorded.get('inbound', 0)} recorded"
            )
        if recorded.get("outbound", 0) < r["accepted"]["replies"]:
            found.append(
                f"{name}: {r['accepted']['replies']} replies accepted, "
                f"{recorded.get('outbound', 0)} recorded"
            )
    return found


# --- markdown --------------------------------------------------------------------------------


def users_at(transitions: list[dict], t: float) -> int:
    users = 0
    for tr in transitions:
        if tr["at_s"] <= t + 0.5:
            users = tr["users"]
    return users


def ms(value) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def markers(stem: str) -> tuple[str, str]:
    return f"<!-- {stem}:start (bench/load_profiles.py --write) -->", f"<!-- {stem}:end -->"


def aligned(lines: list[str], text_columns: set[int]) -> list[str]:
    """A table() whose ``text_columns`` are left-aligned."""
    cells = lines[1].strip("| ").split(" | ")
    cells = ["---" if i in text_columns else c for i, c in enumerate(cells)]
    return [lines[0], "| " + " | ".join(cells) + " |", *lines[2:]]


def render(run: dict, stem: str) -> str:
    results = run["profiles"]
    lines = [
        markers(stem)[0],
        f"## Load profiles: {', '.join(results)} (Locust, loopback)",
        "",
        f"`python bench/load_profiles.py{run['command_args']}` on {run['finished_at']}, "
        f"{run['seconds']:.0f} s in all. The service on loopback as in the other loopback "
        f"sections: real PostgreSQL, PgBouncer (transaction pooling) and Redis, `koinonia "
        f"serve` with {run['workers']} Hypercorn workers, one `koinonia worker` (log provider). "
        f"Locust {run['locust']} (FastHttpUser, one process) shares the {os.cpu_count()} cores "
        "with them, straight at the app (no balancer, so no rate limits). "
        f"{len(run['churches'])} churches of {run['members']} members. "
        "**Measured on a shared machine**: other helpers' Molecule scenarios ran beside it; "
        "the load average (1/5/15 min) before and after each profile says how busy it was. "
        "Latencies include the load generator's own queueing when its CPU is high.",
        "",
        "The realistic mix (smoke, load, spike, soak): each user logs in once, then lists "
        "members (weight 4), reads a group (3), texts a 5-member group (1) and reads that "
        "message's deliveries (2), waiting a random think time between tasks. Conversation: "
        "members text the church's number through correctly signed Twilio webhooks (3 of 4 "
        "users); staff list conversations, read one and reply (1 of 4).",
        "",
    ]
    rows = []
    for name, r in results.items():
        t = r["total"]
        peak = max(s["users"] for s in r["profile"]["stages"])
        rows.append(
            [
                name,
                peak,
                r["seconds"],
                t["requests"],
                t["rps"],
                ms(t["p50_ms"]),
                ms(t["p95_ms"]),
                ms(t["p99_ms"]),
                t["errors"],
                r["load_generator_cpu_percent"],
                " / ".join(fmt(x) for x in r["loadavg_before"]),
                r["profile"]["claim"],
            ]
        )
    lines += aligned(
        table(
            [
                "profile",
                "peak users",
                "s",
                "requests",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "Locust CPU %",
                "load before",
                "the seeds' claim",
            ],
            rows,
        ),
        {10, 11},
    )
    lines += [
        "",
        "The seeds' 1,500-2,000 req/s is a figure for three app servers behind NGINX and was "
        "never measured; here one Python load generator and the whole stack share two cores, "
        "so req/s is bounded by the users' think time and the shared CPU, not a ceiling. The "
        "throughput ceiling per route is wrk's (the HTTP and scale-out sections above).",
        "",
    ]
    for name, r in results.items():
        p = r["profile"]
        stages = ", ".join(f"{s['users']} users until {s['until']:.0f} s" for s in p["stages"])
        lines += [
            f"### {name}: {p['title']}",
            "",
            f"Stages: {stages}; think time {p['think_seconds'][0]}-{p['think_seconds'][1]} s. "
            f"Load average {' / '.join(fmt(x) for x in r['loadavg_before'])} before, "
            f"{' / '.join(fmt(x) for x in r['loadavg_after'])} after; Locust used "
            f"{r['load_generator_cpu_percent']}% of a core. The seeds: {p['claim']}.",
            "",
        ]
        lines += table(
            ["request", "count", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
            [
                [
                    n,
                    s["requests"],
                    s["rps"],
                    ms(s["p50_ms"]),
                    ms(s["p95_ms"]),
                    ms(s["p99_ms"]),
                    s["errors"],
                ]
                for n, s in r["by_name"].items()
            ],
        )
        lines.append("")
        lines += table(
            ["from s", "users", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
            [
                [
                    f"{s['start_s']:.0f}",
                    users_at(r["transitions"], s["start_s"]),
                    s["rps"],
                    ms(s["p50_ms"]),
                    ms(s["p95_ms"]),
                    ms(s["p99_ms"]),
                    s["errors"],
                ]
                for s in r["slices"]
            ],
        )
        lines.append("")
        if r["total"]["errors_by_kind"]:
            lines += [f"Errors by kind: {r['total']['errors_by_kind']}", ""]
        rec = r.get("recovery")
        if rec:
            back = (
                f"**{rec['recovery_s']:.0f} s**"
                if rec["recovery_s"] is not None
                else "**not within the run**"
            )
            lines += [
                f"Recovery: pre-spike p95 {ms(rec['baseline_p95_ms'])} ms (the "
                f"{p['baseline_seconds']:.0f} s before the spike, {rec['baseline_requests']} "
                f"requests), spike p95 {ms(rec['spike_p95_ms'])} ms; the p95 of a "
                f"{rec['window_s']:.0f} s sliding window was back within {rec['factor']}x "
                f"({ms(rec['bound_ms'])} ms) {back} after the spike's users were stopped.",
                "",
            ]
        mem_rows = [
            [
                proc,
                m["start"]["processes"],
                m["start"]["rss_mib"],
                m["end"]["rss_mib"],
                m["peak_rss_mib"],
                m["start"]["pss_mib"],
                m["end"]["pss_mib"],
            ]
            for proc, m in r["memory"].items()
        ]
        lines += table(
            [
                "process (tree)",
                "processes",
                "RSS MiB start",
                "RSS MiB end",
                "RSS MiB peak",
                "PSS MiB start",
                "PSS MiB end",
            ],
            mem_rows,
        )
        q = r["queue"]
        conv = q["conversation_messages"]
        lines += [
            "",
            f"Queue: {q['deliveries_created']} deliveries created "
            f"({q['deliveries_by_status']}), {q['pending_after_drain']} still queued or sending "
            f"{q['drain_s']:.0f} s after the profile ended."
            + (
                f" Inbound texts acknowledged {r['accepted']['inbound']}, recorded "
                f"{conv.get('inbound', 0)}; replies accepted {r['accepted']['replies']}, "
                f"recorded {conv.get('outbound', 0)}."
                if p["name"] == "conversation"
                else ""
            ),
            "",
        ]
    lines.append(markers(stem)[1])
    return "\n".join(lines) + "\n"


def write_benchmarks(markdown: str, stem: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    start, end = markers(stem)
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end + "\n")
        text = head + markdown + tail
    else:
        text = text.rstrip("\n") + "\n\n" + markdown
    path.write_text(text)


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every profile tiny (soak: 20 s)")
    p.add_argument("--profiles", default=",".join(ALL), help=f"subset of {','.join(ALL)}")
    p.add_argument("--soak-seconds", type=float, default=900)
    p.add_argument("--load-users", type=int, default=40)
    p.add_argument("--spike-base", type=int, default=10, help="users before and after")
    p.add_argument("--spike-users", type=int, default=80, help="users during the spike")
    p.add_argument("--soak-users", type=int, default=20)
    p.add_argument("--texters", type=int, default=12, help="conversation users (3 of 4 text)")
    p.add_argument("--churches", type=int, default=4)
    p.add_argument("--members", type=int, default=100, help="per church")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Hypercorn workers")
    p.add_argument("--write", action="store_true", help="put the markdown into BENCHMARKS.md")
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        type=Path,
        help="measure nothing: render the markdown of an earlier run (with --write: into "
        "BENCHMARKS.md)",
    )
    args = p.parse_args()
    args.profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    unknown = set(args.profiles) - set(ALL)
    if unknown:
        p.error(f"unknown profiles: {', '.join(sorted(unknown))}")
    if args.smoke:
        args.churches, args.members = 2, 20
    return args


def main() -> int:
    import importlib.metadata

    args = parse_args()
    if args.render:
        run = json.loads(args.render.read_text())
        stem = "load_profiles-soak" if list(run["profiles"]) == ["soak"] else "load_profiles"
        markdown = render(run, stem)
        if args.write:
            write_benchmarks(markdown, stem)
        print(markdown)
        return 0
    defs = profile_defs.build(
        args.smoke,
        load_users=args.load_users,
        spike_base=args.spike_base,
        spike_users=args.spike_users,
        soak_users=args.soak_users,
        soak_seconds=args.soak_seconds,
        texters=args.texters,
    )
    started = time.time()
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        lb = Loopback.start(
            stack,
            args.workers,
            hello=False,
            KOINONIA_SMS_PROVIDER="log",
            KOINONIA_TWILIO_AUTH_TOKEN=TWILIO_AUTH_TOKEN,
            KOINONIA_PUBLIC_BASE_URL=PUBLIC_BASE_URL,
            KOINONIA_ACCESS_LOG="false",
        )
        (worker,) = lb.start_job_workers(1, KOINONIA_WORKER_METRICS_BIND=f"127.0.0.1:{free_port()}")
        servers = lb.servers
        pids = {
            "API (koinonia serve)": lb.app.pid,
            "worker (koinonia worker)": worker.pid,
            "PostgreSQL": servers.postgres.proc.pid,
            "PgBouncer": servers.pgbouncer.proc.pid,
            "Redis": servers.redis.proc.pid,
        }
        log(f"seeding {args.churches} churches of {args.members} members and their staff")
        peak = max(max(s.users for s in defs[name].stages) for name in args.profiles)
        churches = seed(lb.base, args.churches, args.members, -(-peak // args.churches))
        config = {
            "base_url": lb.base,
            "churches": churches,
            "twilio_auth_token": TWILIO_AUTH_TOKEN,
            "public_base_url": PUBLIC_BASE_URL,
        }
        for name in args.profiles:
            results[name] = run_profile(defs[name], config, pids, servers.postgres.url, args.smoke)
            if worker.poll() is not None:
                raise RuntimeError(f"the job worker exited with {worker.returncode}")
    argv = " ".join(sys.argv[1:])
    run = {
        "command_args": f" {argv}" if argv else "",
        "smoke": args.smoke,
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": time.time() - started,
        "workers": args.workers,
        "locust": importlib.metadata.version("locust"),
        "members": args.members,
        "churches": [c["email"] for c in churches],
        "profiles": results,
    }
    # A soak alone (make bench-soak) keeps the other profiles' results, and its own section.
    stem = "load_profiles-soak" if args.profiles == ["soak"] else "load_profiles"
    markdown = render(run, stem)
    out_dir = OUT_DIR / "smoke" if args.smoke else OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(run, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown)
    if args.write:
        write_benchmarks(markdown, stem)
    print(markdown)
    found = problems(results)
    log(f"wrote {out_dir / (stem + '.json')} in {run['seconds']:.0f} s")
    if found:
        print("load profiles: " + "; ".join(found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
