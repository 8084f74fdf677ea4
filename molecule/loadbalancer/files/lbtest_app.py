#!/usr/bin/env python3
"""Stand-in app server for the loadbalancer scenario (test only, never deployed for real).

GET  /health            200 {"status": "ok"}
GET  /health/ready      200, or 503 while /run/lbtest/not-ready or /run/lbtest/dependency-down
                        exists (tests flip them)
GET  /metrics           200 (must never be reachable through the public listener)
GET  /api/...           200, echoes the proxy headers it received as JSON
POST /api/...           200, same echo (PUT, PATCH, DELETE, OPTIONS too)
ANY  /api/test/crash    counts the hit, then drops the connection without an answer
GET  /api/test/slow     answers after 3 s on lb-app1, at once elsewhere (least connections)
ANY  /api/test/unavailable  503 on lb-app1 (as an app server cut off from Redis answers),
                        the usual echo elsewhere
GET  /docs              an HTML page with its own Content-Security-Policy (as the real docs
                        page has), none with ?no-csp
GET  /_lbtest/hits      the per-path hit counters (asked directly on :3000 by the tests)
POST /_lbtest/reset     clears the counters
PUT|DELETE /_lbtest/dependency-down  creates or removes /run/lbtest/dependency-down: while it
                        exists the server answers as the real app does with PostgreSQL or
                        Redis unreachable: /health 200 (no I/O), /health/ready 503, and every
                        /api/... request 503 service_unavailable with Retry-After: 5
Every answer carries X-Served-By: <hostname>, as the real app is asked to.
"""

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOSTNAME = socket.gethostname()
NOT_READY_FLAG = "/run/lbtest/not-ready"
DEPENDENCY_DOWN_FLAG = "/run/lbtest/dependency-down"
# The app's answer when a dependency is unreachable (koinonia/errors.py).
DEPENDENCY_DOWN_BODY = {
    "error": {
        "code": "service_unavailable",
        "message": "A service this request needs is unavailable; try again shortly.",
        "details": {},
    }
}
DOCS_CSP = "default-src 'none'; script-src 'nonce-lbtest'; style-src 'nonce-lbtest'"
HITS: dict[str, int] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lbtest"

    def log_message(self, fmt, *args):  # keep the journal quiet
        pass

    def _count(self):
        key = f"{self.command} {self.path.split('?')[0]}"
        with LOCK:
            HITS[key] = HITS.get(key, 0) + 1

    def _send(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Served-By", HOSTNAME)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _echo(self):
        self._send(
            200,
            {
                "servedBy": HOSTNAME,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            },
        )

    def _docs_page(self):
        data = b"<!DOCTYPE html><title>docs</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if "no-csp" not in self.path:
            self.send_header("Content-Security-Policy", DOCS_CSP)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        path = self.path.split("?")[0]
        if self.command == "POST":
            self._read_body()
        if path == "/_lbtest/hits":
            with LOCK:
                return self._send(200, dict(HITS))
        if path == "/_lbtest/reset":
            with LOCK:
                HITS.clear()
            return self._send(200, {})
        if path == "/_lbtest/dependency-down":
            if self.command == "PUT":
                open(DEPENDENCY_DOWN_FLAG, "w").close()
            elif self.command == "DELETE" and os.path.exists(DEPENDENCY_DOWN_FLAG):
                os.remove(DEPENDENCY_DOWN_FLAG)
            return self._send(200, {"dependencyDown": os.path.exists(DEPENDENCY_DOWN_FLAG)})
        self._count()
        dependency_down = os.path.exists(DEPENDENCY_DOWN_FLAG)
        if path == "/health":
            return self._send(200, {"status": "ok"})
        if path == "/health/ready":
            if dependency_down or os.path.exists(NOT_READY_FLAG):
                return self._send(503, {"status": "not ready"})
            return self._send(200, {"status": "ready"})
        if dependency_down and path.startswith("/api/"):
            return self._send(503, DEPENDENCY_DOWN_BODY, {"Retry-After": "5"})
        if path == "/metrics":
            return self._send(200, {"metrics": "secret"})
        if path == "/api/test/crash":
            # Fail mid-request: the request was received, no response is ever sent.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if path == "/api/test/unavailable" and HOSTNAME == "lb-app1":
            return self._send(
                503, {"error": {"code": "service_unavailable", "message": "x", "details": {}}}
            )
        if path == "/api/test/slow" and HOSTNAME == "lb-app1":
            time.sleep(3)
        if path == "/docs":
            return self._docs_page()
        if path.startswith("/api/"):
            return self._echo()
        return self._send(
            404, {"error": {"code": "not_found", "message": "not found", "details": {}}}
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle


if __name__ == "__main__":
    os.makedirs(os.path.dirname(NOT_READY_FLAG), exist_ok=True)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("0.0.0.0", 3000), Handler).serve_forever()
