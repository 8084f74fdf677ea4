"""TLS on the data tier, from the client host (where the app servers will be).

App servers to PgBouncer (pgbouncer_client_tls_sslmode: require), PgBouncer to PostgreSQL
(pgbouncer_server_tls_sslmode: verify-ca against Debian's snakeoil certificate) and app
servers to Redis (redis_tls_port 6380). The certificates are the scenario's throw-away test
CA's (../resources/tls.yml, shared with the app scenario); converge.yml puts that CA and a CA
that signed nothing in /root on the client.
"""

import asyncio
import base64
import os
import pathlib
import shlex

import pytest
from conftest import other_host, with_env
from redis.exceptions import ConnectionError as RedisConnectionError

from koinonia.services.queue import create_queue
from koinonia.settings import Settings
from koinonia.stores.client import create_redis

testinfra_hosts = ["data-client"]

PGBOUNCER = "data-db"
REDIS = "data-redis"
REDIS_TLS_PORT = 6380
CA = "/root/ca.pem"
WRONG_CA = "/root/wrong-ca.pem"


def psql(conninfo, password, *sql, tuples_only=True):
    commands = " ".join(f"-c {shlex.quote(s)}" for s in sql)
    flags = "-X -w -A" + (" -t" if tuples_only else "")
    return with_env(f"psql {flags} {shlex.quote(conninfo)} {commands}", PGPASSWORD=password)


def conninfo(user, database, sslmode, **params):
    params = {"host": PGBOUNCER, "port": 6432, "user": user, "dbname": database, **params}
    params["sslmode"] = sslmode
    return " ".join(f"{key}={value}" for key, value in params.items())


def app_conninfo(cfg, sslmode, **params):
    return conninfo(cfg["koinonia_db_user"], cfg["koinonia_db_name"], sslmode, **params)


def console_rows(host, cfg, command):
    """Rows of an admin-console SHOW command as dicts, read over TLS."""
    result = host.run(
        psql(
            conninfo(cfg["koinonia_pgbouncer_admin_user"], "pgbouncer", "require"),
            cfg["koinonia_pgbouncer_admin_password"],
            command,
            tuples_only=False,
        )
    )
    assert result.rc == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "|" in line]
    header = lines[0].split("|")
    return [dict(zip(header, line.split("|"), strict=True)) for line in lines[1:]]


# --- clients -> PgBouncer ---------------------------------------------------------------


def test_pgbouncer_refuses_a_client_without_tls(host, cfg):
    result = host.run(psql(app_conninfo(cfg, "disable"), cfg["koinonia_db_password"], "SELECT 1"))
    assert result.rc != 0
    assert "SSL required" in result.stderr, result.stderr


