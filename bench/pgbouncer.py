"""Section 4 (PgBouncer): `pgbench -S` TPS and latency at 50/200/1,000 clients, through
PgBouncer (transaction pooling) and, where max_connections allows, straight at PostgreSQL.

On the `make up` stack pgbench runs inside koinonia-db (PostgreSQL 15's pgbench) against
127.0.0.1:6432 and :5432 as the app's database user, on pgbench tables it creates in the
app's database and drops at the end (PgBouncer only knows that database; the roles are not
changed for a benchmark). The app services are stopped during the section so the 1,000
clients have PgBouncer's max_client_conn (1,000) to themselves. SHOW POOLS is sampled every
second: the server connections PgBouncer holds are reported next to the client count.
Latency percentiles come from pgbench's per-transaction log (--log).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from bench.common import (
    APP_CONTAINERS,
    APP_PORT,
    DB_CONTAINER,
    ROOT,
    BenchError,
    Section,
    dexec,
    log,
    table,
)
from bench.http_stack import set_job_workers, wait_remote_port

# Debian's pg_wrapper: the cluster's own major version, whichever release the stack runs.
STACK_PGBENCH = "/usr/bin/pgbench"
# Rows above this sample PostgreSQL only (see sample_pools).
ADMIN_SAMPLING_MAX_CLIENTS = 500


def inventory_var(name: str) -> str:
    for line in (ROOT / "inventories/local/group_vars/all.yml").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip().strip("\"'")
    raise BenchError(f"{name} not found in inventories/local/group_vars/all.yml")


@dataclass
class Db:
    """Where pgbench and psql run, and how they reach PgBouncer and PostgreSQL."""

    where: str
    run: Callable[[list[str], float], subprocess.CompletedProcess]
    pgbench: str
    psql: str
    pgbouncer_port: int
    postgres_port: int
    user: str
    password: str
    dbname: str
    admin_user: str
    admin_password: str
    superuser_sql: Callable[[str], str]
    log_dir: str = "/tmp"  # noqa: S108 - inside the container / for pgbench logs
    notes: list[str] = field(default_factory=list)

    def sh(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], timeout)

    def env(self, password: str) -> str:
        return f"PGPASSWORD='{password}' PGCONNECT_TIMEOUT=30"

    def pools(self) -> list[dict]:
        out = self.sh(
            f"{self.env(self.admin_password)} {self.psql} -h 127.0.0.1 -p {self.pgbouncer_port} "
            f"-U {self.admin_user} -d pgbouncer --csv -c 'SHOW POOLS'",
            timeout=20,
        )
        if out.returncode != 0:
            return []
        return [
            r for r in csv.DictReader(io.StringIO(out.stdout)) if r.get("database") == self.dbname
        ]


def stack_db() -> Db:
    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return dexec(DB_CONTAINER, *argv, check=False, timeout=timeout)

    def superuser_sql(sql: str) -> str:
        return dexec(
            DB_CONTAINER, "runuser", "-u", "postgres", "--", "psql", "-d", "koinonia", "-Atc", sql
        ).stdout.strip()

    return Db(
        "koinonia-db (make up): pgbench inside the container",
        run,
        STACK_PGBENCH,
        "psql",
        6432,
        5432,
        inventory_var("koinonia_db_user"),
        inventory_var("koinonia_db_password"),
        inventory_var("koinonia_db_name"),
        "pgbouncer_admin",
        inventory_var("koinonia_pgbouncer_admin_password"),
        superuser_sql,
    )


def loopback_db(stack: ExitStack) -> Db:
    import psycopg
    from bench.loopback import TestServers

    servers = TestServers.start()
    stack.callback(servers.stop)

    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=Db.log_dir)

    def superuser_sql(sql: str) -> str:
        with psycopg.connect(servers.postgres.superuser_dsn("koinonia"), autocommit=True) as conn:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
            return "" if row is None else str(row[0])

    return Db(
        "loopback (app/tests/servers.py): PostgreSQL 15 + PgBouncer, pgbench on the host",
        run,
        "pgbench",
        "psql",
        servers.pgbouncer.port,
        servers.postgres.port,
        "koinonia",
        "koinonia-test-password",
        "koinonia",
        "koinonia",
        "koinonia-test-password",
        superuser_sql,
    )


def parse_pgbench(stdout: str, stderr: str) -> dict:
    def grab(pattern: str, cast=float):
        m = re.search(pattern, stdout)
        return cast(m.group(1)) if m else None

    return {
        "tps": grab(r"tps = ([\d.]+) \(without initial connection time\)")
        or grab(r"tps = ([\d.]+)"),
        "transactions": grab(r"number of transactions actually processed: (\d+)", int),
        "failed": grab(r"number of failed transactions: (\d+)", int) or 0,
        "latency_avg_ms": grab(r"latency average = ([\d.]+) ms"),
        "connect_ms": grab(r"initial connection time = ([\d.]+) ms"),
        "client_errors": len(
            [line for line in stderr.splitlines() if re.search(r"error|abort|FATAL", line, re.I)]
        ),
        "stderr_tail": "\n".join(stderr.strip().splitlines()[-5:]),
    }


def latencies(db: Db, prefix: str) -> dict:
    out = db.sh(f"cat {db.log_dir}/{prefix}.* 2>/dev/null; rm -f {db.log_dir}/{prefix}.*", 120)
    us = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].isdigit():
            us.append(int(parts[2]))
    if not us:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    q = statistics.quantiles(us, n=100, method="inclusive")
    return {"p50_ms": q[49] / 1000, "p95_ms": q[94] / 1000, "p99_ms": q[98] / 1000}


BACKENDS = (
    "select count(*) from pg_stat_activity where backend_type = 'client backend' "
    "and datname = current_database() and pid <> pg_backend_pid() and usename <> 'postgres'"
)


def sample_pools(db: Db, stop: threading.Event, into: list[dict], admin: bool) -> None:
    """SHOW POOLS of the database (when `admin`), with PostgreSQL's own count of its client
    backends. The admin console is a PgBouncer client too: with pgbench holding every slot
    of max_client_conn it would take one of them, so the largest row samples PostgreSQL only.
    """
    while not stop.is_set():
        try:
            backends = int(db.superuser_sql(BACKENDS))
        except Exception:  # a missed sample is not an error of the run
            backends = None
        pools = db.pools() if admin else []
        into += [pool | {"pg_backends": backends} for pool in pools] or [{"pg_backends": backends}]
        stop.wait(1)


def pgbench(db: Db, port: int, clients: int, seconds: int, label: str) -> dict:
    prefix = f"bench_pgbench_{label}_{clients}"
    threads = 2
    script = (
        f"ulimit -n {max(4096, clients * 2 + 100)} 2>/dev/null; cd {db.log_dir} && "
        f"{db.env(db.password)} {db.pgbench} -h 127.0.0.1 -p {port} -U {db.user} -S -n "
        f"-c {clients} -j {threads} -T {seconds} --log --log-prefix={prefix} {db.dbname}"
    )
    samples: list[dict] = []
    stop = threading.Event()
    sampler = None
    if port == db.pgbouncer_port:
        admin = clients <= ADMIN_SAMPLING_MAX_CLIENTS
        sampler = threading.Thread(
            target=sample_pools, args=(db, stop, samples, admin), daemon=True
        )
        sampler.start()
    out = db.sh(script, timeout=seconds + 180)
    stop.set()
    if sampler:
        sampler.join(10)
    result = {"via": label, "clients": clients, "seconds": seconds, "exit_code": out.returncode}
    result |= parse_pgbench(out.stdout, out.stderr) | latencies(db, prefix)
    if samples:

        def peak(*cols: str) -> int | None:
            pools = [s for s in samples if "database" in s]
            return max(sum(int(s.get(c) or 0) for c in cols) for s in pools) if pools else None

        result["peak_server_connections"] = peak(
            "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"
        )
        result["peak_server_active"] = peak("sv_active")
        result["peak_pg_backends"] = max((s.get("pg_backends") or 0) for s in samples)
        result["peak_clients"] = peak("cl_active", "cl_waiting")
        result["peak_clients_waiting"] = peak("cl_waiting")
        result["pool_samples"] = len(samples)
    log(
        f"pgbench -S {label} c={clients}: {result['tps']} tps, p99 {result['p99_ms']} ms, "
        f"errors {result['client_errors']}, server conns {result.get('peak_server_connections')}"
    )
    return result


def run(args, stack: ExitStack, on_stack: bool) -> Section:
    section = Section("pgbouncer", "PgBouncer: pgbench -S through PgBouncer and direct")
    if on_stack:
        db = stack_db()
        log("pgbouncer: stopping the app services on the app servers for this section")
        # Workers are put back as they were: the stack-queue drain may have stopped them
        # until the run ends.
        workers_were_on = (
            dexec(
                APP_CONTAINERS[0], "systemctl", "is-active", "koinonia-worker", check=False
            ).stdout.strip()
            == "active"
        )
        for name in APP_CONTAINERS:
            dexec(name, "systemctl", "stop", "koinonia-api", "koinonia-worker", check=False)

        def restart_apps() -> None:
            for name in APP_CONTAINERS:
                dexec(name, "systemctl", "start", "koinonia-api", check=False)
            set_job_workers(workers_were_on)
            for name in APP_CONTAINERS:  # the next section needs the API listening again
                wait_remote_port(name, APP_PORT, timeout=120)

        stack.callback(restart_apps)
        time.sleep(2)
    else:
        db = loopback_db(stack)
    section.extra["where"] = db.where
    scale = 1 if args.smoke else 10
    clients_list = [10] if args.smoke else [50, 200, 1000]
    seconds = 2 if args.smoke else args.pgbench_seconds

    max_conn = int(db.superuser_sql("show max_connections"))
    reserved = int(db.superuser_sql("show superuser_reserved_connections"))
    in_use = int(
        db.superuser_sql(
            "select count(*) from pg_stat_activity where backend_type = 'client backend'"
        )
    )
    direct_limit = max_conn - reserved - in_use - 2
    section.extra |= {"postgres_max_connections": max_conn, "pgbench_scale": scale}

    init = db.sh(
        f"{db.env(db.password)} {db.pgbench} -h 127.0.0.1 -p {db.postgres_port} -U {db.user} "
        f"-i -q -s {scale} {db.dbname}",
        timeout=600,
    )
    if init.returncode != 0:
        raise BenchError(f"pgbench -i failed: {init.stderr.strip()[-800:]}")
    stack.callback(
        db.sh,
        f"{db.env(db.password)} {db.pgbench} -h 127.0.0.1 -p {db.postgres_port} -U {db.user} "
        f"-i -I d {db.dbname}",
    )
    config = db.pools()
    section.extra["pool_before"] = config
    for clients in clients_list:
        section.rows.append(pgbench(db, db.pgbouncer_port, clients, seconds, "pgbouncer"))
        if clients <= direct_limit:
            section.rows.append(pgbench(db, db.postgres_port, clients, seconds, "direct"))
        else:
            section.rows.append(
                {
                    "via": "direct",
                    "clients": clients,
                    "skipped": f"max_connections = {max_conn} "
                    f"({reserved} reserved, {in_use} in use)",
                }
            )
    section.notes += [
        f"{db.where}; scale {scale} ({scale * 100_000:,} rows in pgbench_accounts), "
        f"-S (one primary-key SELECT per transaction), -j2, {seconds} s per row, default "
        "simple query protocol (PgBouncer transaction pooling).",
        "Errors = lines of pgbench's stderr naming an error or aborted client, plus failed "
        "transactions. Sampled each second during PgBouncer rows: clients = cl_active+"
        "cl_waiting, server conns = sv_active+sv_idle+sv_used+sv_tested+sv_login and active = "
        "sv_active from SHOW POOLS; PostgreSQL backends = pg_stat_activity's client backends "
        "of the database (PgBouncer's pool and anything else connected). The 1,000-client "
        "row fills max_client_conn, where the admin console would take a client slot: it is "
        "sampled from PostgreSQL only.",
    ]
    if on_stack:
        section.notes.append(
            "The app services (API and SAQ worker on each app server) were stopped during this "
            "section: their own pool connections would count against max_client_conn = 1,000."
        )
    return section.finish()


def markdown(section: Section) -> list[str]:
    rows = []
    for r in section.rows:
        if r.get("skipped"):
            rows.append([r["via"], r["clients"], "skipped: " + r["skipped"], *[None] * 9])
            continue
        rows.append(
            [
                r["via"],
                r["clients"],
                round(r["tps"] or 0),
                r["latency_avg_ms"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["client_errors"] + (r["failed"] or 0) + (1 if r["exit_code"] else 0),
                r.get("peak_clients"),
                r.get("peak_server_connections"),
                r.get("peak_server_active"),
                r.get("peak_pg_backends"),
            ]
        )
    return table(
        [
            "via",
            "clients",
            "TPS",
            "avg ms",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "clients seen by PgBouncer",
            "server conns (peak)",
            "active (peak)",
            "PostgreSQL backends (peak)",
        ],
        rows,
    )
