"""Backup and restore (playbooks/backup.yml, restore.yml): a checksummed pg_dump, a drill
restore with the same rows, the live database protected, a damaged dump refused."""

from conftest import psql, run_playbook
from stackclient import wait_for

BACKUP_DIR = "/var/backups/koinonia/postgresql"


def table_fingerprints(db, database: str) -> dict[str, tuple[int, str]]:
    """{table: (row count, md5 of its rows in a stable order)} of the public schema."""
    tables = psql(
        db,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
        database,
    ).split()
    out = {}
    for table in tables:
        # The table names come from pg_tables, not from input.
        sql = (
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-')"  # noqa: S608
            f' FROM "{table}" t'
        )
        row = psql(db, sql, database)
        count, digest = row.split()
        out[table] = (int(count), digest)
    return out


def quiet(db) -> bool:
    """No delivery waiting for a worker or being sent: the tables stop changing."""
    sql = "SELECT count(*) FROM delivery WHERE status IN ('queued', 'sending')"
    return psql(db, sql) == "0"


def newest_dump(db) -> str:
    return db.check_output(f"ls -1 {BACKUP_DIR}/koinonia-*.dump | sort | tail -n 1")


def test_4_backup_writes_a_private_dump_with_a_matching_checksum(db):
    run = run_playbook("backup.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    dump = newest_dump(db)
    directory = db.file(BACKUP_DIR)
    assert directory.user == "postgres" and directory.mode == 0o700
    assert db.file(dump).user == "postgres"
    assert db.file(dump).mode & 0o007 == 0
    check = db.run(f"cd {BACKUP_DIR} && sha256sum -c {dump.rsplit('/', 1)[1]}.sha256")
    assert check.rc == 0 and ": OK" in check.stdout, check.stdout + check.stderr
    assert not db.run(f"ls {BACKUP_DIR}/*.partial").stdout


def test_4_restore_into_a_drill_database_gives_the_same_rows(db):
    wait_for(lambda: quiet(db), 120, what="no delivery queued")
    assert run_playbook("backup.yml").returncode == 0
    live = table_fingerprints(db, "koinonia")
    run = run_playbook("restore.yml", "-e", "restore_to=koinonia_drill")
    assert run.returncode == 0, run.stdout[-3000:]
    drill = table_fingerprints(db, "koinonia_drill")
    assert live["member"][0] > 0 and live["message"][0] > 0, live
    assert drill == live


def test_4_restore_into_the_live_database_is_refused_without_confirmation(db):
    before = table_fingerprints(db, "koinonia")
    run = run_playbook("restore.yml")
    output = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert "REFUSED: restoring into koinonia replaces the live data" in output, output[-3000:]
    assert "-e confirm=koinonia" in output
    assert table_fingerprints(db, "koinonia") == before


def test_4_a_damaged_dump_is_refused(db):
    dump = newest_dump(db)
    damaged = dump.replace(".dump", "-damaged.dump")
    db.check_output(
        f"cp -p {dump} {damaged} && cp -p {dump}.sha256 {damaged}.sha256 && printf 'x' >> {damaged}"
    )
    try:
        run = run_playbook(
            "restore.yml",
            "-e",
            f"restore_file={damaged}",
            "-e",
            "restore_to=koinonia_drill_damaged",
        )
        output = " ".join(run.stdout.split())
        assert run.returncode != 0
        assert "does not match its recorded SHA-256" in output, output[-3000:]
        exists = psql(
            db, "SELECT count(*) FROM pg_database WHERE datname = 'koinonia_drill_damaged'"
        )
        assert exists == "0"
    finally:
        db.run(f"rm -f {damaged} {damaged}.sha256")