def test_pgbouncer_client_with_sslmode_require_is_served_over_tls(host, cfg):
    result = host.run(
        psql(app_conninfo(cfg, "require"), cfg["koinonia_db_password"], "SELECT 1", r"\conninfo")
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.startswith("1\n")
    assert "SSL connection (protocol: TLSv1.3" in result.stdout, result.stdout


def test_pgbouncer_show_clients_lists_the_application_client_with_tls(host, cfg):
    """An application connection (held open while SHOW CLIENTS runs) is a TLS client."""
    name = "tls-probe"
    sleeper = psql(
        app_conninfo(cfg, "require", application_name=name),
        cfg["koinonia_db_password"],
        "SELECT pg_sleep(5)",
    )
    host.run(f"nohup sh -c {shlex.quote(sleeper)} >/dev/null 2>&1 &")
    probes = []
    for _ in range(30):  # bounded wait for the background client to log in
        probes = [
            c for c in console_rows(host, cfg, "SHOW CLIENTS") if c["application_name"] == name
        ]
        if probes:
            break
        host.run("sleep 0.1")
    assert probes, "the probe client never appeared in SHOW CLIENTS"
    assert probes[0]["user"] == cfg["koinonia_db_user"]
    assert probes[0]["tls"].startswith("TLSv1.3/"), probes[0]
    # The console connection of this very check came over TLS too.
    admins = [
        c
        for c in console_rows(host, cfg, "SHOW CLIENTS")
        if c["user"] == cfg["koinonia_pgbouncer_admin_user"]
    ]
    assert admins and all(c["tls"].startswith("TLSv1.") for c in admins), admins


def test_pgbouncer_certificate_verifies_against_the_test_ca(host, cfg):
    for sslmode in ("verify-ca", "verify-full"):  # verify-full: the name data-db is in the cert
        result = host.run(
            psql(
                app_conninfo(cfg, sslmode, sslrootcert=CA),
                cfg["koinonia_db_password"],
                "SELECT 1",
            )
        )
        assert result.rc == 0, f"{sslmode}: {result.stderr}"
        assert result.stdout.strip() == "1"


def test_pgbouncer_certificate_is_refused_with_another_ca(host, cfg):
    result = host.run(
        psql(
            app_conninfo(cfg, "verify-ca", sslrootcert=WRONG_CA),
            cfg["koinonia_db_password"],
            "SELECT 1",
        )
    )
    assert result.rc != 0
    assert "certificate verify failed" in result.stderr, result.stderr


def test_pgbouncer_tls_files_and_settings(cfg):
    db = other_host(PGBOUNCER)
    key = db.file("/etc/pgbouncer/client-tls.key")
    assert (key.user, key.group, key.mode) == ("pgbouncer", "pgbouncer", 0o600)
    assert "PRIVATE KEY" in key.content_string
    cert = db.file("/etc/pgbouncer/client-tls.crt")
    assert cert.user == "pgbouncer" and cert.contains("BEGIN CERTIFICATE")
    ini = db.file("/etc/pgbouncer/pgbouncer.ini")
    assert ini.contains("^client_tls_sslmode = require$")
    assert ini.contains("^server_tls_sslmode = verify-ca$")
    assert ini.contains("^server_tls_ca_file = /etc/pgbouncer/server-tls-ca.crt$")


# --- PgBouncer -> PostgreSQL ------------------------------------------------------------


def test_pgbouncer_server_connections_use_tls(host, cfg):
    """PostgreSQL's own view (pg_stat_ssl) of PgBouncer's backends, and PgBouncer's."""
    result = host.run(psql(app_conninfo(cfg, "require"), cfg["koinonia_db_password"], "SELECT 1"))
    assert result.rc == 0, result.stderr  # so at least one server connection exists

    query = (
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"  # noqa: S608 (test constants)
        f" WHERE a.usename = '{cfg['koinonia_db_user']}' AND a.client_addr = '127.0.0.1'"
    )
    backends = other_host(PGBOUNCER).run("runuser -u postgres -- psql -XAtc %s", query)
    assert backends.rc == 0, backends.stderr
    rows = [line.split("|") for line in backends.stdout.split()]
    assert rows, "PostgreSQL shows no backend of PgBouncer"
    assert all(ssl == "t" and version.startswith("TLSv1.") for ssl, version in rows), rows

    servers = [
        s for s in console_rows(host, cfg, "SHOW SERVERS") if s["user"] == cfg["koinonia_db_user"]
    ]
    assert servers and all(s["tls"].startswith("TLSv1.") for s in servers), servers
    config = {row["key"]: row["value"] for row in console_rows(host, cfg, "SHOW CONFIG")}
    assert config["server_tls_sslmode"] == "verify-ca"
    assert config["client_tls_sslmode"] == "require"


def test_pgbouncer_refuses_a_postgresql_certificate_its_ca_did_not_sign(host, cfg):
    """verify-ca is a real check: with another CA in server_tls_ca_file (a reload applies
    it) PgBouncer cannot log in to PostgreSQL; with the right one back it can again."""
    db = other_host(PGBOUNCER)
    ca_file = "/etc/pgbouncer/server-tls-ca.crt"
    saved = "/root/server-tls-ca.crt.saved"
    wrong = base64.b64encode(host.file(WRONG_CA).content).decode()
    admin = conninfo(cfg["koinonia_pgbouncer_admin_user"], "pgbouncer", "require")
    log_lines = int(db.check_output("wc -l < /var/log/pgbouncer/pgbouncer.log"))
    db.run_expect([0], f"cp -p {ca_file} {saved}")
    try:
        db.run_expect([0], f"echo {wrong} | base64 -d > {ca_file} && systemctl reload pgbouncer")
        # Close the pooled server connections so the next client needs a new one.
        reconnect = host.run(
            psql(admin, cfg["koinonia_pgbouncer_admin_password"], "RECONNECT koinonia")
        )
        assert reconnect.rc == 0, reconnect.stderr
        refused = host.run(
            psql(
                app_conninfo(cfg, "require", connect_timeout=5),
                cfg["koinonia_db_password"],
                "SELECT 1",
            )
        )
        assert refused.rc != 0, refused.stdout
        log = db.check_output(f"tail -n +{log_lines + 1} /var/log/pgbouncer/pgbouncer.log")
        assert "certificate verify failed" in log, log[-2000:]
    finally:
        db.run_expect([0], f"mv {saved} {ca_file} && systemctl reload pgbouncer")
    served = host.run(
        psql(
            app_conninfo(cfg, "require", connect_timeout=30),
            cfg["koinonia_db_password"],
            "SELECT 1",
        )
    )
    assert served.rc == 0 and served.stdout.strip() == "1", served.stderr


# --- app servers -> Redis ---------------------------------------------------------------


def redis_cli(*args, user=None, password=None, port=REDIS_TLS_PORT, tls_ca=CA):
    command = f"redis-cli --no-auth-warning -h {REDIS} -p {port} "
    command += f"--tls --cacert {tls_ca} " if tls_ca else ""
    command += f"--user {user} " if user else ""
    command += " ".join(args)
    return with_env(command, REDISCLI_AUTH=password) if password else command


def test_redis_tls_port_serves_the_app_user(host, cfg):
    password = cfg["koinonia_redis_app_password"]
    ping = host.run(redis_cli("PING", user="koinonia", password=password))
    assert ping.stdout.strip() == "PONG", ping.stdout + ping.stderr
    key = "tls-check"
    assert host.run(redis_cli("SET", key, "over-tls", user="koinonia", password=password)).rc == 0
    # The same data as the plain port: one server, two ways in.
    plain = host.run(
        redis_cli("GET", key, user="koinonia", password=password, port=6379, tls_ca=None)
    )
    assert plain.stdout.strip() == "over-tls"
    host.run(redis_cli("DEL", key, user="koinonia", password=password))


def test_redis_tls_port_still_requires_a_login(host):
    result = host.run(redis_cli("PING"))
    assert "NOAUTH" in result.stdout + result.stderr
    assert "PONG" not in result.stdout


def test_redis_tls_certificate_is_refused_with_another_ca(host, cfg):
    result = host.run(
        redis_cli(
            "PING", user="koinonia", password=cfg["koinonia_redis_app_password"], tls_ca=WRONG_CA
        )
    )
    assert "PONG" not in result.stdout
    assert "certificate verify failed" in result.stdout + result.stderr


def test_redis_plain_text_client_on_the_tls_port_fails(host, cfg):
    result = host.run(
        redis_cli("PING", user="koinonia", password=cfg["koinonia_redis_app_password"], tls_ca=None)
    )
    assert result.rc != 0
    assert "PONG" not in result.stdout
    assert "Connection reset by peer" in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )


