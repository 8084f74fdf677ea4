#!/usr/bin/env python3
"""Bounded traffic to the app on this host (127.0.0.1:3000), run inside an app server by the
ha-edge tests; standard library only. One JSON object per line on stdout.

  probe.py serve SECONDS EMAIL PASSWORD
      cycles of: log in (a session written to Redis), GET /api/auth/me (the session read
      back), GET /api/admin/queue/health (SAQ's keys); each cycle: start, end, ok.
  probe.py write SECONDS EMAIL PASSWORD
      logins one after another; prints the acknowledged ones (200) as [token, start, end]
      (the request's times) and the count of the refused ones at the end.
  probe.py check        (tokens on stdin, one per line)
      GET /api/auth/me with each; prints how many answered each status and the tokens that
      answered 401 (unknown: the session is not there).
  probe.py schedule TOKEN GROUP SEND_AT
      schedules a message to the group at SEND_AT (an instant with its offset); its id.
"""

import json
import sys
import time
import urllib.error
import urllib.request

BASE = "http://127.0.0.1:3000"
TIMEOUT = 15


def call(method, path, body=None, token=None):
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # BASE is http://127.0.0.1: no other scheme can reach these calls.
    request = urllib.request.Request(BASE + path, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError as error:
        return 0, str(error)


def login(email, password):
    status, body = call("POST", "/api/auth/login", {"email": email, "password": password})
    return status, (body or {}).get("token") if status == 200 else None


def serve(seconds, email, password):
    stop = time.time() + seconds
    while time.time() < stop:
        start = time.time()
        statuses = []
        status, token = login(email, password)
        statuses.append(status)
        if token:
            statuses.append(call("GET", "/api/auth/me", token=token)[0])
            statuses.append(call("GET", "/api/admin/queue/health", token=token)[0])
        ok = len(statuses) == 3 and all(code == 200 for code in statuses)
        print(json.dumps({"start": start, "end": time.time(), "ok": ok, "statuses": statuses}))
        sys.stdout.flush()
        time.sleep(0.1)


def write(seconds, email, password):
    stop = time.time() + seconds
    tokens, refused = [], {}
    while time.time() < stop:
        start = time.time()
        status, token = login(email, password)
        if token:
            tokens.append([token, start, time.time()])
        else:
            refused[str(status)] = refused.get(str(status), 0) + 1
        time.sleep(0.02)
    print(json.dumps({"acknowledged": tokens, "refused": refused}))


def check():
    tokens = [line.strip() for line in sys.stdin if line.strip()]
    statuses, unknown = {}, []
    for token in tokens:
        status = str(call("GET", "/api/auth/me", token=token)[0])
        statuses[status] = statuses.get(status, 0) + 1
        if status == "401":
            unknown.append(token)
    print(json.dumps({"checked": len(tokens), "statuses": statuses, "unknown": unknown}))


def schedule(token, group, send_at):
    body = {
        "targetType": "group",
        "targetIds": [group],
        "content": f"Scheduled for {send_at}",
        "sendAt": send_at,
    }
    status, answer = call("POST", "/api/scheduled-messages", body, token=token)
    assert status == 201, (status, answer)
    print(json.dumps({"id": answer["id"]}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "check":
        check()
    elif mode == "schedule":
        schedule(*sys.argv[2:5])
    else:
        {"serve": serve, "write": write}[mode](float(sys.argv[2]), sys.argv[3], sys.argv[4])
