"""pgBackRest: WAL archived to the repository on hd-witness, a backup timer's run, a
point-in-time recovery drill into a new cluster, and an archive failure made and seen."""

import json
import os
import pathlib
import shlex
import subprocess
import time
import uuid

from conftest import get_host, psql, wait_for, wait_healthy
from debian import postgresql_major

testinfra_hosts = ["hd-witness"]

STANZA = "koinonia"
REPO_HOST = "hd-witness"
TEXTFILE = "/var/lib/prometheus/node-exporter/pgbackrest.prom"
RESTORE_PATH = "/var/lib/postgresql/pitr-restore"
RESTORE_PORT = 5439
ROOT = pathlib.Path(__file__).resolve().parents[3]
PLAYBOOK = ROOT / "playbooks" / "restore.yml"


def as_postgres(command):
    return f"runuser -u postgres -- {command}"


def drill_sql(statement, run):
    """SQL of the drill's rows of one test run (run ids are made by the tests)."""
    return statement.format(run=f"'{run}'")


def repo_info(repo):
    result = repo.run(as_postgres(f"pgbackrest --stanza={STANZA} --output=json info"))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)[0]


def full_backups(repo):
    return [b for b in repo_info(repo).get("backup", []) if b["type"] == "full"]


def ensure_full_backup(repo):
    if not full_backups(repo):
        repo.run_test("systemctl start pgbackrest-backup-full.service")


def metrics(node):
    """The textfile the metrics timer writes, refreshed now: {'name{labels}': value}."""
    node.run_test("systemctl start pgbackrest-metrics.service")
    lines = node.file(TEXTFILE).content_string.splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line}


def archiver(leader):
    """(archived_count, failed_count) of the leader's pg_stat_archiver."""
    out = leader.check_output(
        as_postgres(
            "psql -XAtq -F ' ' -c 'SELECT archived_count, failed_count FROM pg_stat_archiver'"
        )
    )
    archived, failed = out.split()
    return int(archived), int(failed)


def test_stanza_exists_and_the_leaders_wal_reaches_the_encrypted_repository(host, cfg):
    leader, _replica = wait_healthy(host)
    node = get_host(leader)
    # `check` switches to a new WAL segment and waits until the repository holds it.
    result = node.run(as_postgres(f"pgbackrest --stanza={STANZA} check"))
    assert result.rc == 0, result.stdout + result.stderr
    assert archiver(node)[0] > 0
    info = repo_info(host)
    # 0: ok; 2: "no valid backups" (the stanza exists, the backup test takes the first one).
    assert info["status"]["code"] in (0, 2), info["status"]
    assert [repo["cipher"] for repo in info["repo"]] == ["aes-256-cbc"]
    assert info["archive"][0]["max"]
    # Encrypted on disk: the repository's files are OpenSSL-salted ciphertext, not text.
    backup_info = f"/var/lib/pgbackrest/backup/{STANZA}/backup.info"
    assert host.check_output(f"head -c 8 {backup_info}") == "Salted__"
    # The passphrase is only on the repository host, in a file no other user reads.
    passphrase = cfg["pgbackrest_repo_cipher_pass"]
    config = host.file("/etc/pgbackrest.conf")
    assert (config.user, config.group, config.mode) == ("root", "postgres", 0o640)
    assert passphrase in config.content_string
    assert passphrase not in node.file("/etc/pgbackrest.conf").content_string
    assert passphrase not in host.run("ps -eo args").stdout


def test_backup_timer_service_takes_a_full_backup_seen_in_info_and_metrics(host):
    wait_healthy(host)
    assert host.service("pgbackrest-backup-full.timer").is_enabled
    assert host.run("systemctl is-active pgbackrest-backup-full.timer").stdout.strip() == "active"
    assert host.run("systemctl is-active pgbackrest-backup-diff.timer").stdout.strip() == "active"
    before = [b["label"] for b in full_backups(host)]
    # What the timer starts, started now (oneshot: returns when the backup is done).
    host.run_test("systemctl start pgbackrest-backup-full.service")
    after = full_backups(host)
    new = [b for b in after if b["label"] not in before]
    assert len(new) == 1, after
    stop = new[0]["timestamp"]["stop"]
    series = f'pgbackrest_backup_last_completion_timestamp_seconds{{stanza="{STANZA}",type="full"}}'
    assert metrics(host)[series] == stop
    # A differential on top of it, from the other timer's service.
    host.run_test("systemctl start pgbackrest-backup-diff.service")
    diffs = [b for b in repo_info(host)["backup"] if b["type"] == "diff"]
    assert diffs and diffs[-1]["reference"][0] == new[0]["label"]