def test_redis_tls_port_bound_only_where_configured():
    redis = other_host(REDIS)
    ipv4 = {a for a in redis.interface("eth0").addresses if ":" not in a}
    listening = redis.run(f"ss -Hltn 'sport = :{REDIS_TLS_PORT}'").stdout.splitlines()
    local_addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening if line.strip()}
    assert local_addresses == {"127.0.0.1"} | ipv4


def test_redis_tls_key_is_private():
    redis = other_host(REDIS)
    directory = redis.file("/etc/redis/tls")
    assert (directory.user, directory.mode) == ("redis", 0o750)
    key = redis.file("/etc/redis/tls/redis.key")
    assert (key.user, key.group, key.mode) == ("redis", "redis", 0o600)
    conf = redis.file("/etc/redis/redis.conf")
    assert conf.contains(f"^tls-port {REDIS_TLS_PORT}$")
    assert conf.contains("^tls-auth-clients no$")


# --- the service's own Redis clients ----------------------------------------------------


def test_app_redis_clients_verify_redis_with_the_ca_given_in_the_url(cfg):
    """koinonia's redis-py client and its SAQ queue's client, built from KOINONIA_REDIS_URL
    exactly as on an app server: rediss:// with ?ssl_ca_certs= (redis-py passes it to its
    SSL connections). Runs on the controller, against data-redis's address (in its cert)."""
    address = next(a for a in other_host(REDIS).interface("eth0").addresses if ":" not in a)
    ca = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "tls" / "ca.pem"
    assert ca.is_file()
    password = cfg["koinonia_redis_app_password"]
    base = f"rediss://koinonia:{password}@{address}:{REDIS_TLS_PORT}/0"

    def settings(url):
        return Settings(database_url="postgres://unused/db", redis_url=url)

    async def talk(url):
        redis = create_redis(settings(url))
        queue = create_queue(settings(url))
        try:
            return await redis.ping(), await queue.redis.ping(), (await queue.info())["name"]
        finally:
            await redis.aclose()
            await queue.disconnect()

    assert asyncio.run(talk(f"{base}?ssl_ca_certs={ca}")) == (True, True, "koinonia-sms")
    # Without the CA the system's trust store is used, which does not know the test CA.
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        asyncio.run(talk(base))
