"""Fault 5: one app server cut off from Redis (an nftables drop rule inside it): its
readiness answers 503, the balancer ejects it, the others serve with no failed request
(and no failed GET even before the ejection: a 503 is tried on another server), and once
the rule is gone it comes back."""

from stackclient import wait_for

from .conftest import (
    APPS,
    DOWN_DEADLINE,
    REDIS,
    UP_DEADLINE,
    ChaosLoad,
    all_serving,
    delivery_outcome,
    messages_per_key,
    peer_state,
    print_phases,
    ready_status,
    request_outcome,
)

PARTITION = [
    "nft add table inet chaos",
    "nft add chain inet chaos out '{ type filter hook output priority 0; }'",
]


def test_5_app_server_cut_off_from_redis_is_ejected_and_the_others_fail_nothing(
    lb, apps, db, redis, owner_token, group_id, healthy_stack
):
    victim = APPS[2]
    host = apps[victim]
    redis_ip = host.check_output("getent ahostsv4 %s", REDIS).split()[0]
    phases = {}
    with ChaosLoad(owner_token, group_id) as load:
        wait_for(lambda: load.report.sent >= 40, 120, what="load running")
        phases["partition"] = load.settle()
        try:
            for command in [*PARTITION, f"nft add rule inet chaos out ip daddr {redis_ip} drop"]:
                host.check_output(command)
            print(host.check_output("nft list table inet chaos"))
            wait_for(lambda: ready_status(host) == 503, 60, what=f"{victim} readiness 503")
            wait_for(lambda: peer_state(lb, victim) == "down", DOWN_DEADLINE, what=f"{victim} down")
            phases["ejected"] = load.settle()
            resumed = load.report.sent
            wait_for(lambda: load.report.sent >= resumed + 80, 180, what="load while ejected")
            phases["heal"] = load.snapshot()
            assert peer_state(lb, victim) == "down"
        finally:
            host.run("nft delete table inet chaos")
        wait_for(lambda: ready_status(host) == 200, 120, what=f"{victim} ready again")
        wait_for(lambda: peer_state(lb, victim) == "up", UP_DEADLINE, what=f"{victim} up")
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
        phases["back"] = load.settle()
        resumed = load.report.sent
        wait_for(lambda: load.report.sent >= resumed + 40, 120, what="load after healing")
    phases["end"] = load.snapshot()

    print_phases("fault 5", phases)
    retried = load.retry_failed_posts()
    outcome = request_outcome(db, load, retried)
    print(f"fault 5 (Redis partition of {victim}): {outcome}")
    message_ids = [
        m for ids in messages_per_key(db, load.report.idempotency_keys).values() for m in ids
    ]
    sends, _rows = delivery_outcome(db, redis, message_ids)
    print(f"fault 5 (Redis partition of {victim}): {sends}")

    # No GET fails at any point, the partition's first seconds included (before the
    # balancer ejects the victim): one that meets its 503 is tried on another app server
    # (proxy_next_upstream http_503).
    failed_gets = [f for f in load.report.failures if " GET " in f]
    assert failed_gets == [], failed_gets
    # While it is ejected, and after it is back, nothing fails.
    assert phases["heal"][1] == phases["ejected"][1], load.report.failures
    assert phases["end"][1] == phases["back"][1], load.report.failures
    assert all(200 <= status < 300 for _key, status in retried), retried
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert sends.lost == 0 and sends.duplicated == 0 and sends.unknown == 0, sends
