"""pgBackRest on the single-node topology: the database host's WAL reaches the encrypted
repository on bk-repo, the backup timers' services take backups, the passphrase stays on the
repository host, and a point-in-time recovery drill restores into a new cluster."""

import base64
import json
import uuid

import stackops
from conftest import REPO_PATH, STANZA, as_postgres, backups, psql, repo_info
from debian import postgresql_major, postgresql_unit
from stackclient import wait_for

testinfra_hosts = ["bk-repo"]

RESTORE_PATH = "/var/lib/postgresql/pitr-restore"
RESTORE_PORT = 5439


def test_archive_mode_is_on_after_the_roles_restart_and_archive_command_is_pgbackrest(db):
    # archive_mode takes effect only at a restart: "on" means the role restarted the cluster.
    assert db.check_output(psql("SHOW archive_mode")) == "on"
    assert db.check_output(psql("SHOW archive_command")) == (
        f"pgbackrest --stanza={STANZA} archive-push %p"
    )
    conf = db.file(
        f"/etc/postgresql/{postgresql_major(db)}/main/conf.d/30-pgbackrest-archiving.conf"
    )
    assert (conf.user, conf.mode) == ("postgres", 0o644)


def test_a_forced_wal_switch_reaches_the_repository_and_check_passes(db, repo):
    db.run_test(psql("CREATE TABLE IF NOT EXISTS wal_probe (at timestamptz DEFAULT now())"))
    db.run_test(psql("INSERT INTO wal_probe DEFAULT VALUES"))
    # The segment the switch closes (it holds the row just written).
    segment = db.check_output(psql("SELECT pg_walfile_name(pg_switch_wal())"))
    archived = f"find {REPO_PATH}/archive/{STANZA} -name '{segment}-*'"
    wait_for(
        lambda: repo.run(archived).stdout.strip(),
        60,
        step=1,
        what=f"segment {segment} in the repository",
    )
    wait_for(
        lambda: db.check_output(psql("SELECT last_archived_wal FROM pg_stat_archiver")) >= segment,
        30,
        step=1,
        what="pg_stat_archiver counts it",
    )
    result = db.run(as_postgres(f"pgbackrest --stanza={STANZA} check"))
    assert result.rc == 0, result.stdout + result.stderr
    assert db.check_output(psql("SELECT failed_count FROM pg_stat_archiver")) == "0"


def test_the_full_timers_service_takes_a_backup_that_info_lists_and_diff_builds_on_it(repo):
    for backup_type in ("full", "diff"):
        assert repo.service(f"pgbackrest-backup-{backup_type}.timer").is_enabled
        assert repo.service(f"pgbackrest-backup-{backup_type}.timer").is_running
    before = {b["label"] for b in backups(repo, "full")}
    # What the timer starts, started now (oneshot: returns when the backup is done).
    repo.run_test("systemctl start pgbackrest-backup-full.service")
    new = [b for b in backups(repo, "full") if b["label"] not in before]
    assert len(new) == 1, repo_info(repo)
    assert repo_info(repo)["status"]["code"] == 0
    repo.run_test("systemctl start pgbackrest-backup-diff.service")
    diffs = backups(repo, "diff")
    assert diffs, repo_info(repo)
    assert diffs[-1]["reference"][0] == new[0]["label"]


def test_the_repository_is_encrypted_on_disk(repo):
    info = repo_info(repo)
    assert [r["cipher"] for r in info["repo"]] == ["aes-256-cbc"]
    # The repository's files are OpenSSL-salted ciphertext: its catalogue and archived WAL.
    assert repo.check_output(f"head -c 8 {REPO_PATH}/backup/{STANZA}/backup.info") == "Salted__"
    wal = repo.check_output(f"find {REPO_PATH}/archive/{STANZA} -type f -name '0*-*' -print -quit")
    assert wal, "no archived WAL segment"
    assert repo.check_output(f"head -c 8 {wal}") == "Salted__"


