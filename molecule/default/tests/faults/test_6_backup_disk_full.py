"""Fault 6: the database host's backup directory is full (a 32 KiB tmpfs over it):
playbooks/backup.yml fails loudly, leaves no partial or truncated dump behind, and
PostgreSQL keeps serving (the API reads and writes)."""

import uuid

from .conftest import Outcome, https, psql, run_playbook

BACKUP_DIR = "/var/backups/koinonia/postgresql"


def test_6_backup_on_a_full_disk_fails_loudly_leaves_no_dump_and_the_database_serves(
    db, owner_token, healthy_stack
):
    # Bigger than the tmpfs: after the earlier tests the database holds thousands of rows.
    size = int(psql(db, "SELECT pg_database_size('koinonia')"))
    print(f"database size {size} bytes")
    db.check_output("install -d -o postgres -g postgres -m 0700 %s", BACKUP_DIR)
    db.check_output(
        "mount -t tmpfs -o size=32k,mode=0700,uid=$(id -u postgres),gid=$(id -g postgres) "
        "chaos-full %s",
        BACKUP_DIR,
    )
    try:
        assert db.run("findmnt -n -o SOURCE %s", BACKUP_DIR).stdout.strip() == "chaos-full"
        run = run_playbook("backup.yml")
        left = db.check_output("ls -la %s", BACKUP_DIR)
        print(left)
        files = db.check_output("find %s -mindepth 1 -printf '%%f\\n'", BACKUP_DIR).split()

        # The database serves while the backup fails: a read and a write through the API.
        name = f"Chaos disk full {uuid.uuid4().hex[:8]}"
        write = https("POST", "/api/groups", {"name": name}, token=owner_token)
        read = https("GET", "/api/members?limit=5", token=owner_token)
        stored = int(psql(db, f"SELECT count(*) FROM member_group WHERE name = '{name}'"))  # noqa: S608
        requests = Outcome(
            "requests during the failed backup",
            sent=2,
            received=sum(1 for r in (write, read) if 200 <= r.status < 300),
            lost=int(stored == 0),
            duplicated=max(0, stored - 1),
        )
        print(f"fault 6 (backup dir full): {requests}")
        assert write.status == 201, write
        assert read.status == 200, read
        assert stored == 1, stored
    finally:
        db.run("umount %s", BACKUP_DIR)
    underneath = db.check_output("find %s -mindepth 1 -printf '%%f\\n'", BACKUP_DIR).split()
    print(
        f"fault 6 (backup dir full): backup.yml rc {run.returncode}; files left on the full "
        f"disk: {files}; under the mount point: {underneath}"
    )

    # run_playbook merges stderr into stdout (Ansible reports failures on either).
    output = run.stdout
    assert run.returncode != 0
    assert "BACKUP FAILED" in output, output[-3000:]
    assert "No space left on device" in output, output[-3000:]
    assert not [f for f in files if f.endswith((".partial", ".dump", ".sha256"))], files
    assert not [f for f in underneath if f.endswith(".partial")], underneath
    assert db.run("findmnt -n %s", BACKUP_DIR).rc != 0  # unmounted
