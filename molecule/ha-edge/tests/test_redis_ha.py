"""Redis with Sentinel under the app (issue 18): the set as converged, a crashed master, a
planned failover. Traffic stays inside the scenario's containers (the app on 127.0.0.1)."""

import json
import time

from conftest import (
    APP_SERVERS,
    OPERATOR,
    REDIS_NODES,
    REDIS_VARS,
    announced_master,
    copy_probe,
    docker_exec,
    info,
    ops,
    probe_lines,
    sentinel,
    start_probe,
    wait_for,
)

SERVE_AGAIN_BOUND_SECONDS = 10


def test_one_master_two_replicas_and_three_sentinels_with_quorum_2(healthy_master):
    fields = sentinel(healthy_master, "SENTINEL", "MASTER", "koinonia").splitlines()
    state = dict(zip(fields[::2], fields[1::2], strict=True))
    assert state["quorum"] == "2"
    assert state["ip"] == healthy_master  # announced by name, not by address
    assert info(healthy_master, "replication")["connected_slaves"] == "2"
    assert ops(healthy_master, "CONFIG", "GET", "min-replicas-to-write").splitlines()[1] == str(
        REDIS_VARS["redis_min_replicas_to_write"]
    )


def test_passwords_are_hashes_in_users_acl_and_the_files_holding_them_are_0640_redis():
    for node in REDIS_NODES:
        for path in (
            "/etc/redis/redis.conf",
            "/etc/redis/koinonia.conf",
            "/etc/redis/sentinel.conf",
        ):
            assert docker_exec(node, "stat", "-c", "%a %U", path) == "640 redis", (node, path)
        acl = docker_exec(node, "cat", "/etc/redis/users.acl")
        for secret in (
            REDIS_VARS["redis_replication_password"],
            REDIS_VARS["redis_sentinel_user_password"],
        ):
            assert secret not in acl
        users = {line.split()[1]: line for line in acl.splitlines()}
        assert "+psync" in users["replication"] and "~" not in users["replication"]
        assert "+config|rewrite" in users["sentinel"] and "+@all" not in users["sentinel"]


def test_killed_master_is_replaced_and_the_app_serves_sessions_and_queue_within_10_s(
    healthy_master,
):
    probe = start_probe(APP_SERVERS[0], "serve", "45", *OPERATOR)
    try:
        wait_for(lambda: announced_master(healthy_master), 10, "probe warm-up")
        time.sleep(5)  # a few good cycles before the fault
        killed_at = time.time()
        docker_exec(healthy_master, "sh", "-c", "kill -9 $(cat /run/redis/redis-server.pid)")
        new_master = wait_for(
            lambda: (
                (m := announced_master(REDIS_NODES[REDIS_NODES.index(healthy_master) - 1]))
                not in (None, healthy_master)
                and m
            ),
            30,
            "a new master announced",
            step=0.1,
        )
        announced_after = time.time() - killed_at
        cycles = probe_lines(probe, 120)
    finally:
        if probe.poll() is None:
            probe.kill()
    before = [cycle for cycle in cycles if cycle["end"] < killed_at]
    after = [cycle for cycle in cycles if cycle["start"] >= killed_at]
    assert before and all(cycle["ok"] for cycle in before), before
    first_ok = next(cycle for cycle in after if cycle["ok"])
    serving_after = first_ok["end"] - killed_at
    failed = [cycle for cycle in cycles if not cycle["ok"]]
    print(
        f"\nkill -9 of {healthy_master}'s redis-server: {new_master} announced master after "
        f"{announced_after:.1f} s; the app served a login, the session and the queue again "
        f"{serving_after:.1f} s after the kill; {len(failed)} of {len(cycles)} cycles failed "
        f"({[cycle['statuses'] for cycle in failed]})"
    )
    assert serving_after <= SERVE_AGAIN_BOUND_SECONDS
    assert all(cycle["ok"] for cycle in after[after.index(first_ok) :])
    assert all(status in (200, 503) for cycle in failed for status in cycle["statuses"])


def test_planned_failover_under_write_load_loses_no_acknowledged_session(healthy_master):
    writer = start_probe(APP_SERVERS[0], "write", "20", *OPERATOR)
    try:
        time.sleep(5)  # writes before the failover
        # The planned failover: writes held on the master, then the Sentinels switch.
        ops(healthy_master, "CLIENT", "PAUSE", "5000", "WRITE")
        switched_at = time.time()
        assert sentinel(healthy_master, "SENTINEL", "FAILOVER", "koinonia") == "OK"
        new_master = wait_for(
            lambda: (m := announced_master(healthy_master)) not in (None, healthy_master) and m,
            30,
            "the new master announced",
            step=0.1,
        )
        announced_after = time.time() - switched_at
        (result,) = probe_lines(writer, 120)
    finally:
        if writer.poll() is None:
            writer.kill()
    acknowledged = result["acknowledged"]
    assert len(acknowledged) >= 5  # logins hash a password: a few per second under load
    # Read back on the other app server: its session cache never saw these sessions.
    copy_probe(APP_SERVERS[1])
    check = json.loads(
        docker_exec(
            APP_SERVERS[1], "python3", "/root/probe.py", "check", stdin="\n".join(acknowledged)
        )
    )
    lost = check["statuses"].get("401", 0)
    print(
        f"\nSENTINEL FAILOVER {healthy_master} -> {new_master} (announced after "
        f"{announced_after:.1f} s): {len(acknowledged)} acknowledged session writes, {lost} "
        f"lost; refused meanwhile: {result['refused']}; read back: {check['statuses']}"
    )
    assert check["checked"] == len(acknowledged)
    assert check["statuses"] == {"200": len(acknowledged)}
    assert set(result["refused"]) <= {"503"}
