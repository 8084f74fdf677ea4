"""Every rate-limited zone announces its policy (RateLimit-Policy, draft-ietf-httpapi-ratelimit-
headers-11) on its responses, 429s included, and every 429 carries Retry-After.

The expected quota and window come from the role's settings (the scenario keeps the defaults:
auth 10r/s burst 5, webhooks 50r/s burst 50, api 100r/s burst 50), read from defaults/main.yml.
"""

import pathlib
import re
import time

import pytest
import yaml
from conftest import BASE, curl

testinfra_hosts = ["lb-nginx"]

DEFAULTS = yaml.safe_load(
    (pathlib.Path(__file__).resolve().parents[3] / "roles/nginx/defaults/main.yml").read_text()
)
# One Quota Policy Item: a String name, then parameters (draft-11 section 3; RFC 9651 syntax).
POLICY_ITEM = re.compile(
    r'^"(?P<name>[a-z]+)";q=(?P<q>[0-9]+);w=(?P<w>[0-9]+);koinonia-burst=(?P<burst>[0-9]+)$'
)
# zone name: (a path in the zone, method)
ZONES = {
    "auth": [("/api/auth/login", "POST")],
    "webhooks": [("/api/webhooks/sms/inbound", "POST")],
    "api": [
        ("/api/echo", "GET"),
        ("/api/members/import", "POST"),
        ("/api/ws", "GET"),
        ("/docs", "GET"),
    ],
}


def _setting(zone):
    rate = DEFAULTS[f"nginx_rate_limit_{zone}"]
    count, unit = re.fullmatch(r"([0-9]+)r/([sm])", rate).groups()
    return int(count), {"s": 1, "m": 60}[unit], DEFAULTS[f"nginx_rate_limit_{zone}_burst"]


def _drain(zone):
    # Setup, not a timing assertion: let this client's bucket in the zone empty.
    quota, window, burst = _setting(zone)
    time.sleep(burst * window / quota + 0.5)


def _assert_policy(value, zone):
    match = POLICY_ITEM.fullmatch(value or "")
    assert match, value
    quota, window, burst = _setting(zone)
    assert match["name"] == zone
    assert (int(match["q"]), int(match["w"]), int(match["burst"])) == (quota, window, burst)


@pytest.mark.parametrize(
    "zone,path,method", [(z, p, m) for z, routes in ZONES.items() for p, m in routes]
)
def test_each_zone_announces_its_policy_on_its_responses(host, zone, path, method):
    _drain(zone)
    status, headers, _ = curl(host, "-X", method, BASE + path)
    assert status == 200, (path, status)
    _assert_policy(headers.get("ratelimit-policy"), zone)


def test_responses_outside_every_zone_announce_no_policy(host):
    status, headers, _ = curl(host, BASE + "/metrics")
    assert status == 404
    assert "ratelimit-policy" not in headers


@pytest.mark.parametrize(
    "zone,path,method,count",
    [
        ("auth", "/api/auth/login", "POST", 20),
        ("webhooks", "/api/webhooks/sms/inbound", "POST", 120),
        ("api", "/api/echo", "GET", 160),
    ],
)
def test_every_429_of_a_zone_carries_retry_after_and_the_zone_policy(
    host, zone, path, method, count
):
    _drain(zone)
    urls = " ".join(f"-o /dev/null {BASE}{path}" for _ in range(count))
    out = host.check_output(
        f"curl -sk --parallel --parallel-max {count} -X {method} "
        f"-w '%{{http_code}} %header{{retry-after}} %header{{ratelimit-policy}}\\n' {urls}"
    )
    lines = [line.split(" ", 2) for line in out.splitlines()]
    assert len(lines) == count
    limited = [line for line in lines if line[0] == "429"]
    assert limited, [line[0] for line in lines]
    for _status, retry_after, policy in limited:
        assert retry_after.isdigit() and int(retry_after) >= 1
        _assert_policy(policy, zone)
    for status, _retry_after, policy in lines:
        assert status in ("200", "429")
        _assert_policy(policy, zone)
    _drain(zone)
