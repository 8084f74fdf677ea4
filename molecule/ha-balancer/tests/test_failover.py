"""The virtual address moves when the balancer holding it fails, and comes back without flapping.

Each test starts from the healthy state (conftest.healthy) and leaves it behind.
"""

import time
from collections import Counter

from conftest import (
    OTHER,
    PREEMPT_DELAY,
    PREFERRED,
    Load,
    answers_over_tls,
    docker,
    holders,
    transitions,
    vrrp_state_metric,
    wait_for,
)

# issue 18: "the virtual address answers from the other within 5 s".
TAKEOVER_BOUND = 5.0


def test_nginx_stopped_on_the_holder_moves_the_address_and_it_comes_back(healthy, client):
    """The vrrp_script: a balancer whose NGINX does not answer gives the address up."""
    since = time.time()
    docker("exec", PREFERRED, "systemctl", "stop", "nginx")
    try:
        wait_for(f"{OTHER} alone holds the address", lambda: holders() == [OTHER], 10)
        assert answers_over_tls(client) == "200 HTTPS"
        assert transitions(PREFERRED, since) == ["FAULT"]
        assert (vrrp_state_metric(PREFERRED), vrrp_state_metric(OTHER)) == (3, 2)
    finally:
        docker("exec", PREFERRED, "systemctl", "start", "nginx")
    back = time.time()
    # Back only after the preempt delay: until then the other keeps it.
    time.sleep(PREEMPT_DELAY / 2)
    assert holders() == [OTHER]
    wait_for(
        f"{PREFERRED} holds the address again", lambda: holders() == [PREFERRED], PREEMPT_DELAY + 15
    )
    print(f"\n{PREFERRED} took the address back {time.time() - back:.1f} s after NGINX started")
    assert transitions(PREFERRED, since) == ["FAULT", "BACKUP", "MASTER"]
    assert transitions(OTHER, since) == ["MASTER", "BACKUP"]


def test_docker_kill_of_the_holder_the_other_answers_within_5_s(healthy):
    """Bounded load from the client during the kill: only requests that reached it may fail."""
    load = Load(seconds=20, threads=4, interval=0.25)
    time.sleep(4)
    killed_at = time.time()
    docker("kill", PREFERRED)
    wait_for(f"{OTHER} holds the address", lambda: holders() == [OTHER], 15, interval=0.2)
    report = load.report()

    # The outage starts with the first request or probe that failed after the kill (docker
    # kill returns before the container is gone); it ends with the first probe answered
    # after that. The time printed runs from before `docker kill` was called: an upper bound.
    requests, probes = report["requests"], report["probes"]
    outage_start = min(r[0] for r in requests + probes if r[0] >= killed_at and not r[2])
    first_answer = next(p for p in probes if p[0] >= outage_start and p[2])
    takeover = first_answer[1] - killed_at
    failed = [r for r in requests if not r[2]]
    ok = len(requests) - len(failed)
    print(
        f"\ndocker kill {PREFERRED}: the virtual address answered from {OTHER} "
        f"{takeover:.2f} s after the kill (outage {first_answer[1] - outage_start:.2f} s); "
        f"load: sent {len(requests)}, ok {ok}, failed {len(failed)}"
    )
    for record in failed:
        print(f"  failed: started {record[0] - killed_at:+.2f} s, {record[3]}")
    assert takeover <= TAKEOVER_BOUND
    # Only requests that reached the killed balancer fail: the one a thread had in flight
    # when the kill landed, and one it sent while the dead container's network stack still
    # held the address (its processes gone, it refuses at once: 0.1-0.3 s measured, a
    # thread pauses 0.25 s between requests). Each is refused, reset or cut off (mid-TLS too), never
    # a timeout or an HTTP error. A request sent during the outage waits in TCP's SYN
    # retries and is answered by the new holder; nothing sent after the kill's first
    # second fails.
    per_thread = Counter(record[4] for record in failed)
    assert max(per_thread.values(), default=0) <= 2, per_thread
    assert all(record[0] < killed_at + 1.0 for record in failed)
    assert all(
        record[3].startswith(
            ("ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected", "SSL")
        )
        for record in failed
    )
    assert all(r[2] for r in requests if r[0] >= killed_at + 1.0)
    # The load ran on after the takeover, and went on being answered.
    assert sum(1 for r in requests if r[0] > first_answer[1] and r[2]) > 10 * report["threads"]


def test_the_killed_balancer_restarted_takes_over_after_the_preempt_delay_once(healthy, client):
    docker("kill", PREFERRED)
    wait_for(f"{OTHER} holds the address", lambda: holders() == [OTHER], 15, interval=0.2)
    restarted_at = time.time()
    docker("start", PREFERRED)
    # Booting, then BACKUP for the preempt delay: the address stays on the other.
    wait_for(
        f"keepalived on {PREFERRED} in BACKUP",
        lambda: "BACKUP" in transitions(PREFERRED, restarted_at),
        60,
    )
    assert holders() == [OTHER]
    wait_for(
        f"{PREFERRED} holds the address again",
        lambda: holders() == [PREFERRED],
        PREEMPT_DELAY + 30,
        interval=0.2,
    )
    took_back = time.time() - restarted_at
    print(f"\n{PREFERRED} restarted: took the address back {took_back:.1f} s after docker start")
    assert took_back >= PREEMPT_DELAY
    # No flapping: it stays where it is, each side changed state once.
    time.sleep(5)
    assert holders() == [PREFERRED]
    assert transitions(PREFERRED, restarted_at) == ["BACKUP", "MASTER"]
    assert transitions(OTHER, restarted_at) == ["BACKUP"]
    assert (vrrp_state_metric(PREFERRED), vrrp_state_metric(OTHER)) == (2, 1)
    assert answers_over_tls(client) == "200 HTTPS"
