"""Redis with Sentinel under the app (issue 18): the set as converged, a crashed master
(serving again, texting once), a planned failover. Traffic stays inside the scenario's
containers (the app on 127.0.0.1, the provider stand-in on he-db)."""

import time

from conftest import (
    APP_SERVERS,
    OPERATOR,
    REDIS_NODES,
    REDIS_VARS,
    TEXTING_PROBE,
    announced_master,
    docker_exec,
    info,
    kill_master,
    messages_per_key,
    new_master_announced,
    ops,
    probe_lines,
    psql,
    run_probe,
    sentinel,
    start_probe,
    texting_outcome,
    wait_for,
)

SERVE_AGAIN_BOUND_SECONDS = 10
# The message load: long enough to text on both sides of the failover (a new master within
# about 4 s), short enough to keep the scenario's time down.
TEXTING_SECONDS = 15
MEMBERS = 5  # the texting group's opted-in members (ha-stack's probe `setup`)
# Every delivery settled: seconds normally; the bound covers a loaded machine.
SETTLE_BOUND_SECONDS = 120


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
        kill_master(healthy_master)
        other = REDIS_NODES[REDIS_NODES.index(healthy_master) - 1]
        new_master = new_master_announced(healthy_master, asked=other)
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
        new_master = new_master_announced(healthy_master)
        announced_after = time.time() - switched_at
        (result,) = probe_lines(writer, 120)
    finally:
        if writer.poll() is None:
            writer.kill()
    acknowledged = [token for token, _start, _end in result["acknowledged"]]
    assert len(acknowledged) >= 5  # logins hash a password: a few per second under load
    # Read back on the other app server: its session cache never saw these sessions.
    check = run_probe(APP_SERVERS[1], "check", stdin="\n".join(acknowledged))
    lost = check["statuses"].get("401", 0)
    print(
        f"\nSENTINEL FAILOVER {healthy_master} -> {new_master} (announced after "
        f"{announced_after:.1f} s): {len(acknowledged)} acknowledged session writes, {lost} "
        f"lost; refused meanwhile: {result['refused']}; read back: {check['statuses']}"
    )
    assert check["checked"] == len(acknowledged)
    assert check["statuses"] == {"200": len(acknowledged)}
    assert set(result["refused"]) <= {"503"}


def test_killed_master_loses_no_message_and_calls_the_provider_once_per_delivery(
    healthy_master, texting, provider
):
    started = time.time()
    load = start_probe(
        APP_SERVERS[0],
        "messages",
        str(TEXTING_SECONDS),
        texting["token"],
        texting["group"],
        probe=TEXTING_PROBE,
    )
    try:
        # The fault while the load texts: its first messages recorded.
        since = f"to_timestamp({started:.3f})"
        wait_for(
            lambda: int(psql(f"SELECT count(*) FROM message WHERE created_at >= {since}")) >= 3,  # noqa: S608 - a float
            30,
            "the load's first messages recorded",
        )
        killed_at = time.time()
        kill_master(healthy_master)
        new_master = new_master_announced(healthy_master)
        (report,) = probe_lines(load, TEXTING_SECONDS + 120)
    finally:
        if load.poll() is None:
            load.kill()
    keys = [accepted["key"] for accepted in report["accepted"]]
    per_key = messages_per_key(keys)
    outcome = texting_outcome(
        [accepted["id"] for accepted in report["accepted"]], MEMBERS, SETTLE_BOUND_SECONDS
    )
    after = sum(1 for accepted in report["accepted"] if accepted["at"] > killed_at)
    print(
        f"\nkill -9 of {healthy_master}'s redis-server ({new_master} the new master) under "
        f"message load: answers {report['answers']}, {after} messages accepted after the kill\n"
        + "\n".join(f"  {what:>17}: {count}" for what, count in outcome.items())
    )
    assert not report["given_up"], report["given_up"]
    assert after >= 1  # the load texted across the failover, not only before it
    assert all(count == 1 for count in per_key.values()), per_key
    assert outcome["deliveries"] == MEMBERS * len(keys)
    assert outcome["lost"] == 0 and outcome["unknown-left"] == 0, outcome
    assert outcome["duplicated"] == 0 and outcome["provider calls"] == outcome["deliveries"]
