"""Health semantics (issue 18): panic routing when no peer is up.

A dependency every app server shares (PostgreSQL, Redis) fails everyone's readiness at
once. The balancer then keeps routing to the peers that still answer their probes, so
clients get the app's own 503 with Retry-After, and the first request after the dependency
is back succeeds without waiting for `rise`. One server that alone lost its dependency is
still ejected; drained peers and peers that refuse connections are never panic-routed to.
The stand-in's /_lbtest/dependency-down switch makes it answer as the app does then.
"""

import json
import time

from conftest import (
    APPS,
    BASE,
    DOWN_DEADLINE,
    INTERVAL,
    RISE,
    hits,
    reset_hits,
    set_dependency_down,
    set_drained,
    upstream,
    upstream_status,
    wait_for,
)

testinfra_hosts = ["lb-nginx"]

APP_UNAVAILABLE = "A service this request needs is unavailable; try again shortly."
BALANCER_UNAVAILABLE = "No application server is available; try again shortly."


def _get(host, path="/api/echo"):
    """(status, x-served-by or "", JSON body) of one GET through the balancer."""
    res = host.run(f"curl -sk -D /dev/stderr {BASE}{path}")
    status = int(res.stderr.split()[1])
    headers = {
        line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
        for line in res.stderr.splitlines()[1:]
        if ":" in line
    }
    return status, headers, json.loads(res.stdout)


def _served_by(host, count, path="/api/echo"):
    """(status, x-served-by) of `count` GETs through the balancer, one curl process."""
    out = host.check_output(
        "curl -sk -w '%{http_code} %header{x-served-by}\\n' "
        + " ".join([f"-o /dev/null {BASE}{path}"] * count)
    )
    return [
        tuple(line.split()) if len(line.split()) == 2 else (line.strip(), "")
        for line in out.splitlines()
    ]


def _wait_panic(host, deadline=DOWN_DEADLINE):
    wait_for(lambda: upstream(host)["panic"] is True, deadline)


def test_shared_dependency_down_requests_reach_the_apps_503_and_status_shows_panic(
    host, apps, all_peers_up
):
    for name in APPS:
        set_dependency_down(apps, name, True)
    _wait_panic(host)
    state = upstream(host)
    assert state["panic_when_all_down"] is True
    assert state["panic_since"] is not None
    assert state["peers_up"] == 0
    for peer in state["peers"]:
        assert peer["status"] == "down"
        assert peer["last_result"] == "503"
        assert peer["answering"] is True
        assert peer["in_rotation"] is True

    reset_hits(host)
    status, headers, body = _get(host)
    assert status == 503
    assert headers["x-served-by"] in APPS  # the app answered, not the balancer
    assert headers["retry-after"] == "5"  # the app's, not the balancer's (interval 1)
    assert body["error"] == {
        "code": "service_unavailable",
        "message": APP_UNAVAILABLE,
        "details": {},
    }
    served = _served_by(host, 10)
    assert {code for code, _ in served} == {"503"}, served
    assert {by for _, by in served} <= set(APPS), served
    counted = sum(h.get("GET /api/echo", 0) for h in hits(host).values())
    assert counted >= 11  # every request reached an app (a GET's 503 is tried on the other)


def test_dependency_back_the_next_request_succeeds_without_waiting_for_rise(
    host, apps, all_peers_up
):
    for name in APPS:
        set_dependency_down(apps, name, True)
    _wait_panic(host)
    # One shell on the balancer, so the figures do not include docker exec round trips.
    out = host.check_output(
        "set -e; "
        + "; ".join(
            f"curl -sf -X DELETE http://{name}:3000/_lbtest/dependency-down >/dev/null"
            for name in APPS
        )
        + "; back=$(date +%s.%N); "
        f"answer=$(curl -sk -o /dev/null -w '%{{http_code}} %header{{x-served-by}}' {BASE}/api/echo); "
        'done=$(date +%s.%N); echo "$back $done $answer"; '
        "curl -s http://127.0.0.1:8080/upstream_status"
    )
    first, status_json = out.split("\n", 1)
    back, done, code, served_by = first.split()
    elapsed = float(done) - float(back)
    print(f"first request after the dependency came back: {code} in {elapsed:.3f}s")
    assert code == "200"
    assert elapsed < RISE * INTERVAL
    # It was served by a peer the checks still had down: nothing waited for `rise`.
    peers = {p["name"]: p for p in json.loads(status_json)["peers"]}
    assert peers[served_by]["status"] == "down", peers[served_by]


