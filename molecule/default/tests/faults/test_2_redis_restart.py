"""Fault 2: Redis restarts (AOF on) with 5,000 deliveries queued and no worker running:
the queue survives, and once the workers are back every delivery is sent exactly once."""

from stackclient import wait_for

from .conftest import (
    APPS,
    CFG,
    bulk_group,
    delivery_outcome,
    post_messages,
    queued_count,
    redis_cli,
    wait_ready_everywhere,
)

MEMBERS, MESSAGES = 1000, 5
QUEUED = "saq:koinonia-sms:queued"  # SAQ's list of waiting job ids (queue koinonia-sms)
CHUNK = 100  # deliveries per send job (app_sms_chunk_size's default)


def test_2_redis_restart_keeps_5000_queued_deliveries_and_sends_each_once(
    apps, db, redis, owner_token, healthy_stack
):
    gid, tag = bulk_group(db, owner_token, MEMBERS)
    for name in APPS:
        apps[name].check_output("systemctl stop koinonia-worker")
    try:
        message_ids = post_messages(owner_token, gid, tag, MESSAGES)
        assert queued_count(db, message_ids) == MEMBERS * MESSAGES
        waiting_before = int(redis_cli(redis, "LLEN", QUEUED))
        assert waiting_before >= MESSAGES * -(-MEMBERS // CHUNK), waiting_before
        pid_before = redis.check_output("systemctl show -p MainPID --value redis-server")
        redis.check_output("systemctl restart redis-server")
        pid_after = redis.check_output("systemctl show -p MainPID --value redis-server")
        assert pid_after not in ("0", pid_before), (pid_before, pid_after)
        wait_for(
            lambda: (
                redis.run(
                    "REDISCLI_AUTH=%s redis-cli --no-auth-warning --user ops PING",
                    CFG["koinonia_redis_ops_password"],
                ).stdout.strip()
                == "PONG"
            ),
            60,
            what="Redis answering",
        )
        waiting_after = int(redis_cli(redis, "LLEN", QUEUED))
        print(
            f"fault 2: {waiting_before} jobs waiting before the Redis restart, "
            f"{waiting_after} after"
        )
        assert waiting_after == waiting_before
    finally:
        for name in APPS:
            apps[name].check_output("systemctl start koinonia-worker")
    wait_ready_everywhere(apps)
    sends, _rows = delivery_outcome(db, redis, message_ids)
    print(f"fault 2 (Redis restart, {MEMBERS * MESSAGES} queued): {sends}")
    assert sends.sent == MEMBERS * MESSAGES, sends
    assert sends.lost == 0 and sends.duplicated == 0 and sends.unknown == 0, sends
