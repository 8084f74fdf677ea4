"""Test helpers shared by the scenarios that talk to a deployed stack (default,
loadbalancer, operations): HTTPS requests from the controller through a balancer's
127.0.0.1-published port, and curl inside a container. A scenario's conftest.py puts this
directory on sys.path and imports what it needs."""

from __future__ import annotations

import functools
import http.client
import json
import shlex
import ssl
import time


class Resp:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.header_list = headers
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One client context for every request. ``ssl.create_default_context()`` loads the
    system's CA bundle, which these requests do not use (the test stacks' certificates are
    self-signed, not verified): on a busy 2-core machine that took 100 ms of CPU per request,
    and 150 connections opened for one burst took longer than NGINX's client_header_timeout."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https_request(
    port: int,
    method: str,
    path: str,
    body=None,
    token: str | None = None,
    headers: dict | None = None,
    timeout: float = 20,
) -> Resp:
    """One request to https://127.0.0.1:<port><path>, on a new connection."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls_context(), timeout=timeout)
    all_headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=all_headers)
        r = conn.getresponse()
        return Resp(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def curl(host, *args: str, max_time: float = 15):
    """curl on testinfra `host`; returns (status, lower-cased headers of the last response, body)."""
    cmd = f"curl -sk --max-time {max_time} -D /dev/stderr -o /dev/stdout " + " ".join(
        shlex.quote(a) for a in args
    )
    res = host.run(cmd)
    headers, status = {}, 0
    for line in res.stderr.splitlines():
        line = line.strip()
        if line.upper().startswith("HTTP/"):
            status, headers = int(line.split()[1]), {}
        elif ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return status, headers, res.stdout


def wait_for(predicate, deadline: float, step: float = 0.5, what: str = "condition"):
    """Polls predicate() until it returns a truthy value (returned) or `deadline` s pass."""
    start = time.monotonic()
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{what}: not met within {deadline}s (last: {last!r})")
        time.sleep(step)
