"""Checklist phase 2.5, Rate Limiting Validation, through the balancer from one client address.

nginx's limit_req is a leaky bucket: a client may be `burst` requests ahead of the rate; the
rest answer 429 at once (nodelay). Requests are sent over TLS connections opened beforehand,
at scheduled instants, so the timing is the test's, not the TLS handshakes'. Bounds that depend
on timing are computed from the measured span (first request sent -> last answer received:
NGINX judged every request within it, so the bucket cannot have leaked more), not guessed.
"""

import http.client
import json
import math
import threading
import time
import uuid

from stackclient import tls_context

from .conftest import HTTPS_PORT, LB_VARS, https

AUTH_RATE = 10  # r/s, checklist (nginx_rate_limit_auth default)
AUTH_BURST = 5
API_RATE = 100  # r/s
API_BURST = LB_VARS.get("nginx_rate_limit_api_burst", 50)
# How late a scheduled request may leave and still be "50 ms apart": the bucket leaks half a
# request between two of them, so the 10th passes with 50 ms to spare in all.
SCHEDULE_TOLERANCE = 0.02
# A connection opened for a burst waits for its request at most this long: well inside
# NGINX's client_header_timeout, after which it would be closed unanswered.
OPEN_WITHIN = int(LB_VARS.get("nginx_client_header_timeout", "15s").rstrip("s")) / 2


def login_body(i: int) -> dict:
    """The checklist's own request (test@test.com / test), with a different unknown address
    per attempt: the app locks an address out after KOINONIA_LOGIN_MAX_FAILURES (5) failures
    with its own 429 (login_locked), and these tests are about NGINX's per-IP limit."""
    return {"email": f"test-{uuid.uuid4().hex[:8]}-{i}@test.com", "password": "test"}


def _open_connections(count):
    """`count` TLS connections, opened within OPEN_WITHIN seconds: NGINX closes a connection
    that sent no request for client_header_timeout, so connections opened too slowly (the
    client's handshakes starved of CPU) are opened again, at most twice more."""
    for _attempt in range(3):
        started = time.monotonic()
        conns = []
        for _ in range(count):
            c = http.client.HTTPSConnection(
                "127.0.0.1", HTTPS_PORT, context=tls_context(), timeout=30
            )
            c.connect()
            conns.append(c)
        took = time.monotonic() - started
        if took <= OPEN_WITHIN:
            return conns
        print(f"{count} connections took {took:.1f} s to open: opened again")
        for c in conns:
            c.close()
    raise AssertionError(f"the client could not open {count} connections within {OPEN_WITHIN} s")


def _fire(method, path, count, spacing, body=None, token=None):
    """Sends `count` requests `spacing` s apart (0 = all at once), each on its own
    pre-opened connection. Returns ([(status, headers, body)], span in seconds from the first
    request sent to the last answer received, how late the latest request left against its
    scheduled instant)."""
    conns = _open_connections(count)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    results, errors = [None] * count, [None] * count
    sent_at, done_at = [0.0] * count, [0.0] * count
    start = time.monotonic() + 0.3

    def send(i):
        delay = start + i * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent_at[i] = time.monotonic()
        payload = body(i) if callable(body) else body
        data = json.dumps(payload).encode() if payload is not None else None
        try:
            conns[i].request(method, path, body=data, headers=headers)
            r = conns[i].getresponse()
            results[i] = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        except OSError as exc:  # http.client's errors included
            errors[i] = f"{exc.__class__.__name__}: {exc}"
        done_at[i] = time.monotonic()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in conns:
        c.close()
    unanswered = [(i, errors[i] or "no answer within 60 s") for i in range(count) if not results[i]]
    assert not unanswered, f"{len(unanswered)} of {count} requests got no answer: {unanswered[:3]}"
    lateness = max(sent_at[i] - (start + i * spacing) for i in range(count))
    return results, max(done_at) - min(sent_at), lateness


def _drain(rate, burst):
    # Setup, not a timing assertion: let this client's bucket empty from earlier tests.
    time.sleep(burst / rate + 0.5)


def _assert_429_shape(status, headers, body):
    assert status == 429
    assert headers["content-type"].startswith("application/json")
    assert headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1
    error = json.loads(body)["error"]
    assert error["code"] == "rate_limited"
    assert error["message"]
    assert "details" in error
    assert headers["strict-transport-security"].startswith("max-age=")