def test_pitr_drill_restores_row_a_and_not_row_b_into_a_new_cluster(host, cfg):
    leader, replica = wait_healthy(host)
    ensure_full_backup(host)
    run = uuid.uuid4().hex[:8]
    host.run_test(
        psql(
            cfg,
            "CREATE TABLE IF NOT EXISTS pitr_drill (run text, label text, at timestamptz DEFAULT now())",
        )
    )
    host.run_test(
        psql(cfg, drill_sql("INSERT INTO pitr_drill (run, label) VALUES ({run}, 'A')", run))
    )
    time.sleep(1)
    target = host.check_output(psql(cfg, "SELECT clock_timestamp()"))
    time.sleep(1)
    host.run_test(
        psql(cfg, drill_sql("INSERT INTO pitr_drill (run, label) VALUES ({run}, 'B')", run))
    )
    # B's commit must be in the archive, or recovery could not know it has passed the target.
    leader_node = get_host(leader)
    result = leader_node.run(as_postgres(f"pgbackrest --stanza={STANZA} check"))
    assert result.rc == 0, result.stdout + result.stderr

    playbook = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(PLAYBOOK),
            "-e",
            json.dumps({"restore_target_time": target, "restore_host": replica}),
        ],
        # The collection's roles, however the tests were started.
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert playbook.returncode == 0, playbook.stdout[-3000:] + playbook.stderr[-2000:]

    restored = get_host(replica)
    try:
        select_rows = drill_sql(
            "SELECT label FROM pitr_drill WHERE run = {run} ORDER BY label", run
        )
        database = cfg["koinonia_db_name"]
        rows = restored.check_output(
            as_postgres(f"psql -XAtq -p {RESTORE_PORT} -d {database} -c {shlex.quote(select_rows)}")
        )
        assert rows.split() == ["A"]
        # The new cluster is promoted, on its own port; the live cluster still has both rows
        # and the same leader.
        assert (
            restored.check_output(
                as_postgres(f"psql -XAtq -p {RESTORE_PORT} -c 'SELECT pg_is_in_recovery()'")
            )
            == "f"
        )
        live = host.check_output(
            psql(
                cfg,
                drill_sql(
                    "SELECT string_agg(label, ',' ORDER BY label) FROM pitr_drill WHERE run = {run}",
                    run,
                ),
            )
        )
        assert live == "A,B"
        assert wait_healthy(host) == (leader, replica)
    finally:
        restored.run(
            as_postgres(
                f"/usr/lib/postgresql/{postgresql_major(restored)}/bin/pg_ctl"
                f" -D {RESTORE_PATH} -m fast -w stop"
            )
        )


def test_archive_failure_with_the_repository_server_stopped_is_seen_in_the_metric(host, cfg):
    leader, _replica = wait_healthy(host)
    node = get_host(leader)
    archived_before, failed_before = archiver(node)
    host.run_test("systemctl stop pgbackrest.service")
    try:
        # A row, then a segment switch: the segment must go to the archive and cannot.
        host.run_test(
            psql(cfg, "CREATE TABLE IF NOT EXISTS archive_probe (at timestamptz DEFAULT now())")
        )
        host.run_test(psql(cfg, "INSERT INTO archive_probe DEFAULT VALUES"))
        node.run_test(as_postgres("psql -XAtq -c 'SELECT pg_switch_wal()'"))
        wait_for(
            "pg_stat_archiver's failed_count rises",
            lambda: archiver(node)[1] > failed_before,
            120,
            2,
        )
        bad = metrics(node)
        # What PgBackRestArchivingFailing reads: the primary's last failure after its last success.
        assert bad["pgbackrest_archiver_primary"] == 1
        assert bad["pgbackrest_archiver_failed_total"] > failed_before
        assert (
            bad["pgbackrest_archiver_last_failed_timestamp_seconds"]
            > bad["pgbackrest_archiver_last_archived_timestamp_seconds"]
        )
        failed_after = int(bad["pgbackrest_archiver_failed_total"])
        print(f"\narchive failure: failed_count {failed_before} -> {failed_after}")
    finally:
        host.run_test("systemctl start pgbackrest.service")
    # With the server back, PostgreSQL retries the segment and the alert's condition clears.
    wait_for("archiving resumes", lambda: archiver(node)[0] > archived_before, 120, 2)
    good = metrics(node)
    assert (
        good["pgbackrest_archiver_last_archived_timestamp_seconds"]
        > good["pgbackrest_archiver_last_failed_timestamp_seconds"]
    )