def test_the_passphrase_is_in_no_process_argument_during_a_backup(cfg, db, repo):
    passphrase = cfg["pgbackrest_repo_cipher_pass"]
    unit = "pgbackrest-backup-diff.service"
    # Both hosts' process lists sampled every 50 ms while the diff timer's service runs.
    db.run_test(
        "systemd-run --unit=bk-ps-sample --collect -p RuntimeMaxSec=120 "
        "sh -c 'while :; do ps -eo args; sleep 0.05; done' "
    )
    try:
        # The oneshot unit's start job lasts as long as the backup.
        sampled = repo.check_output(
            f"systemctl start --no-block {unit}; "
            "for i in $(seq 1 2400); do ps -eo args; "
            f'[ -z "$(systemctl show -p Job --value {unit})" ] && break; sleep 0.05; done'
        )
    finally:
        db.run("systemctl stop bk-ps-sample.service")
    db_sampled = db.check_output("journalctl -u bk-ps-sample.service --no-pager -o cat")
    # The repository host's samples caught the backup at work (its backup:local processes
    # get their options from it); the database host's sampler ran throughout.
    assert "--type=diff backup" in sampled
    assert db_sampled.count("pgbackrest server") >= 2
    assert passphrase not in sampled
    assert passphrase not in db_sampled
    assert repo.check_output(f"systemctl show -p Result --value {unit}") == "success"


def test_the_passphrase_is_only_in_the_repository_hosts_config_and_no_world_readable_file(
    cfg, db, repo
):
    passphrase = cfg["pgbackrest_repo_cipher_pass"]
    config = repo.file("/etc/pgbackrest.conf")
    assert (config.user, config.group, config.mode) == ("root", "postgres", 0o640)
    assert passphrase in config.content_string
    # Searched for with a pattern file, so the passphrase is in no command line (nor in the
    # journal's record of one); the file lives outside the searched directories.
    pattern = "/mnt/bk-passphrase-pattern"
    encoded = base64.b64encode(passphrase.encode()).decode()
    roots = "/etc /var /root /home /tmp /run /srv /opt /usr/local"
    for host, expected in ((repo, {"/etc/pgbackrest.conf"}), (db, set())):
        host.run_test(f"umask 077; echo {encoded} | base64 -d > {pattern}")
        try:
            found = host.run(f"grep -rlsF -f {pattern} {roots}").stdout.split()
        finally:
            host.run(f"rm -f {pattern}")
        assert set(found) == expected, (host.backend.hostname, found)
        for path in found:
            assert host.file(path).mode & 0o004 == 0, path


def test_pitr_drill_restores_row_a_not_row_b_into_a_new_cluster_and_leaves_the_live_one(
    cfg, db, repo
):
    if not backups(repo, "full"):
        repo.run_test("systemctl start pgbackrest-backup-full.service")
    database = cfg["koinonia_db_name"]
    unit = postgresql_unit(db)
    live_pid = db.check_output(f"systemctl show -p MainPID --value {unit}")
    run = uuid.uuid4().hex[:8]

    def sql(statement, port=5432):
        return psql(statement.format(run=f"'{run}'"), database=database, port=port)

    drill_rows = "SELECT string_agg(label, ',' ORDER BY label) FROM pitr_drill WHERE run = {run}"

    db.run_test(sql("CREATE TABLE IF NOT EXISTS pitr_drill (run text, label text)"))
    db.run_test(sql("INSERT INTO pitr_drill VALUES ({run}, 'A')"))
    target = db.check_output(psql("SELECT clock_timestamp()"))
    # B strictly after the target (the clock moves on before it commits).
    wait_for(
        lambda: db.check_output(psql(f"SELECT clock_timestamp() > '{target}'")) == "t",
        10,
        step=0.05,
        what="the clock passes the target",
    )
    db.run_test(sql("INSERT INTO pitr_drill VALUES ({run}, 'B')"))
    # B's commit must be in the archive, or recovery could not know it passed the target.
    result = db.run(as_postgres(f"pgbackrest --stanza={STANZA} check"))
    assert result.rc == 0, result.stdout + result.stderr

    playbook = stackops.run_playbook(
        "restore.yml", "-e", json.dumps({"restore_target_time": target}), timeout=600
    )
    try:
        assert playbook.returncode == 0, playbook.stdout[-4000:]
        assert stackops.recap(playbook.stdout)["bk-db"]["failed"] == 0
        assert db.check_output(sql(drill_rows, port=RESTORE_PORT)) == "A"
        assert db.check_output(psql("SELECT pg_is_in_recovery()", port=RESTORE_PORT)) == "f"
        # The live cluster: the same postmaster, both rows, still archiving.
        assert db.check_output(f"systemctl show -p MainPID --value {unit}") == live_pid
        assert db.check_output(sql(drill_rows)) == "A,B"
        assert db.check_output(psql("SHOW port")) == "5432"
    finally:
        db.run(
            as_postgres(
                f"/usr/lib/postgresql/{postgresql_major(db)}/bin/pg_ctl -D {RESTORE_PATH} -m fast -w stop"
            )
        )
    result = db.run(as_postgres(f"pgbackrest --stanza={STANZA} check"))
    assert result.rc == 0, result.stdout + result.stderr
