"""Checklist 2.5 and security validation: per-client rate limits answer 429 JSON."""

import json
import time

from conftest import BASE

testinfra_hosts = ["lb-nginx"]


def _burst(host, path, count, rate, method="POST"):
    """count requests over one connection, `rate` per second; returns [(status, retry_after, body)]."""
    args = " ".join(f"-o /tmp/rl-{i}.out {BASE}{path}" for i in range(count))
    host.run_expect([0], "rm -f /tmp/rl-*")
    body = (
        '-H \'Content-Type: application/json\' -d \'{"email":"test@test.com","password":"test"}\''
    )
    out = host.check_output(
        f"curl -sk -X {method} {body if method == 'POST' else ''} --rate {rate} "
        f"-w '%{{http_code}} %header{{retry-after}}\\n' {args}"
    )
    results = []
    for i, line in enumerate(out.splitlines()):
        fields = line.split()
        results.append(
            (
                int(fields[0]),
                fields[1] if len(fields) > 1 else None,
                host.file(f"/tmp/rl-{i}.out").content_string,
            )
        )
    assert len(results) == count
    return results


def test_15_simultaneous_logins_only_1_plus_burst_5_pass_rest_429(host):
    """/api/auth/ is 10 r/s with burst 5: 15 logins at once -> 6 pass (7 if 100 ms went by)."""
    time.sleep(1.5)  # let the zone drain from earlier tests
    args = " ".join(f"-o /dev/null {BASE}/api/auth/login" for _ in range(15))
    out = host.check_output(
        f"curl -sk --parallel --parallel-max 15 -X POST -d '{{}}' -w '%{{http_code}}\\n' {args}"
    )
    codes = out.split()
    assert len(codes) == 15 and set(codes) <= {"200", "429"}, codes
    assert 6 <= codes.count("200") <= 8, codes


LOGIN_LOOP = r"""
import http.client, json, ssl, sys, time
ctx = ssl._create_unverified_context()
conn = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx)
out, t0 = [], time.monotonic()
for i in range(15):
    delay = t0 + i * 0.05 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    sent = time.monotonic()
    conn.request("POST", "/api/auth/login", body="{}", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    out.append([sent, resp.status])
print(json.dumps(out))
"""


def _leaky_bucket(times, rate=10, burst=5):
    """NGINX's limit_req with nodelay, in its integer milliseconds: which requests pass."""
    excess, last, passed = 0, None, []
    for t in times:
        now = int(t * 1000)
        new = 0 if last is None else max(excess - rate * 1000 * (now - last) // 1000 + 1000, 0)
        if new > burst * 1000:
            passed.append(False)  # refused: the bucket is not updated
            continue
        excess, last = new, now
        passed.append(True)
    return passed


def test_15_rapid_logins_50ms_apart_about_10_pass_then_429(host):
    """The checklist's loop: 15 logins 50 ms apart -> the first ~10-11 pass, the rest 429.
    A shared CI machine stretches the gaps, so the count is compared with what 10 r/s burst 5
    allows for the gaps really measured (within one request)."""
    # The ideal loop: the first 11 pass, the 12th is refused (then every other one passes).
    assert _leaky_bucket([i * 0.05 for i in range(15)])[:12] == [True] * 11 + [False]
    time.sleep(1.5)
    host.run_expect([0], "cat > /tmp/login_loop.py <<'EOF'\n" + LOGIN_LOOP + "\nEOF")
    results = json.loads(host.check_output("python3 /tmp/login_loop.py"))
    codes = [status for _, status in results]
    assert set(codes) <= {200, 429}, codes
    expected = _leaky_bucket([sent for sent, _ in results]).count(True)
    assert abs(codes.count(200) - expected) <= 1, (codes, expected)
    assert codes[:6] == [200] * 6  # 1 + burst always pass


def test_429_has_json_error_shape_and_retry_after(host):
    time.sleep(1.5)
    results = _burst(host, "/api/auth/login", 12, "1000/s")
    limited = [r for r in results if r[0] == 429]
    assert limited, [r[0] for r in results]
    _status, retry_after, body = limited[0]
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
