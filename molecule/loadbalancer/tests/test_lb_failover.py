"""Checklist 2.6 failover with the scenario's small knobs (interval 1 s, fall 3, rise 2):
the active checker takes a peer out within interval x fall and back after rise good probes."""

import json
import time

from conftest import (
    APPS,
    BASE,
    DOWN_DEADLINE,
    UP_DEADLINE,
    set_ready,
    upstream,
    upstream_status,
    wait_for,
)

testinfra_hosts = ["lb-nginx"]


def _get_status(host):
    return host.check_output(f"curl -sk -o /dev/null -w '%{{http_code}}' {BASE}/api/echo")


def test_unready_peer_marked_down_within_interval_x_fall_and_gets_no_traffic(
    host, apps, all_peers_up
):
    codes = []
    set_ready(apps, "lb-app1", False)
    wait_for(
        lambda: upstream_status(host)["lb-app1"]["status"] == "down",
        DOWN_DEADLINE,
        on_each=lambda: codes.append(_get_status(host)),
    )
    assert set(codes) == {"200"}, codes
    peer = upstream_status(host)["lb-app1"]
    assert peer["consecutive_failures"] >= 3
    assert peer["last_result"] == "503"
    served = host.check_output(
        "curl -sk -w '%header{x-served-by}\\n' " + " ".join([f"-o /dev/null {BASE}/health"] * 10)
    )
    assert set(served.split()) == {"lb-app2"}


def test_peer_back_up_after_rise_good_checks(host, apps, all_peers_up):
    set_ready(apps, "lb-app1", False)
    wait_for(lambda: upstream_status(host)["lb-app1"]["status"] == "down", DOWN_DEADLINE)
    set_ready(apps, "lb-app1", True)
    wait_for(lambda: upstream_status(host)["lb-app1"]["status"] == "up", UP_DEADLINE)
    assert upstream_status(host)["lb-app1"]["consecutive_successes"] >= 2


def test_stopped_peer_no_get_fails_meanwhile_and_down_within_interval_x_fall(
    host, apps, all_peers_up
):
    codes = []
    apps["lb-app2"].run_expect([0], "systemctl stop lbtest-app")
    wait_for(
        lambda: upstream_status(host)["lb-app2"]["status"] == "down",
        DOWN_DEADLINE,
        step=0.1,
        on_each=lambda: codes.append(_get_status(host)),
    )
    assert set(codes) == {"200"}, codes
    apps["lb-app2"].run_expect([0], "systemctl start lbtest-app")
    wait_for(lambda: upstream_status(host)["lb-app2"]["status"] == "up", UP_DEADLINE)


def test_all_peers_stopped_answers_503_json_at_once(host, apps, all_peers_up):
    # Stopped: connections refused, so not even panic routing has a peer to try.
    for name in APPS:
        apps[name].run_expect([0], "systemctl stop lbtest-app")
    wait_for(
        lambda: all(p["status"] == "down" for p in upstream_status(host).values()), DOWN_DEADLINE
    )
    start = time.monotonic()
    res = host.run(f"curl -sk -D /dev/stderr {BASE}/api/echo")
    assert time.monotonic() - start < 5
    assert "HTTP/2 503" in res.stderr
    assert "retry-after:" in res.stderr.lower()
    assert "x-served-by" not in res.stderr.lower()  # the balancer's own answer
    assert json.loads(res.stdout)["error"]["code"] == "service_unavailable"
    assert upstream(host)["panic"] is False
