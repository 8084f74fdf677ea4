"""Checklist 2.5 and security validation: per-client rate limits answer 429 JSON."""
import json
import time

from conftest import BASE

testinfra_hosts = ["lb-nginx"]


def _burst(host, path, count, rate, method="POST"):
    """count requests over one connection, `rate` per second; returns [(status, retry_after, body)]."""
    args = " ".join(f"-o /tmp/rl-{i}.out {BASE}{path}" for i in range(count))
    host.run_expect([0], "rm -f /tmp/rl-*")
    body = "-H 'Content-Type: application/json' -d '{\"email\":\"test@test.com\",\"password\":\"test\"}'"
    out = host.check_output(
        f"curl -sk -X {method} {body if method == 'POST' else ''} --rate {rate} "
        f"-w '%{{http_code}} %header{{retry-after}}\\n' {args}")
    results = []
    for i, line in enumerate(out.splitlines()):
        fields = line.split()
        results.append((int(fields[0]), fields[1] if len(fields) > 1 else None,
                        host.file(f"/tmp/rl-{i}.out").content_string))
    assert len(results) == count
    return results


def test_15_rapid_logins_about_10_pass_then_429(host):
    """/api/auth/ is 10 r/s with burst 5: 15 logins 50 ms apart -> ~10-12 pass, the rest 429."""
    time.sleep(1.5)  # let the zone drain from earlier tests
    results = _burst(host, "/api/auth/login", 15, "20/s")
    passed = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert len(passed) + len(limited) == 15, [r[0] for r in results]
    assert 9 <= len(passed) <= 13, [r[0] for r in results]
    assert len(limited) >= 2


def test_429_has_json_error_shape_and_retry_after(host):
    time.sleep(1.5)
    results = _burst(host, "/api/auth/login", 12, "1000/s")
    limited = [r for r in results if r[0] == 429]
    assert limited, [r[0] for r in results]
    status, retry_after, body = limited[0]
    assert retry_after is not None and int(retry_after) >= 1
    error = json.loads(body)["error"]
    assert error["code"] == "rate_limited"
    assert error["message"]
    assert error["details"] == {}


def test_general_api_allows_more_than_auth_before_429(host):
    """/api/ is 100 r/s: 30 GETs at 50/s all pass where auth would have limited."""
    time.sleep(1.5)
    results = _burst(host, "/api/conversations", 30, "50/s", method="GET")
    assert all(r[0] == 200 for r in results), [r[0] for r in results]
