"""The Locust side of bench/load_profiles.py: one profile per process.

`python -m bench.load.driver CONFIG.json RESULT.json`: runs the profile named in the
config against the service at its base URL (127.0.0.1 only) with Locust as a library
(a local runner and a LoadTestShape, no web UI), records every request, and writes the
samples' figures (bench/load/stats.py) to RESULT.json. Its own process because importing
Locust monkey-patches the standard library with gevent.
"""

from __future__ import annotations

import itertools
import json
import random
import resource
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import gevent
from locust import FastHttpUser, LoadTestShape, between, task
from locust.env import Environment
from locust.exception import CatchResponseError, StopUser
from locust.runners import STATE_STOPPED

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.load import stats
from bench.load.profiles import RESPONDER, STAFF, TEXTER, Profile, Stage

from koinonia.delivery.sms.signature import SIGNATURE_HEADER, compute_signature

CONFIG: dict = {}
SAMPLES: list[stats.Sample] = []
STARTED = [0.0]
# Which church the next user of each class works for (round robin over the seeded ones).
NEXT_CHURCH = {STAFF: itertools.count(), TEXTER: itertools.count(), RESPONDER: itertools.count()}
RANDOM = random.Random(4242)  # noqa: S311 - which member texts, which page: not secrets

INBOUND_PATH = "/api/webhooks/sms/inbound"
# How long a user waits for an answer (Locust's default; NGINX's proxy_read_timeout too).
CLIENT_TIMEOUT = 60.0
TEXTS = ("Thanks, see you Sunday", "Can I bring a friend?", "Running late", "Amen", "What time?")


def church(kind: str) -> dict:
    churches = CONFIG["churches"]
    return churches[next(NEXT_CHURCH[kind]) % len(churches)]


