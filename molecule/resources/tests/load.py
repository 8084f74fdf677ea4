"""A bounded load generator for the scenarios that redeploy or fault a stack (operations,
chaos): a few threads send a steady stream of GET /api/members and POST /api/messages (each with its own Idempotency-Key) through the
balancer's published port on 127.0.0.1, over keep-alive connections, until stopped.

Anything but a 2xx, and any connection error or timeout, is a failed request: a rolling
deploy must show none. Every accepted POST returns its message id: the tests check that no
key made two messages (ids distinct, and one row per key in the database)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from stackclient import https_request, tls_context


@dataclass
class LoadReport:
    sent: int = 0
    failed: int = 0
    gets: int = 0
    posts: int = 0
    failures: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    idempotency_keys: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"sent {self.sent} ({self.gets} GET, {self.posts} POST), failed {self.failed}, "
            f"messages {len(set(self.message_ids))} for {len(self.idempotency_keys)} keys"
        )


class BoundedLoad:
    def __init__(
        self,
        port: int,
        token: str,
        group_id: str,
        rate: float = 12.0,
        threads: int = 3,
        max_seconds: float = 900,
        timeout: float = 30,
    ):
        self.port, self.token, self.group_id = port, token, group_id
        self.interval = threads / rate  # per thread, seconds between two requests
        self.threads = threads
        self.max_seconds = max_seconds  # hard bound, whatever the test does
        self.timeout = timeout
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        # The Idempotency-Key of every failed POST, so a test can send it again as a client
        # would (retry_failed_posts).
        self.failed_keys: list[str] = []

    def __enter__(self) -> BoundedLoad:
        self._started = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)
        print("load:", self.report.summary())
        for line in self.report.failures[:20]:
            print("  failed:", line)

    def _post_body(self, key: str) -> dict:
        return {
            "targetType": "group",
            "targetIds": [self.group_id],
            "content": f"Operations test {key[:8]}",
        }

    def retry_failed_posts(self) -> list[tuple[str, int]]:
        """Each failed POST again with its key and body: (key, status) per retry."""
        results = []
        for key in self.failed_keys:
            r = https_request(
                self.port,
                "POST",
                "/api/messages",
                self._post_body(key),
                self.token,
                {"Idempotency-Key": key},
            )
            replayed = r.headers.get("idempotent-replayed") == "true"
            results.append((key, r.status, replayed))
        answers = Counter((status, replayed) for _key, status, replayed in results)
        print(
            f"retried {len(results)} failed POSTs with their keys: "
            + ", ".join(
                f"{n} x {status}{' replayed' if replayed else ' recorded now'}"
                for (status, replayed), n in sorted(answers.items())
            )
        )
        return [(key, status) for key, status, _replayed in results]

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=tls_context(), timeout=self.timeout
        )

    def _record(self, kind: str, ok: bool, detail: str, message_id: str | None, key: str | None):
        with self._lock:
            r = self.report
            r.sent += 1
            if kind == "GET":
                r.gets += 1
            else:
                r.posts += 1
                r.idempotency_keys.append(key)
            if ok:
                if message_id:
                    r.message_ids.append(message_id)
            else:
                r.failed += 1
                r.failures.append(f"{time.strftime('%H:%M:%S')} {kind} {detail}")
                if kind == "POST":
                    self.failed_keys.append(key)

    def _run(self, index: int) -> None:
        conn = self._connect()
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - self._started < self.max_seconds:
            n += 1
            post = (n + index) % 4 == 0
            key = str(uuid.uuid4()) if post else None
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            if post:
                body = json.dumps(self._post_body(key)).encode()
                headers.update({"Content-Type": "application/json", "Idempotency-Key": key})
                method, path = "POST", "/api/messages"
            else:
                body, method, path = None, "GET", "/api/members?limit=20"
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                ok = 200 <= resp.status < 300
                message_id = json.loads(data).get("id") if ok and post else None
                self._record(method, ok, f"{resp.status} {data[:160]!r}", message_id, key)
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = self._connect()
            except (OSError, http.client.HTTPException) as exc:
                self._record(method, False, f"{type(exc).__name__}: {exc}", None, key)
                conn.close()
                conn = self._connect()
            # After a stall (a server cut off, a failover) the thread does not catch up on the
            # requests it missed: a burst of them would meet the balancer's rate limit (429),
            # which is not what the faults test.
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        conn.close()
