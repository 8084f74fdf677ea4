"""Checklist phase 2.6, Multi-Server Scaling: traffic spread over the three app servers, and
graceful failover with the SMALL health check knobs of molecule.yml (interval/fall/rise: a
stopped server is out within interval x fall, back after rise good probes).

Which server answered: the app names itself in X-Served-By; the balancer's access log (JSON
lines with request_id and upstream_addr; each request carries its own X-Request-ID, mapped to
peer names through /upstream_status) must tell the same story.
"""

import time
from collections import Counter

from .conftest import (
    APPS,
    DOWN_DEADLINE,
    FALL,
    RISE,
    UP_DEADLINE,
    access_log_upstreams,
    https,
    peer_addresses,
    unique,
    upstream_status,
    wait_for,
)

SPACING = 0.02  # at most ~50 r/s from this client: under the API limit (100 r/s)


def _paced_gets(path, count, marker, token=None):
    """`count` GETs, each on a new connection with X-Request-ID <marker>-<i>.
    Returns their statuses and {request id: X-Served-By}."""
    statuses, served_by = [], {}
    for i in range(count):
        start = time.monotonic()
        rid = f"{marker}-{i}"
        r = https("GET", path, token=token, headers={"X-Request-ID": rid})
        assert r.headers.get("x-request-id") == rid
        statuses.append(r.status)
        served_by[rid] = r.headers.get("x-served-by")
        time.sleep(max(0.0, SPACING - (time.monotonic() - start)))
    return statuses, served_by


def _check_against_access_log(lb, marker, served_by):
    """X-Served-By of each request is the peer the balancer's access log names; returns the
    per-server counts."""
    names = peer_addresses(lb)
    _, upstreams = _served_when_logged(lb, marker, len(served_by))
    for rid, header in served_by.items():
        assert names.get(upstreams[rid].split(",")[-1].strip()) == header, (
            rid,
            header,
            upstreams[rid],
        )
    return Counter(served_by.values())


def _served_by(lb, marker):
    """Counter of peer names that served the requests tagged with `marker` (last try)."""
    names = peer_addresses(lb)
    upstreams = access_log_upstreams(lb, marker)
    # A retried request lists every peer tried ("a, b"); the last one answered.
    return Counter(
        names.get(addr.split(",")[-1].strip(), addr) for addr in upstreams.values()
    ), upstreams


def _served_when_logged(lb, marker, count):
    """_served_by once all `count` requests are in the access log (bounded wait)."""

    def logged():
        served, upstreams = _served_by(lb, marker)
        return (served, upstreams) if len(upstreams) == count else None

    return wait_for(logged, 10, what=f"{count} access log lines for {marker}")


def test_2_6_99_requests_spread_over_3_servers_within_20_percent(lb, healthy_stack):
    marker = unique("ck26spread")
    statuses, served_by = _paced_gets("/health", 99, marker)
    assert statuses == [200] * 99
    served = _check_against_access_log(lb, marker, served_by)
    _, upstreams = _served_by(lb, marker)
    assert sorted(served) == sorted(APPS), served
    for name in APPS:
        assert 33 * 0.8 <= served[name] <= 33 * 1.2, served
    # Nothing needed a retry: each request went to one server.
    assert all("," not in addr for addr in upstreams.values())


def test_2_6_stopped_server_down_within_interval_x_fall_no_get_fails_then_back_after_rise(
    lb, apps, owner_token, healthy_stack
):
    """Small knobs (molecule.yml): the stopped API is out within interval x fall (+ slack),
    client GETs keep succeeding meanwhile, and it is back after `rise` good probes."""
    victim = APPS[0]
    codes = []

    def client_gets():
        codes.append(https("GET", "/health/live").status)
        codes.append(https("GET", "/api/members?limit=5", token=owner_token).status)

    apps[victim].run_expect([0], "systemctl stop --no-block koinonia-api")
    try:
        start = time.monotonic()
        wait_for(
            lambda: upstream_status(lb)[victim]["status"] == "down",
            DOWN_DEADLINE,
            step=0.1,
            on_each=client_gets,
            what=f"{victim} down in /upstream_status",
        )
        took = time.monotonic() - start
        assert set(codes) == {200}, Counter(codes)
        peer = upstream_status(lb)[victim]
        assert peer["consecutive_failures"] >= FALL, peer
        print(f"{victim} marked down {took:.1f}s after the stop (deadline {DOWN_DEADLINE}s)")

        # "Traffic routes to Servers 2 and 3 only."
        marker = unique("ck26down")
        statuses, served_by = _paced_gets("/health", 30, marker)
        assert statuses == [200] * 30
        served = _check_against_access_log(lb, marker, served_by)
        assert victim not in served, served
        assert sorted(served) == sorted(APPS[1:]), served
    finally:
        apps[victim].run_expect([0], "systemctl start koinonia-api")

    # Back after `rise` good probes; GETs keep succeeding while it comes back.
    codes.clear()
    wait_for(
        lambda: upstream_status(lb)[victim]["status"] == "up",
        UP_DEADLINE + 30,
        step=0.2,
        on_each=client_gets,
        what=f"{victim} back up in /upstream_status",
    )
    assert set(codes) == {200}, Counter(codes)
    assert upstream_status(lb)[victim]["consecutive_successes"] >= RISE
    marker = unique("ck26back")
    statuses, served_by = _paced_gets("/health", 30, marker)
    assert statuses == [200] * 30
    served = _check_against_access_log(lb, marker, served_by)
    # Back in rotation (the peer's state is in the message: passive marks, per-worker counts).
    assert served[victim] > 0, (served, upstream_status(lb)[victim])
