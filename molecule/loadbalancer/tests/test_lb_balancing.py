"""Checklist 2.6: traffic spread over the app servers; retries only where they are safe."""

import collections

from conftest import APPS, BASE, hits, reset_hits

testinfra_hosts = ["lb-nginx"]


def test_99_requests_spread_evenly_over_the_peers_within_20_percent(host, all_peers_up):
    urls = " ".join(f"-o /dev/null {BASE}/health" for _ in range(99))
    out = host.check_output(f"curl -sk --rate 40/s -w '%header{{x-served-by}}\\n' {urls}")
    counts = collections.Counter(out.split())
    expected = 99 / len(APPS)
    assert sorted(counts) == APPS, counts
    for name in APPS:
        assert abs(counts[name] - expected) <= 0.2 * expected, counts


def test_least_connections_sends_new_requests_away_from_a_busy_peer(host, all_peers_up):
    """lb-app1 holds /api/test/slow for 3 s, lb-app2 answers at once: with least connections
    each of the 2 workers sends at most its first request to lb-app1 (round-robin: ~4 of 8)."""
    out = host.check_output(
        "for i in 1 2 3 4 5 6 7 8; do curl -sk -o /dev/null -w '%header{x-served-by}\\n' "
        f"{BASE}/api/test/slow & sleep 0.2; done; wait"
    )
    counts = collections.Counter(out.split())
    assert sum(counts.values()) == 8, counts
    assert counts["lb-app1"] <= 2, counts


def test_get_failing_mid_request_is_retried_on_another_peer(host, all_peers_up):
    """Idempotent: a GET whose peer drops the connection is tried on the other one."""
    reset_hits(host)
    code = host.check_output(f"curl -sk -o /dev/null -w '%{{http_code}}' {BASE}/api/test/crash")
    assert code == "502"  # both stand-ins drop it
    counts = hits(host)
    assert all(counts[name].get("GET /api/test/crash", 0) >= 1 for name in APPS), counts


def test_post_failing_mid_request_is_never_sent_to_a_second_peer(host, all_peers_up):
    """NGINX never re-sends a POST that reached a peer (no non_idempotent retries)."""
    reset_hits(host)
    code = host.check_output(
        f"curl -sk -o /dev/null -w '%{{http_code}}' -X POST -d '{{}}' {BASE}/api/test/crash"
    )
    assert code == "502"
    counts = hits(host)
    assert sum(counts[name].get("POST /api/test/crash", 0) for name in APPS) == 1, counts


def test_get_answered_503_is_tried_once_on_another_peer(host, all_peers_up):
    """lb-app1 answers /api/test/unavailable with 503 (an app server that lost Redis, not yet
    ejected): every GET is answered by lb-app2, whichever peer it reached first."""
    reset_hits(host)
    out = host.check_output(
        "for i in 1 2 3 4 5 6; do curl -sk -o /dev/null -w '%{http_code} %header{x-served-by}\\n' "
        f"{BASE}/api/test/unavailable; done"
    )
    assert out.split("\n") == ["200 lb-app2"] * 6, out
    counts = hits(host)
    assert counts["lb-app2"].get("GET /api/test/unavailable", 0) == 6, counts


def test_post_answered_503_is_never_sent_to_a_second_peer(host, all_peers_up):
    reset_hits(host)
    out = host.check_output(
        "for i in 1 2 3 4 5 6; do curl -sk -o /dev/null -w '%{http_code}\\n' -X POST -d '{}' "
        f"{BASE}/api/test/unavailable; done"
    )
    codes = out.split()
    counts = hits(host)
    sent = {name: counts[name].get("POST /api/test/unavailable", 0) for name in APPS}
    assert sum(sent.values()) == 6, counts  # each POST reached exactly one peer
    assert codes.count("503") == sent["lb-app1"], (codes, counts)


def test_502_from_the_balancer_has_the_json_error_shape(host, all_peers_up):
    body = host.check_output(f"curl -sk {BASE}/api/test/crash")
    assert '"code":"bad_gateway"' in body