def test_one_peer_losing_its_dependency_alone_is_ejected_and_gets_no_requests(
    host, apps, all_peers_up
):
    codes = []
    set_dependency_down(apps, "lb-app1", True)
    wait_for(
        lambda: upstream_status(host)["lb-app1"]["status"] == "down",
        DOWN_DEADLINE,
        on_each=lambda: codes.extend(code for code, _ in _served_by(host, 1)),
    )
    # Before the ejection, lb-app1's 503s to GETs were tried again on lb-app2.
    assert set(codes) == {"200"}, codes
    state = upstream(host)
    assert state["panic"] is False
    peers = {p["name"]: p for p in state["peers"]}
    assert peers["lb-app1"]["in_rotation"] is False
    assert peers["lb-app2"]["in_rotation"] is True

    reset_hits(host)
    served = _served_by(host, 10)
    assert served == [("200", "lb-app2")] * 10, served
    assert hits(host)["lb-app1"].get("GET /api/echo", 0) == 0


def test_drained_peer_is_never_used_in_panic(host, apps, all_peers_up):
    set_drained(host, "lb-app1", True)
    for name in APPS:
        set_dependency_down(apps, name, True)
    wait_for(
        lambda: all(p["status"] == "down" for p in upstream_status(host).values()),
        DOWN_DEADLINE,
    )
    _wait_panic(host)
    peers = upstream_status(host)
    assert peers["lb-app1"]["in_rotation"] is False
    assert peers["lb-app2"]["in_rotation"] is True

    reset_hits(host)
    served = _served_by(host, 10)
    assert served == [("503", "lb-app2")] * 10, served
    assert hits(host)["lb-app1"].get("GET /api/echo", 0) == 0

    # Both drained: nothing to panic-route to, the balancer answers itself.
    set_drained(host, "lb-app2", True)
    status, headers, body = _get(host)
    assert status == 503
    assert "x-served-by" not in headers
    assert body["error"]["message"] == BALANCER_UNAVAILABLE
    assert upstream(host)["panic"] is False


def test_peer_refusing_connections_leaves_panic_rotation_and_gets_never_tried(
    host, apps, all_peers_up
):
    for name in APPS:
        set_dependency_down(apps, name, True)
    _wait_panic(host)
    address = upstream_status(host)["lb-app1"]["address"]
    codes = []
    apps["lb-app1"].run_expect([0], "systemctl stop lbtest-app")
    # Until the next probe sees it, its tries fail (at connect, or on a cached keepalive
    # connection that broke) and GETs go to lb-app2: never a 502.
    wait_for(
        lambda: upstream_status(host)["lb-app1"]["answering"] is False,
        DOWN_DEADLINE,
        step=0.1,
        on_each=lambda: codes.extend(_served_by(host, 4)),
    )
    assert set(codes) == {("503", "lb-app2")}, codes
    peers = upstream_status(host)
    assert peers["lb-app1"]["in_rotation"] is False
    assert peers["lb-app1"]["last_result"].startswith("connect")
    assert peers["lb-app2"]["in_rotation"] is True

    marker = f"refused-{time.monotonic_ns()}"
    served = _served_by(host, 10, f"/api/echo?{marker}")
    assert served == [("503", "lb-app2")] * 10, served
    log = host.check_output(f"grep -F {marker} /var/log/nginx/access.log")
    tried = [json.loads(line)["upstream_addr"] for line in log.splitlines()]
    assert len(tried) == 10
    assert all(address not in addrs for addrs in tried), tried
