"""Checklist phase 2.1 on the whole stack: the app's queries go through PgBouncer in
transaction pooling, and where PgBouncer keeps prepared statements (1.24, Debian 13) the app
prepares each statement once per connection instead of on every query."""

from debian import debian_major
from stackops import docker_host

from .conftest import APPS, CFG, DB, https

# The app's setting on each release (roles/app: app_db_statement_cache_size auto).
STATEMENT_CACHE = {"12": "0", "13": "100"}


def pgbouncer_stats(db) -> dict[str, str]:
    """SHOW STATS of the application database, column -> value, as the admin user."""
    out = db.check_output(
        "PGPASSWORD=%s psql -h 127.0.0.1 -p 6432 -U pgbouncer_admin -XA -F '|' -c 'SHOW STATS' pgbouncer",
        CFG["koinonia_pgbouncer_admin_password"],
    )
    header, *rows = out.splitlines()
    columns = header.split("|")
    for row in rows:
        values = dict(zip(columns, row.split("|"), strict=False))
        if values.get("database") == CFG["koinonia_db_name"]:
            return values
    raise AssertionError(f"no SHOW STATS row for {CFG['koinonia_db_name']}: {out}")


def test_2_1_the_app_caches_prepared_statements_where_pgbouncer_keeps_them(owner_token):
    db = docker_host(DB)
    release = debian_major(db)
    for app in APPS:
        env = docker_host(app).check_output(
            "grep ^KOINONIA_DB_STATEMENT_CACHE_SIZE= /etc/koinonia/koinonia.env"
        )
        assert env == f'KOINONIA_DB_STATEMENT_CACHE_SIZE="{STATEMENT_CACHE[release]}"'
    before = pgbouncer_stats(db)
    for _ in range(30):
        # A read that always reaches the database (the member lists are cached in Redis), under
        # the general API rate limit (the /api/auth/ one allows 10 a second).
        assert https("GET", "/api/staff", token=owner_token).status == 200
    after = pgbouncer_stats(db)
    if release == "12":
        # PgBouncer 1.18 tracks no prepared statements: nothing to count, the cache is off.
        assert "total_bind_count" not in after
        return
    binds = int(after["total_bind_count"]) - int(before["total_bind_count"])
    parses = int(after["total_client_parse_count"]) - int(before["total_client_parse_count"])
    # Named statements only: with the cache off, asyncpg's unnamed statements count neither.
    assert binds >= 30, after
    # Each statement is parsed once per client connection, then bound on every query.
    assert parses < binds / 2, (parses, binds)