def test_2_5_auth_15_rapid_logins_50ms_apart_first_10_pass_rest_limited():
    """The checklist's loop: 15 logins 50 ms apart (20 r/s against 10 r/s, burst 5).
    The bucket fills by half a request per request: #1..#11 fit (11 would be exactly full),
    then only every other one; so the first 10 pass for sure and 2 or more get 429."""
    # The promise is about requests 50 ms apart. On a loaded machine a sending thread can wake
    # late, and two requests then leave closer than that: that burst is not the checklist's,
    # so it is sent again (at most 3 times), and judged only once the client kept the schedule.
    for _attempt in range(3):
        _drain(AUTH_RATE, AUTH_BURST)
        results, span, lateness = _fire("POST", "/api/auth/login", 15, 0.05, body=login_body)
        if lateness <= SCHEDULE_TOLERANCE:
            break
        print(f"a request left {lateness * 1000:.0f} ms late: sent again")
    assert lateness <= SCHEDULE_TOLERANCE, f"the client never kept 50 ms apart ({lateness:.3f} s)"
    statuses = [s for s, _, _ in results]
    # "Pass" = NGINX let it through to the app, which answers 401 for these credentials.
    assert statuses[:10] == [401] * 10, statuses
    limited = [i for i, s in enumerate(statuses) if s == 429]
    assert len(limited) >= 2, (statuses, span)
    assert all(i >= 10 for i in limited), statuses
    assert set(statuses) <= {401, 429}, statuses
    for status, headers, body in results:
        if status == 429:
            _assert_429_shape(status, headers, body)
        else:
            assert json.loads(body)["error"]["code"] == "invalid_credentials"


def test_2_5_auth_15_simultaneous_logins_only_burst_plus_one_pass():
    _drain(AUTH_RATE, AUTH_BURST)
    results, span, _ = _fire("POST", "/api/auth/login", 15, 0, body=login_body)
    statuses = [s for s, _, _ in results]
    passed = statuses.count(401)
    # 1 + burst, plus at most what the bucket leaked while NGINX was judging them.
    allowed = 1 + AUTH_BURST + math.ceil(span * AUTH_RATE) + 1
    assert 1 + AUTH_BURST <= passed <= allowed, (statuses, span)
    assert statuses.count(429) == 15 - passed, statuses


def test_2_5_general_api_allows_more_before_429(owner_token):
    """/api/ is 100 r/s burst 50: the same 15 simultaneous requests all pass; 150 at once (the
    checklist's request, "Bearer token": the app answers 401 at once) hit the limit only after
    1 + burst of them."""
    _drain(API_RATE, API_BURST)
    results, _, _ = _fire("GET", "/api/conversations", 15, 0, token=owner_token)
    assert [s for s, _, _ in results] == [200] * 15
    _drain(API_RATE, API_BURST)
    results, span, _ = _fire("GET", "/api/conversations", 150, 0, token="token")
    statuses = [s for s, _, _ in results]
    passed = statuses.count(401)
    limited = statuses.count(429)
    allowed = 1 + API_BURST + math.ceil(span * API_RATE) + 1
    assert 1 + API_BURST <= passed <= allowed, (passed, allowed, span)
    assert limited > 0 and passed + limited == 150, statuses
    status, headers, body = next(r for r in results if r[0] == 429)
    _assert_429_shape(status, headers, body)


def test_2_5_limits_are_per_zone_auth_limit_does_not_block_the_api(owner_token):
    _drain(AUTH_RATE, AUTH_BURST)
    results, _, _ = _fire("POST", "/api/auth/login", 15, 0, body=login_body)
    assert 429 in [s for s, _, _ in results]
    r = https("GET", "/api/conversations", token=owner_token)
    assert r.status == 200, r


def test_2_5_webhooks_have_their_own_moderate_limit():
    """50 r/s (burst 50 by default): 40 unsigned webhook calls at once all reach the app,
    which rejects them as unsigned (403), none is rate limited."""
    _drain(50, 50)
    results, _, _ = _fire("POST", "/api/webhooks/sms/status", 40, 0, body={})
    statuses = [s for s, _, _ in results]
    assert 429 not in statuses, statuses
    assert set(statuses) == {403}, statuses
