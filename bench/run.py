"""`make bench`: measures the platform on the machine it runs on, each figure next to its
ceiling measured in the same run, and writes BENCHMARKS.md-ready markdown and JSON.

Sections: http, cache, queue, pgbouncer, scaleout, statement-cache, deploy
(bench/http_stack.py, cache.py, sms_queue.py, pgbouncer.py, scaleout.py, statement_cache.py,
deploy.py). The full run
needs the `make up` stack (HTTP through the balancer and straight at an app server, pgbench
in koinonia-db, scale-out by draining peers, site.yml re-run); cache and queue run on
loopback servers (app/tests/servers.py) so they control their own data and workers.
`--smoke` (part of `make test`, no stack there) runs every section at its smallest on
loopback: http straight at a loopback app, pgbench through a loopback PgBouncer, the queue
with 200 deliveries; scale-out needs the balancer and is reported as skipped, deploy only
reads what scripts/up.sh recorded. `--smoke --stack` runs the stack sections tiny too.

Every load is bounded (wrk duration and connections, pgbench -T, delivery counts with a
timeout) and aimed at 127.0.0.1 or the `make up` containers. Writes
.cache/bench/results.json and .cache/bench/BENCHMARKS.md (--smoke: .cache/bench/smoke/);
--write copies the markdown to ./BENCHMARKS.md. os.getloadavg() is recorded before and
after each section.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cache, deploy, http_stack, pgbouncer, scaleout, statement_cache
from bench import sms_queue as queue_section
from bench.common import (
    APP_CONTAINERS,
    DB_CONTAINER,
    LB_CONTAINER,
    OUT_DIR,
    ROOT,
    BenchError,
    Section,
    StackNotUp,
    loadavg,
    log,
    pct,
    require_stack,
    table,
)

SECTIONS = ("http", "scaleout", "statement-cache", "pgbouncer", "queue", "cache", "deploy")
# Order of the sections in the markdown.
ORDER = ("http", "cache", "queue", "pgbouncer", "scaleout", "statement-cache", "deploy")
# Sections that measure the `make up` stack's HTTP path (they share one seeded session).
STACK_HTTP = {"http", "scaleout", "statement-cache"}


def sh(argv: list[str], timeout: float = 30) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout + out.stderr).strip()


def first_line(text: str) -> str:
    return text.splitlines()[0].strip() if text else "?"


def machine(on_stack: bool) -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    os_release = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    info = {
        "cores": os.cpu_count(),
        "cpu": cpu.group(1).strip() if cpu else platform.machine(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_release.get("PRETTY_NAME", "?").strip('"'),
        "debian_version": Path("/etc/debian_version").read_text().strip()
        if Path("/etc/debian_version").exists()
        else "?",
        "python": platform.python_version(),
        "wrk": first_line(sh(["wrk", "-v"])),
    }
    for pkg in ("quart", "hypercorn", "saq", "uvloop", "asyncpg", "tortoise-orm"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = "?"
    if on_stack:
        d = ["docker", "exec"]
        info["nginx"] = first_line(sh([*d, LB_CONTAINER, "nginx", "-v"]))
        info["postgresql"] = first_line(
            sh([*d, DB_CONTAINER, "sh", "-c", "/usr/lib/postgresql/*/bin/postgres --version"])
        )
        info["pgbouncer"] = first_line(sh([*d, DB_CONTAINER, "pgbouncer", "--version"]))
        info["redis"] = first_line(sh([*d, "koinonia-redis", "redis-server", "--version"]))
        info["app_server_python_packages"] = first_line(
            sh(
                [
                    *d,
                    APP_CONTAINERS[0],
                    "/opt/koinonia/current/venv/bin/python",
                    "-c",
                    "import importlib.metadata as m, platform; print('python', "
                    "platform.python_version(), *[p + ' ' + m.version(p) for p in "
                    "('quart', 'hypercorn', 'saq', 'uvloop')])",
                ]
            )
        )
        release = first_line(sh([*d, DB_CONTAINER, "cat", "/etc/debian_version"]))
        info["containers"] = f"6 Debian {release} systemd containers (make up), no CPU/mem limits"
    info["nginx_host"] = first_line(sh(["nginx", "-v"])) if shutil.which("nginx") else "-"
    info["postgresql_host"] = first_line(sh(["/usr/lib/postgresql/15/bin/postgres", "--version"]))
    info["pgbouncer_host"] = first_line(sh(["pgbouncer", "--version"]))
    info["redis_host"] = first_line(sh(["redis-server", "--version"]))
    info["docker"] = first_line(sh(["docker", "version", "--format", "{{.Server.Version}}"]))
    return info


# --- markdown ---------------------------------------------------------------------------------


def section_markdown(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.skipped:
        return [*lines, f"Skipped: {section.skipped}", ""]
    before = ", ".join(f"{x:.2f}" for x in section.loadavg_before)
    after = ", ".join(f"{x:.2f}" for x in section.loadavg_after or [])
    lines.append(
        f"Load average (1, 5, 15 min) before: {before}; after: {after}. "
        f"Section took {section.seconds:.0f} s."
    )
    lines.append("")
    lines += [f"- {note}" for note in section.notes]
    lines.append("")
    if section.name == "http":
        lines += http_stack.markdown_rows(section.rows)
    elif section.name == "scaleout":
        lines += table(
            [
                "app servers",
                "row",
                "req/s",
                "req/s per core",
                "req/s per app server",
                "p50 ms",
                "p99 ms",
                "errors",
                "of NGINX",
                "of hello",
            ],
            [
                [
                    r["app_servers"],
                    r["row"],
                    round(r["rps"]),
                    round(r["rps_per_core"]),
                    round(r["rps_per_app_server"]),
                    round(r["p50_ms"], 2),
                    round(r["p99_ms"], 2),
                    r["non_2xx"] + r["socket_errors"],
                    pct(r.get("of_nginx_ceiling")),
                    pct(r.get("of_framework_ceiling")),
                ]
                for r in sorted(section.rows, key=lambda r: (r["row"], r["app_servers"]))
            ],
            align_right_from=2,
        )
    elif section.name == "pgbouncer":
        lines += pgbouncer.markdown(section)
    elif section.name == "queue":
        lines += queue_section.markdown(section)
    elif section.name == "cache":
        lines += cache.markdown(section)
    elif section.name == "deploy":
        lines += deploy.markdown(section)
    elif section.name == "statement-cache":
        lines += statement_cache.markdown(section)
    lines.append("")
    return lines


def stack_drain_markdown(drain: dict | None) -> list[str]:
    if not drain or not drain.get("queued_after_rows"):
        return []
    rate = drain.get("sent_per_second_3_workers")
    head = (
        "On the `make up` stack (not loopback): the jobs the HTTP section's POST rows "
        f"enqueued, {drain['queued_after_rows']:,} deliveries, "
    )
    if not rate:
        # Nothing moved: say so, without guessing why (the workers' journal says; a Redis
        # at maxmemory with noeviction refuses the very writes that dequeue a job).
        return [
            head + "were not sent: the count of queued deliveries did not move while the "
            "three app servers' SAQ workers ran (the run waits until it has not moved for "
            "20 s). Read the workers' journal on the stack for the reason.",
            "",
        ]
    sent = drain["queued_after_rows"] - drain["still_queued"]
    if drain.get("hit_bound"):
        left = (
            f"{drain['still_queued']:,} were still queued at the run's bound "
            f"({drain['drain_bound_seconds']:.0f} s, --drain-timeout): the workers were stopped "
            "again until the end of the run, so that they did not load the later sections."
        )
    else:
        left = (
            f"{drain['still_queued']:,} were left queued (requests wrk cut off as a row ended, "
            "between the message's database write and its enqueue: the worker's "
            "stalled-delivery sweep enqueues them again within 5-10 minutes)."
        )
    exact = ""
    if drain.get("sent_per_second_first_to_last"):
        exact = (
            f" In the database, {drain['sent_in_database']:,} deliveries have a `sent_at` "
            f"within {drain['first_to_last_sent_seconds']:.1f} s of each other (first to last): "
            f"{drain['sent_per_second_first_to_last']:,.0f} deliveries/s."
        )
    return [
        head + f"{sent:,} of them were sent by the three app servers' SAQ workers (log "
        f"provider, started again after the rows) in "
        f"{drain['drain_seconds']:.0f} s (polled every 2 s), {rate:,.0f} deliveries/s; "
        + left
        + exact,
        "",
    ]


def render(results: dict) -> str:
    m = results["machine"]
    smoke = " --smoke" if results["smoke"] else ""
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python bench/run.py{smoke}`) "
        f"on {results['finished_at']} in {results['seconds']:.0f} s. Every figure was measured on "
        "the machine below, in this run, next to its ceiling measured in the same run. "
        "Other work (Molecule scenarios) may share the machine: the load average before and "
        "after each section says how busy it was. Raw results: `.cache/bench/results.json`. "
        "Reproduce: `make up`, then `make bench` (`make bench-smoke` is the seconds-long "
        "version that `make test` runs).",
        "",
        "## Machine",
        "",
    ]
    lines += table(["", ""], [[k, v] for k, v in m.items()], align_right_from=2)
    lines.append("")
    for rerun in results.get("reruns", []):
        lines += [
            f"Re-run on {rerun['finished_at']} (everything else is the run above): "
            + ", ".join(rerun["sections"])
            + ".",
            "",
        ]
    if results["errors"]:
        lines += ["## Sections that failed", ""]
        lines += [f"- **{name}**: {err}" for name, err in results["errors"].items()]
        lines.append("")
    for s in results["section_objects"]:
        lines += section_markdown(s)
        if s.name == "queue" or (
            s.name == "http" and not any(x.name == "queue" for x in results["section_objects"])
        ):
            lines += stack_drain_markdown(results.get("stack_queue_drain"))
    return "\n".join(lines).rstrip() + "\n"


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every section at its smallest (make test)")
    p.add_argument("--stack", action="store_true", help="with --smoke: also the stack sections")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--write", action="store_true", help="copy the markdown to ./BENCHMARKS.md")
    p.add_argument("--seconds", type=float, default=10, help="wrk duration per GET row")
    p.add_argument("--connections", type=int, default=64, help="wrk connections per GET row")
    p.add_argument("--post-seconds", type=float, default=3, help="wrk duration per POST row")
    p.add_argument("--post-connections", type=int, default=8)
    p.add_argument("--pgbench-seconds", type=int, default=10)
    p.add_argument(
        "--ab-rounds",
        type=int,
        default=3,
        help="statement-cache section: paired rounds, each measuring cache on and off",
    )
    p.add_argument("--deliveries", type=int, default=10_000)
    p.add_argument("--queue-timeout", type=float, default=600, help="per queue run, seconds")
    p.add_argument(
        "--queue-rows",
        default="",
        help="only these queue rows, PROVIDER/WORKERS/CONCURRENCY, comma-separated "
        "(e.g. 200ms/2/50,log/2/100); default: all",
    )
    p.add_argument(
        "--group-sizes",
        default="100,1000,10000",
        help="group sizes of the queue section's POST rows, comma-separated ('' for none)",
    )
    p.add_argument("--cache-keys", type=int, default=300)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=600,
        help="max wait for the stack's SAQ workers to send the POST rows' jobs",
    )
    p.add_argument(
        "--deploy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-run site.yml and time it (default: on in a full run)",
    )
    p.add_argument("--deploy-timeout", type=float, default=1800)
    p.add_argument(
        "--merge-into",
        metavar="RESULTS_JSON",
        type=Path,
        help="replace these --sections in an earlier results.json (a section that failed "
        "there) and re-render it; the markdown says which were re-run",
    )
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        type=Path,
        help="measure nothing: re-render the markdown of an earlier results.json",
    )
    args = p.parse_args()
    if args.smoke:
        args.seconds, args.connections = 1, 8
        args.post_seconds, args.post_connections = 1, 2
        args.ab_rounds = 1
    if args.deploy is None:
        args.deploy = not args.smoke
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def render_file(path: Path) -> str:
    results = json.loads(path.read_text())
    fields = (
        "name",
        "title",
        "rows",
        "notes",
        "loadavg_before",
        "loadavg_after",
        "seconds",
        "skipped",
    )
    sections = []
    for data in results.pop("sections"):
        section = Section(**{k: data[k] for k in fields})
        section.extra = {k: v for k, v in data.items() if k not in fields}
        sections.append(section)
    results["section_objects"] = sections
    return render(results)


def rerender(args: argparse.Namespace) -> int:
    markdown = render_file(args.render)
    if args.write:
        (ROOT / "BENCHMARKS.md").write_text(markdown)
    print(markdown)
    return 0


def merge(args: argparse.Namespace, results: dict, order: dict[str, int]) -> int:
    merged = json.loads(args.merge_into.read_text())
    rerun = {s["name"] for s in results["sections"]}
    merged["sections"] = [s for s in merged["sections"] if s["name"] not in rerun]
    merged["sections"] += [s | {"rerun_at": results["finished_at"]} for s in results["sections"]]
    merged["sections"].sort(key=lambda s: order[s["name"]])
    old_errors = {k: v for k, v in merged.get("errors", {}).items() if k not in rerun}
    merged["errors"] = old_errors | results["errors"]
    merged.setdefault("reruns", []).append(
        {
            "sections": sorted(rerun),
            "finished_at": results["finished_at"],
            "loadavg_end": results["loadavg_end"],
        }
    )
    args.merge_into.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    args.render = args.merge_into
    rerender(args)
    (args.merge_into.parent / "BENCHMARKS.md").write_text(render_file(args.merge_into))
    return 1 if results["errors"] else 0


def main() -> int:
    args = parse_args()
    if args.render:
        return rerender(args)
    started = time.time()
    on_stack = not args.smoke or args.stack
    stack_sections = (STACK_HTTP | {"pgbouncer"}) & set(args.sections)
    if on_stack and (stack_sections or args.deploy):
        try:
            require_stack(need_lb=bool(STACK_HTTP & stack_sections))
        except StackNotUp as exc:
            print(f"make bench: {exc}", file=sys.stderr)
            return 2
    sections: list[Section] = []
    errors: dict[str, str] = {}
    results: dict = {"smoke": args.smoke, "args": {k: v for k, v in vars(args).items()}}
    results["machine"] = machine(on_stack)
    results["loadavg_start"] = loadavg()

    def attempt(name: str, fn):
        log(f"== section {name} (load {loadavg()})")
        try:
            section = fn()
        except (BenchError, StackNotUp, subprocess.SubprocessError, OSError, RuntimeError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"section {name} FAILED: {exc}")
            traceback.print_exc()
            return None
        sections.append(section)
        return section

    want = set(args.sections)
    if on_stack and want & STACK_HTTP:
        with ExitStack() as stack:
            try:
                session = http_stack.open_stack(stack)
            except (BenchError, StackNotUp, subprocess.SubprocessError) as exc:
                print(f"make bench: the stack could not be prepared: {exc}", file=sys.stderr)
                return 2
            stack.callback(
                lambda: results.__setitem__(
                    "stack_queue_drain", http_stack.drain_stack_queue(args.drain_timeout)
                )
            )
            load = http_stack.Load(
                args.seconds, args.connections, args.post_seconds, args.post_connections
            )
            http_section = None
            if "http" in want:
                http_section = attempt("http", lambda: http_stack.run_stack(session, load))
            if "scaleout" in want:
                reuse = [
                    r
                    for r in (http_section.rows if http_section else [])
                    if r["target"].startswith("balancer")
                ]
                nginx = next((r["rps"] for r in reuse if r["row"].startswith("NGINX")), None)
                attempt("scaleout", lambda: scaleout.run(session, load, nginx, reuse))
            if "statement-cache" in want:
                attempt(
                    "statement-cache",
                    lambda: statement_cache.run(session, load, args.ab_rounds),
                )
    elif "http" in want:
        attempt("http", lambda: http_stack.run(args))
        if "scaleout" in want:
            s = Section("scaleout", "Scale-out: 1, 2 and 3 app servers behind the balancer")
            s.skipped = (
                "needs the balancer of the `make up` stack "
                "(run without --smoke, or --smoke --stack)"
            )
            sections.append(s.finish())
    if not on_stack and "statement-cache" in want:
        s = Section("statement-cache", "Statement cache: asyncpg's prepared statements on vs off")
        s.skipped = "needs the `make up` stack (run without --smoke, or --smoke --stack)"
        sections.append(s.finish())
    if "pgbouncer" in want:

        def pgb() -> Section:
            with ExitStack() as stack:
                return pgbouncer.run(args, stack, on_stack)

        attempt("pgbouncer", pgb)
    if want & {"queue", "cache"}:
        with ExitStack() as stack:
            holder: dict = {}

            def q() -> Section:
                section, lb, token = queue_section.run(args, stack)
                holder.update(lb=lb, token=token)
                return section

            queue_result = attempt("queue", q)
            if "queue" not in want and queue_result is not None:
                sections.remove(queue_result)
            if "cache" in want and holder:
                attempt("cache", lambda: cache.run(args, holder["lb"], holder["token"]))
    if on_stack and want & STACK_HTTP:
        # Before the deploy section: its site.yml re-run must find the stack as deployed.
        http_stack.resume_stack_workers()
    if "deploy" in want:
        attempt("deploy", lambda: deploy.run(args))

    results["loadavg_end"] = loadavg()
    results["seconds"] = time.time() - started
    results["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["errors"] = errors
    order = {name: i for i, name in enumerate(ORDER)}
    sections.sort(key=lambda s: order[s.name])
    results["section_objects"] = sections
    markdown = render(results)
    results["sections"] = [s.as_json() for s in sections]
    del results["section_objects"]
    if args.merge_into:
        return merge(args, results, order)
    out_dir = OUT_DIR / "smoke" if args.smoke else OUT_DIR  # a smoke run keeps the full one
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "BENCHMARKS.md").write_text(markdown)
    if args.write:
        (ROOT / "BENCHMARKS.md").write_text(markdown)
    print(markdown)
    log(
        f"wrote {out_dir / 'results.json'} and {out_dir / 'BENCHMARKS.md'}"
        + (" and BENCHMARKS.md" if args.write else "")
        + f" in {results['seconds']:.0f} s"
    )
    failed_rows = [
        f"{s.name}: {r.get('row') or r.get('via') or r.get('provider')}"
        for s in sections
        for r in s.rows
        if r.get("non_2xx")
        or r.get("socket_errors")
        or r.get("client_errors")
        or r.get("unfinished")
        or r.get("exit_code")
    ]
    if errors or failed_rows:
        print("make bench: errors in " + "; ".join(list(errors) + failed_rows), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
