"""Fixtures for the messaging tests: a local HTTP server that plays Twilio, and helpers.

The fake Twilio is a real HTTP server on loopback (stdlib ``ThreadingHTTPServer`` in a thread),
so the provider's requests go through aiohttp and a socket exactly as they would to Twilio.  It
records every request (method, path, headers, form fields) for the tests to check, and answers
from a script of responses the test sets.

Like Twilio as documented, it creates a new message for EVERY send it accepts: it does not
drop a repeat that carries the same ``I-Twilio-Idempotency-Token`` (Twilio documents that
header on the webhooks it sends, not as a dedup of outbound messages). Tests count calls.
It serves Twilio's Messages list (``GET .../Messages.json?To=``) from what it accepted, and
the account's IncomingPhoneNumbers (the numbers a test gives it with ``own``): the list
filtered by ``PhoneNumber`` and the update of one by its sid. As Twilio does, it answers 401
(code 20003) to a request without the account's basic auth, and 404 (code 20404) to a
path or number sid the account does not have.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from saq import Worker
from saq.job import Job
from saq.queue.redis import RedisQueue

from koinonia.delivery.sms import LogProvider, TwilioProvider, compute_signature
from koinonia.jobs import build_worker
from koinonia.models.messaging import ChurchPhoneNumber, LinkStatus
from koinonia.services.queue import SEND_DELIVERIES, create_queue
from koinonia.web.state import get_state

ACCOUNT_SID = "AC00000000000000000000000000000001"
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
FROM_NUMBER = "+15005550006"
ACCOUNT_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}"
BASIC_AUTH = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
# The IncomingPhoneNumber fields an update may set (Twilio's API reference; a subset).
NUMBER_UPDATE_FIELDS = {
    "SmsUrl": "sms_url",
    "SmsMethod": "sms_method",
    "StatusCallback": "status_callback",
    "StatusCallbackMethod": "status_callback_method",
    "FriendlyName": "friendly_name",
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


@dataclass
class FakeTwilio:
    """What the fake server received, and what it answers next.

    ``responses`` is consumed first-in first-out; when empty, sends succeed with a new sid.
    Each response is (status, json body).
    """

    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    responses: list[tuple[int, dict]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)  # the messages it created
    # The account's IncomingPhoneNumbers by sid (``own`` adds one).
    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Before answering a send: a hook the test may set (runs in the server's thread), e.g.
    # to wait on a threading.Event so the client's timeout fires after the message exists.
    before_answer: Callable[[RecordedRequest], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.responses.clear()
            self.accepted.clear()
            self.numbers.clear()
            self.before_answer = None

    def own(self, number: str) -> str:
        """Give the account ``number`` (as bought in Twilio's console); returns its sid."""
        with self._lock:
            sid = f"PN{uuid.uuid4().hex}"
            self.numbers[sid] = {
                "sid": sid,
                "account_sid": ACCOUNT_SID,
                "phone_number": number,
                "sms_url": "",
                "sms_method": "POST",
                "status_callback": "",
                "status_callback_method": "POST",
                "friendly_name": number,
            }
            return sid

    def number(self, number: str) -> dict[str, Any]:
        """The account's IncomingPhoneNumber resource for ``number``, as it stands now."""
        with self._lock:
            [found] = [n for n in self.numbers.values() if n["phone_number"] == number]
            return dict(found)

    def find_numbers(self, phone_number: str | None) -> dict[str, Any]:
        with self._lock:
            found = [
                dict(n)
                for n in self.numbers.values()
                if phone_number is None or n["phone_number"] == phone_number
            ]
        return {"incoming_phone_numbers": found, "page": 0, "page_size": 50}

    def update_number(self, sid: str, form: dict[str, list[str]]) -> tuple[int, dict]:
        with self._lock:
            resource = self.numbers.get(sid)
            if resource is None:
                return 404, {"code": 20404, "message": "The requested resource was not found"}
            for name, key in NUMBER_UPDATE_FIELDS.items():
                if name in form:
                    resource[key] = form[name][-1]
            return 200, dict(resource)

    def fail_next(self, status: int, code: int | None = None, message: str = "failure") -> None:
        body: dict = {"status": status, "message": message}
        if code is not None:
            body["code"] = code
        self.responses.append((status, body))

    def _answer(self, request: RecordedRequest) -> tuple[int, dict]:
        """A POST: the scripted response if any, else the send or number update it asks."""
        with self._lock:
            self.requests.append(request)
            if self.responses:
                return self.responses.pop(0)
        refused = _refusal(request)
        if refused is not None:
            return refused
        path = request.path.removeprefix(ACCOUNT_PATH)
        if path.startswith("/IncomingPhoneNumbers/") and path.endswith(".json"):
            sid = path.removeprefix("/IncomingPhoneNumbers/").removesuffix(".json")
            return self.update_number(sid, request.form)
        if path != "/Messages.json":
            return 404, {"code": 20404, "message": "The requested resource was not found"}
        with self._lock:
            self._counter += 1
            form = request.form
            message = {
                "sid": f"SM{self._counter:032d}",
                "status": "queued",
                "to": form.get("To", [""])[0],
                "from": form.get("From", [""])[0],
                "body": form.get("Body", [""])[0],
                "date_created": formatdate(time.time(), usegmt=True),
            }
            self.accepted.append(message)
            return 201, message

    def _answer_get(self, request: RecordedRequest) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(request)
        refused = _refusal(request)
        if refused is not None:
            return refused
        path = request.path.removeprefix(ACCOUNT_PATH)
        if path == "/Messages.json":
            return 200, self.list_messages(request.form.get("To", [""])[0])
        if path == "/IncomingPhoneNumbers.json":
            return 200, self.find_numbers(request.form.get("PhoneNumber", [None])[0])
        return 404, {"code": 20404, "message": "The requested resource was not found"}

    def list_messages(self, to: str) -> dict[str, Any]:
        with self._lock:
            return {"messages": [m for m in reversed(self.accepted) if m["to"] == to]}

    def sends_to(self, number: str) -> list[RecordedRequest]:
        """Requests that asked to text ``number`` (including ones the fake refused)."""
        return [r for r in self.requests if r.form.get("To") == [number]]

    def calls_per_delivery(self) -> dict[str, int]:
        """Send requests received, per delivery (its idempotency token names it)."""
        counts: dict[str, int] = {}
        for r in self.requests:
            token = r.headers.get("i-twilio-idempotency-token")
            if r.method == "POST" and token:
                counts[token] = counts.get(token, 0) + 1
        return counts


def _refusal(request: RecordedRequest) -> tuple[int, dict] | None:
    """Twilio's answer to a request outside this account or without its credentials."""
    if request.headers.get("authorization") != BASIC_AUTH:
        return 401, {"code": 20003, "message": "Authenticate", "status": 401}
    if not request.path.startswith(ACCOUNT_PATH + "/"):
        return 404, {"code": 20404, "message": "The requested resource was not found"}
    return None


def _handler_for(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            request = RecordedRequest(
                method="GET",
                path=path,
                headers={k.lower(): v for k, v in self.headers.items()},
                form=parse_qs(query),
            )
            self._reply(*fake._answer_get(request))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            request = RecordedRequest(
                method="POST",
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                form=parse_qs(raw, keep_blank_values=True),
            )
            status, body = fake._answer(request)
            if fake.before_answer is not None:
                fake.before_answer(request)
            # The client may have timed out and left: the message exists all the same.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._reply(status, body)

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    return Handler


@pytest.fixture(scope="session")
def fake_twilio_server() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-twilio", daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_twilio(fake_twilio_server: FakeTwilio) -> FakeTwilio:
    fake_twilio_server.reset()
    return fake_twilio_server


# --- members, groups and a job worker for the API-level tests -------------------------------

_phone_counter = itertools.count(random.randrange(0, 9000))


def new_phone() -> str:
    """A valid, unused-so-far US number (555-01xx style numbers are fictional)."""
    return f"+1415555{next(_phone_counter) % 10000:04d}"


async def create_member(
    client: Any, headers: dict[str, str], *, opt_in: bool = True, first_name: str = "Mary"
) -> dict[str, Any]:
    response = await client.post(
        "/api/members",
        json={
            "firstName": first_name,
            "lastName": "Test",
            "phone": new_phone(),
            "optInSms": opt_in,
        },
        headers=headers,
    )
    assert response.status_code == 201, await response.get_data(as_text=True)
    return await response.get_json()


async def create_group(
    client: Any, headers: dict[str, str], member_ids: list[str], name: str | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/api/groups", json={"name": name or f"group-{uuid.uuid4().hex[:8]}"}, headers=headers
    )
    assert response.status_code == 201, await response.get_data(as_text=True)
    group = await response.get_json()
    if member_ids:
        added = await client.post(
            f"/api/groups/{group['id']}/members", json={"memberIds": member_ids}, headers=headers
        )
        assert added.status_code == 200, await added.get_data(as_text=True)
    return group


@dataclass
class StepWorker:
    """A real SAQ worker on the app's queue, stepped by the test (no background loops)."""

    worker: Worker
    queue: RedisQueue

    async def run_next(self) -> bool:
        """Dequeue and process one job; False when nothing was waiting."""
        return await self.worker.process()

    async def run_until_idle(self, limit: int = 100) -> int:
        done = 0
        while done < limit and await self.worker.process():
            done += 1
        return done

    async def job(self, key: str) -> Job:
        job = await self.queue.job(key)
        assert job is not None, key
        return job

    async def scheduled_at(self, key: str) -> float:
        """When SAQ will run this (retrying) job: its score in the queue's schedule."""
        score = await self.queue.redis.zscore(
            self.queue.namespace("incomplete"), self.queue.job_id(key)
        )
        assert score is not None
        return float(score)

    async def fast_forward(self, key: str) -> None:
        """Make a scheduled retry due now, instead of sleeping through its backoff."""
        await self.queue.redis.zadd(
            self.queue.namespace("incomplete"), {self.queue.job_id(key): time.time() - 1}
        )
        # SAQ's scheduler runs at most once a second (a short lock key); clear it to run now.
        await self.queue.redis.delete(self.queue.namespace("schedule"))
        assert self.queue.job_id(key) in await self.queue.schedule()


async def _clear_queue(queue: RedisQueue) -> None:
    keys = [k async for k in queue.redis.scan_iter(match=f"saq:*{queue.name}*")]
    if keys:
        await queue.redis.delete(*keys)


@pytest.fixture
async def make_worker(app: Any, redis: Redis) -> AsyncIterator[Callable[..., Any]]:
    """``await make_worker(provider)``: a StepWorker on the app's queue (emptied first)."""
    settings = get_state(app).settings
    queues: list[RedisQueue] = []

    async def build(provider: Any = None, **worker_options: Any) -> StepWorker:
        queue = create_queue(settings)
        await queue.connect()
        queues.append(queue)
        await _clear_queue(queue)
        worker = build_worker(
            settings,
            queue,
            provider=provider or LogProvider(redis),
            redis=redis,
            manage_resources=False,
            **{"cron_jobs": [], **worker_options},
        )
        for startup in worker.startup or []:
            await startup(worker.context)
        return StepWorker(worker=worker, queue=queue)

    yield build
    for queue in queues:
        await _clear_queue(queue)
        await queue.disconnect()


async def enqueue_failing_job(queue: RedisQueue, key: str, retries: int = 1) -> Job:
    """A send job that fails on every attempt (its chunk names no valid delivery id): what
    the operators' failed-jobs endpoints list."""
    job = Job(
        function=SEND_DELIVERIES,
        kwargs={"delivery_ids": ["not-a-delivery-id"]},
        key=key,
        retries=retries,
    )
    enqueued = await queue.enqueue(job)
    assert enqueued is not None
    return enqueued


@pytest.fixture
async def twilio_provider(fake_twilio: FakeTwilio) -> AsyncIterator[TwilioProvider]:
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=FROM_NUMBER,
        base_url=fake_twilio.base_url,
    )
    yield provider
    await provider.aclose()


# --- signed provider webhooks ----------------------------------------------------------------

PUBLIC_BASE_URL = "https://sms.example.org"


@pytest.fixture
def webhook_settings(app: Any) -> Iterator[Any]:
    """The app configured with a Twilio auth token and public URL for this test."""
    state = get_state(app)
    original = state.settings
    state.settings = original.model_copy(
        update={"twilio_auth_token": SecretStr(AUTH_TOKEN), "public_base_url": PUBLIC_BASE_URL}
    )
    yield state.settings
    state.settings = original


async def post_webhook(
    client: Any,
    path: str,
    form: dict[str, str],
    *,
    sign: bool = True,
    signature: str | None = None,
    signed_url: str | None = None,
) -> Any:
    """POST a form as Twilio would, signed for the public URL of ``path``."""
    headers = {}
    if sign:
        url = signed_url or PUBLIC_BASE_URL + path
        headers["X-Twilio-Signature"] = signature or compute_signature(AUTH_TOKEN, url, form)
    return await client.post(path, form=form, headers=headers)


async def church_number(church_id: str) -> str:
    line = await ChurchPhoneNumber.create(
        church_id=church_id, number=new_phone(), status=LinkStatus.LINKED, attempts=1
    )
    return line.number


async def text_member(client: Any, headers: dict[str, str], member_id: str, content: str) -> str:
    """POST /api/messages to one member: the new message's id (202 asserted)."""
    response = await client.post(
        "/api/messages",
        json={"content": content, "targetType": "members", "targetIds": [member_id]},
        headers=headers,
    )
    assert response.status_code == 202, await response.get_data(as_text=True)
    return (await response.get_json())["id"]


@contextlib.asynccontextmanager
async def redis_near_its_memory_limit(redis: Redis, ratio: float = 0.9) -> AsyncIterator[None]:
    """The test Redis with a maxmemory its used memory is ``ratio`` of: above the queue's
    high-water mark (0.8), with room left for the sessions' writes. Unlimited again after."""
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory", str(int(used / ratio)))
    try:
        yield
    finally:
        await redis.config_set("maxmemory", "0")
