"""Redis for the job queues: authentication, the app user's limits, persistence, binding."""

import pytest
from conftest import other_host, with_env
from debian import REDIS_MAJOR, debian_major

testinfra_hosts = ["data-client"]

REDIS = "data-redis"


def redis_cli(user, password, *args):
    command = f"redis-cli --no-auth-warning -h {REDIS} " + (f"--user {user} " if user else "")
    command += " ".join(args)
    return with_env(command, REDISCLI_AUTH=password) if password else command


def test_auth_required_unauthenticated_ping_refused(host):
    result = host.run(redis_cli(None, None, "PING"))
    assert "NOAUTH" in result.stdout + result.stderr
    assert "PONG" not in result.stdout


def test_auth_wrong_password_refused(host, cfg):
    result = host.run(redis_cli("koinonia", "not-the-password", "PING"))
    assert "WRONGPASS" in result.stdout + result.stderr


def test_app_user_can_queue_and_publish_job_updates(host, cfg):
    password = cfg["koinonia_redis_app_password"]
    assert host.run(redis_cli("koinonia", password, "PING")).stdout.strip() == "PONG"
    assert host.run(redis_cli("koinonia", password, "LPUSH", "saq:test:queued", "job")).rc == 0
    assert (
        host.run(redis_cli("koinonia", password, "LPOP", "saq:test:queued")).stdout.strip() == "job"
    )
    assert (
        host.run(redis_cli("koinonia", password, "PUBLISH", "saq:job:test", "done")).stdout.strip()
        == "0"
    )
    # WebSocket fan-out: church events travel on church:<id>:events.
    assert (
        host.run(
            redis_cli("koinonia", password, "PUBLISH", "church:42:events", "{}")
        ).stdout.strip()
        == "0"
    )
    version = f"redis_version:{REDIS_MAJOR[debian_major(other_host('data-redis'))]}."
    assert version in host.run(redis_cli("koinonia", password, "INFO", "server")).stdout


@pytest.mark.parametrize(
    "command",
    [
        "FLUSHALL",
        "FLUSHDB",
        "CONFIG GET maxmemory",
        "CONFIG SET appendonly no",
        "DEBUG SLEEP 0",
        "SHUTDOWN NOSAVE",
        "KEYS '*'",
        "ACL LIST",
        "MONITOR",
    ],
)
def test_app_user_denied_dangerous_commands(host, cfg, command):
    # What the ACL says (Redis also refuses DEBUG to everyone, before the ACL is consulted).
    dryrun = host.run(
        redis_cli("ops", cfg["koinonia_redis_ops_password"], "ACL DRYRUN koinonia", command)
    )
    assert "no permissions to run" in dryrun.stdout, dryrun.stdout + dryrun.stderr
    if not command.startswith("DEBUG"):
        result = host.run(redis_cli("koinonia", cfg["koinonia_redis_app_password"], command))
        assert "NOPERM" in result.stdout + result.stderr, result.stdout + result.stderr


def test_app_user_denied_foreign_channels(host, cfg):
    result = host.run(
        redis_cli("koinonia", cfg["koinonia_redis_app_password"], "PUBLISH", "other", "x")
    )
    assert "NOPERM" in result.stdout + result.stderr


def config_get(host, cfg, name):
    result = host.run(redis_cli("ops", cfg["koinonia_redis_ops_password"], "CONFIG", "GET", name))
    assert result.rc == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == name, result.stdout
    return lines[1]


def test_aof_persistence_on(host, cfg):
    assert config_get(host, cfg, "appendonly") == "yes"
    assert config_get(host, cfg, "appendfsync") == "everysec"
    assert other_host(REDIS).file("/var/lib/redis/appendonlydir").is_directory


def test_maxmemory_policy_noeviction(host, cfg):
    assert config_get(host, cfg, "maxmemory-policy") == "noeviction"
    assert config_get(host, cfg, "maxmemory") == str(64 * 1024 * 1024)
    assert config_get(host, cfg, "protected-mode") == "yes"


def test_bound_only_where_configured():
    redis = other_host(REDIS)
    private = redis.interface("eth0").addresses
    listening = redis.run("ss -Hltn 'sport = :6379'").stdout.split("\n")
    local_addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening if line.strip()}
    ipv4 = {a for a in private if ":" not in a}
    assert local_addresses == {"127.0.0.1"} | ipv4


def test_acl_file_keeps_only_hashes(cfg):
    acl = other_host(REDIS).file("/etc/redis/users.acl")
    assert acl.user == "redis" and acl.mode == 0o640
    content = acl.content_string
    assert "user default off" in content
    assert cfg["koinonia_redis_app_password"] not in content
    assert cfg["koinonia_redis_ops_password"] not in content
    assert "#" in content


def test_default_user_cannot_log_in_even_with_a_password(host):
    result = host.run(redis_cli("default", "any-password-at-all", "PING"))
    assert "PONG" not in result.stdout
    assert "WRONGPASS" in result.stdout + result.stderr


def test_transactions_survive_a_restart_through_the_append_only_file(host, cfg):
    """MULTI/EXEC writes (sessions, queued jobs) must come back from the AOF after a restart."""
    password = cfg["koinonia_redis_app_password"]
    key = "aof-replay-check"
    transaction = f"printf 'MULTI\\nSET {key} kept\\nEXEC\\n' | " + redis_cli("koinonia", password)
    assert "OK" in host.run(transaction).stdout
    redis_host = other_host(REDIS)
    redis_host.run_expect([0], "systemctl restart redis-server")
    try:
        value = ""
        for _ in range(50):  # bounded wait for Redis to load the AOF and listen again
            value = host.run(redis_cli("koinonia", password, "GET", key)).stdout.strip()
            if value == "kept":
                break
            host.run("sleep 0.2")
        assert value == "kept", redis_host.run("journalctl -u redis-server -n 20").stdout
    finally:
        host.run(redis_cli("koinonia", password, "DEL", key))
