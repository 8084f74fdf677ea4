#!/usr/bin/env python3
"""Bounded message traffic to the app on this host (127.0.0.1:3000), run inside the app
server by the ha-stack tests; standard library only. One JSON object on stdout.

  probe.py setup EMAIL PASSWORD
      a group of five opted-in members in the owner's church: {"token", "group"}.
  probe.py messages SECONDS TOKEN GROUP
      POST /api/messages to the group, one after another, each with its own
      Idempotency-Key, for SECONDS. A 503 (or no answer) is retried with the same key, as
      a client honouring Retry-After would, but after at most 1 s so the tests see the
      unavailable window to the second; a key is given up after 90 s. Prints every
      accepted key with its message id and time, the answers counted by status, the failed
      ones by status and error code, and the keys given up.
"""

import json
import random
import sys
import time
import urllib.error
import urllib.request
import uuid

BASE = "http://127.0.0.1:3000"
TIMEOUT = 15
GIVE_UP_SECONDS = 90


def call(method, path, body=None, token=None, headers=None):
    """(status, JSON body or error text, Retry-After or None); status 0: no answer."""
    all_headers = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    # BASE is http://127.0.0.1: no other scheme can reach these calls.
    request = urllib.request.Request(BASE + path, data=data, headers=all_headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null"), None
    except urllib.error.HTTPError as error:
        return (
            error.code,
            error.read().decode(errors="replace")[:300],
            error.headers.get("Retry-After"),
        )
    except OSError as error:
        return 0, str(error), None


def error_code(answer):
    """The API's error code of a failed call's answer, else the start of its text."""
    try:
        return json.loads(answer)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(answer)[:80]


def setup(email, password):
    status, body, _ = call("POST", "/api/auth/login", {"email": email, "password": password})
    assert status == 200, (status, body)
    token = body["token"]
    tag = uuid.uuid4().hex[:8]
    status, group, _ = call("POST", "/api/groups", {"name": f"Failover {tag}"}, token)
    assert status == 201, (status, group)
    prefix = (
        f"+1{random.choice((202, 206, 212, 303, 312, 404, 415, 617))}{random.randint(200, 999)}"
    )
    members = []
    for i in range(5):
        member = {"firstName": f"Fo{i}", "lastName": tag, "phone": f"{prefix}{i:04d}"}
        status, body, _ = call("POST", "/api/members", member, token)
        assert status in (200, 201), (status, body)
        members.append(body["id"])
    status, body, _ = call(
        "POST", f"/api/groups/{group['id']}/members", {"memberIds": members}, token
    )
    assert status in (200, 201, 204), (status, body)
    print(json.dumps({"token": token, "group": group["id"]}))


def messages(seconds, token, group):
    stop = time.time() + seconds
    accepted, answers, errors, given_up, retry_after = [], {}, {}, [], set()
    n = 0
    while time.time() < stop:
        key, n = str(uuid.uuid4()), n + 1
        first = time.time()
        while True:
            body = {"targetType": "group", "targetIds": [group], "content": f"Failover #{n}"}
            status, answer, after = call(
                "POST", "/api/messages", body, token, {"Idempotency-Key": key}
            )
            answers[str(status)] = answers.get(str(status), 0) + 1
            if status == 202:
                accepted.append({"key": key, "id": answer["id"], "at": time.time()})
                break
            if status == 503:
                retry_after.add(after)
            what = f"{status} {error_code(answer)}"
            errors[what] = errors.get(what, 0) + 1
            if status not in (0, 503) or time.time() - first > GIVE_UP_SECONDS:
                given_up.append({"key": key, "status": status, "answer": answer})
                break
            time.sleep(min(float(after or 1), 1.0))
        time.sleep(0.05)
    out = {"accepted": accepted, "answers": answers, "errors": errors, "given_up": given_up}
    out["retry_after"] = sorted(str(value) for value in retry_after)
    print(json.dumps(out))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "setup":
        setup(sys.argv[2], sys.argv[3])
    else:
        messages(float(sys.argv[2]), sys.argv[3], sys.argv[4])