def staff_account(kind: str) -> tuple[dict, str]:
    """The next user's church and its own staff login (round robin over all of them)."""
    churches = CONFIG["churches"]
    n = next(NEXT_CHURCH[kind])
    chosen = churches[n % len(churches)]
    return chosen, chosen["staff"][(n // len(churches)) % len(chosen["staff"])]


def expect(response, *statuses: int) -> bool:
    """Mark the response failed unless its status is one of ``statuses``."""
    if response.status_code in statuses:
        response.success()
        return True
    error = getattr(response, "error", None)
    if not response.status_code and error is not None:
        # No answer at all: a timeout (CLIENT_TIMEOUT) or a refused or reset connection.
        response.failure(f"no answer: {type(error).__name__}")
    else:
        response.failure(f"HTTP {response.status_code}")
    return False


class ApiUser(FastHttpUser):
    """A church's staff member: logs in once, then works with the bearer token."""

    abstract = True
    kind = STAFF

    def on_start(self) -> None:
        self.church, email = staff_account(self.kind)
        with self.client.post(
            "/api/auth/login",
            json={"email": email, "password": self.church["password"]},
            name="POST /api/auth/login",
            catch_response=True,
        ) as response:
            logged_in = expect(response, 200)
            if logged_in:
                self.auth = {"Authorization": f"Bearer {response.json()['token']}"}
        if not logged_in:
            raise StopUser  # the failed login is its one error, not every request after it

    def get_ok(self, path: str, name: str) -> None:
        """GET as this user; any answer but 200 counts as that request's failure."""
        with self.client.get(path, headers=self.auth, name=name, catch_response=True) as response:
            expect(response, 200)


class StaffUser(ApiUser):
    """The realistic mix: list members, read a group, text a small group, read deliveries."""

    def on_start(self) -> None:
        super().on_start()
        self.sent: deque[str] = deque(maxlen=5)

    @task(4)
    def list_members(self) -> None:
        page = RANDOM.choice((1, 1, 1, 2))  # mostly the first (cached) page
        self.get_ok(f"/api/members?page={page}&limit=20", "GET /api/members")

    @task(3)
    def read_group(self) -> None:
        group = RANDOM.choice(self.church["group_ids"])
        self.get_ok(f"/api/groups/{group}", "GET /api/groups/:id")

    @task(1)
    def text_small_group(self) -> None:
        with self.client.post(
            "/api/messages",
            json={
                "content": "Choir practice moved to 7pm",
                "targetType": "group",
                "targetIds": [self.church["small_group_id"]],
            },
            headers=self.auth | {"Idempotency-Key": uuid.uuid4().hex},
            name="POST /api/messages (5-member group)",
            catch_response=True,
        ) as response:
            if expect(response, 202):
                self.sent.append(response.json()["id"])

    @task(2)
    def read_deliveries(self) -> None:
        if not self.sent:
            return self.text_small_group()
        with self.client.get(
            f"/api/messages/{RANDOM.choice(self.sent)}",
            headers=self.auth,
            name="GET /api/messages/:id (deliveries)",
            catch_response=True,
        ) as response:
            if expect(response, 200) and len(response.json().get("deliveries", [])) != 5:
                response.failure("not 5 deliveries")


class TexterUser(FastHttpUser):
    """A member texting the church's number: the provider's signed inbound webhook."""

    weight = 3

    def on_start(self) -> None:
        self.church = church(TEXTER)

    @task
    def text_in(self) -> None:
        form = {
            "MessageSid": "SM" + uuid.uuid4().hex,
            "AccountSid": "AC" + "0" * 32,
            "From": RANDOM.choice(self.church["member_phones"]),
            "To": self.church["number"],
            "Body": RANDOM.choice(TEXTS),
        }
        url = CONFIG["public_base_url"].rstrip("/") + INBOUND_PATH
        signature = compute_signature(CONFIG["twilio_auth_token"], url, form)
        with self.client.post(
            INBOUND_PATH,
            data=urlencode(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                SIGNATURE_HEADER: signature,
            },
            name="POST /api/webhooks/sms/inbound (signed)",
            catch_response=True,
        ) as response:
            if expect(response, 200):
                if not (response.text or "").startswith("<?xml"):
                    response.failure("not TwiML")
                else:
                    ACCEPTED["inbound"] += 1


class ResponderUser(ApiUser):
    """Staff answering: the conversations list, one conversation, a reply."""

    weight = 1
    kind = RESPONDER

    @task
    def answer(self) -> None:
        with self.client.get(
            "/api/conversations?limit=20",
            headers=self.auth,
            name="GET /api/conversations",
            catch_response=True,
        ) as response:
            if not expect(response, 200):
                return
            conversations = response.json()["data"]
        if not conversations:
            return
        conversation = RANDOM.choice(conversations)["id"]
        self.get_ok(
            f"/api/conversations/{conversation}/messages?limit=20",
            "GET /api/conversations/:id/messages",
        )
        with self.client.post(
            f"/api/conversations/{conversation}/messages",
            json={"body": "Thanks for your message!"},
            headers=self.auth | {"Idempotency-Key": uuid.uuid4().hex},
            name="POST /api/conversations/:id/messages (reply)",
            catch_response=True,
        ) as response:
            if expect(response, 202):
                ACCEPTED["replies"] += 1


ACCEPTED = {"inbound": 0, "replies": 0}
CLASSES = {STAFF: StaffUser, TEXTER: TexterUser, RESPONDER: ResponderUser}


class StagesShape(LoadTestShape):
    """The profile's stages; records when each stage's user count was first asked for."""

    def __init__(self, stages: list[Stage]) -> None:
        super().__init__()
        self.stages = stages
        self.transitions: list[dict] = []

    def tick(self):
        run_time = self.get_run_time()
        for stage in self.stages:
            if run_time < stage.until:
                if not self.transitions or self.transitions[-1]["users"] != stage.users:
                    self.transitions.append(
                        {"at_s": round(time.time() - STARTED[0], 3), "users": stage.users}
                    )
                return stage.users, stage.spawn_rate
        return None


def on_request(name, response_time, exception, start_time=None, response=None, **_kwargs):
    started = start_time if start_time is not None else time.time() - response_time / 1000
    error = ""
    if exception is not None:
        # What expect() or a check said ("HTTP 503", "no answer: ..."); else the exception.
        if isinstance(exception, CatchResponseError):
            error = str(exception)
        else:
            error = f"{type(exception).__name__}: {exception}"
    SAMPLES.append((started - STARTED[0], float(response_time), error[:120], name))


def main() -> int:
    config_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    CONFIG.update(json.loads(config_path.read_text()))
    if urlsplit(CONFIG["base_url"]).hostname != "127.0.0.1":
        raise SystemExit("load only against 127.0.0.1")
    raw = CONFIG["profile"]
    profile = Profile(
        **{k: v for k, v in raw.items() if k not in ("seconds", "spike", "stages", "users")},
        users=tuple(raw["users"]),
        stages=tuple(Stage(**s) for s in raw["stages"]),
    )
    low, high = profile.think_seconds
    classes = [CLASSES[name] for name in profile.users]
    for cls in classes:
        cls.wait_time = between(low, high)
        cls.host = CONFIG["base_url"]
        cls.network_timeout = cls.connection_timeout = CLIENT_TIMEOUT
    shape = StagesShape(list(profile.stages))
    env = Environment(user_classes=classes, shape_class=shape, stop_timeout=15)
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    STARTED[0] = time.time()
    runner.start_shape()
    deadline = time.monotonic() + profile.seconds + 120
    gevent.sleep(1)
    while runner.state != STATE_STOPPED and time.monotonic() < deadline:
        gevent.sleep(0.5)
    timed_out = runner.state != STATE_STOPPED
    runner.quit()
    seconds = time.time() - STARTED[0]
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    samples = sorted(SAMPLES)
    result = {
        "profile": profile.as_json(),
        "seconds": round(seconds, 1),
        "timed_out": timed_out,
        "transitions": shape.transitions,
        "load_generator_cpu_percent": round(100 * cpu / seconds, 1),
        "accepted": dict(ACCEPTED),
        "total": stats.summary(samples, seconds),
        "slices": stats.slices(samples, profile.seconds, profile.slice_seconds),
        "by_name": stats.by_name(samples, seconds),
    }
    if profile.spike:
        # The spike as it happened: when the shape asked for its users and for fewer again.
        peak = max(t["users"] for t in shape.transitions)
        begin = next(t["at_s"] for t in shape.transitions if t["users"] == peak)
        end = next(
            (t["at_s"] for t in shape.transitions if t["at_s"] > begin and t["users"] < peak),
            profile.spike[1],
        )
        result["recovery"] = stats.recovery(
            samples,
            (begin, end),
            profile.baseline_seconds,
            profile.recovery_window,
            until=profile.seconds,
        )
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
