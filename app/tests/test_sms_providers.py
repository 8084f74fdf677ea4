"""The SMS providers against a local HTTP server that plays Twilio, and webhook signatures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from koinonia.delivery.sms import (
    LogProvider,
    PermanentSmsError,
    TransientSmsError,
    TwilioProvider,
    UnknownOutcomeSmsError,
    compute_signature,
    validate_signature,
)
from koinonia.stores.client import create_redis
from tests.messaging_fixtures import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio
from tests.servers import TestServers, free_port

CALLBACK = "https://sms.example.org/api/webhooks/sms/status"


@pytest.fixture
async def twilio(fake_twilio: FakeTwilio):
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=FROM_NUMBER,
        base_url=fake_twilio.base_url,
        status_callback_url=CALLBACK,
    )
    yield provider
    await provider.aclose()


async def test_send_makes_the_exact_twilio_request(twilio: TwilioProvider, fake_twilio):
    sid = await twilio.send("+15551230001", "Service at 10am", idempotency_key="delivery-42")

    assert sid.startswith("SM")
    [request] = fake_twilio.requests
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    expected_auth = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert request.headers["i-twilio-idempotency-token"] == "delivery-42"
    assert request.form == {
        "To": ["+15551230001"],
        "From": [FROM_NUMBER],
        "Body": ["Service at 10am"],
        "StatusCallback": [CALLBACK],
    }


async def test_every_send_is_a_new_message_even_with_the_same_key(
    twilio: TwilioProvider, fake_twilio
):
    # Twilio documents no dedup of outbound messages by idempotency token: the fake does
    # none either, so a second call for one delivery shows as a second text.
    first = await twilio.send("+15551230001", "hi", idempotency_key="delivery-7")
    again = await twilio.send("+15551230001", "hi", idempotency_key="delivery-7")

    assert first != again
    assert fake_twilio.calls_per_delivery() == {"delivery-7": 2}
    assert len(fake_twilio.accepted) == 2


async def test_invalid_number_is_a_permanent_error(twilio: TwilioProvider, fake_twilio):
    fake_twilio.fail_next(400, code=21211, message="The 'To' number is not a valid phone number.")

    with pytest.raises(PermanentSmsError) as raised:
        await twilio.send("+1555", "hi", idempotency_key="delivery-1")

    assert raised.value.code == 21211
    assert "21211" in str(raised.value)


@pytest.mark.parametrize("status", [408, 429, 503])
async def test_answers_that_say_not_processed_are_transient(
    twilio: TwilioProvider, fake_twilio, status
):
    fake_twilio.fail_next(status, code=20429 if status == 429 else None)

    with pytest.raises(TransientSmsError):
        await twilio.send("+15551230001", "hi", idempotency_key="delivery-1")


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_server_errors_that_may_follow_a_send_are_unknown_outcomes(
    twilio: TwilioProvider, fake_twilio, status
):
    fake_twilio.fail_next(status)

    with pytest.raises(UnknownOutcomeSmsError):
        await twilio.send("+15551230001", "hi", idempotency_key="delivery-1")


async def test_a_timeout_after_the_request_left_is_an_unknown_outcome(fake_twilio: FakeTwilio):
    answered = threading.Event()
    fake_twilio.before_answer = lambda _request: answered.wait(5)
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=FROM_NUMBER,
        base_url=fake_twilio.base_url,
        timeout=0.2,
    )
    try:
        with pytest.raises(UnknownOutcomeSmsError):
            await provider.send("+15551230001", "hi", idempotency_key="delivery-1")
    finally:
        answered.set()
        await provider.aclose()
    assert len(fake_twilio.accepted) == 1  # Twilio did create it


async def test_lookup_finds_an_accepted_message_by_number_body_and_time(
    twilio: TwilioProvider, fake_twilio
):
    since = datetime.now(UTC)
    sid = await twilio.send("+15551230001", "Choir at 7", idempotency_key="delivery-1")
    await twilio.send("+15551230002", "Choir at 7", idempotency_key="delivery-2")

    assert await twilio.find_sent("+15551230001", "Choir at 7", "delivery-1", since) == sid
    assert await twilio.find_sent("+15551230001", "Other text", "delivery-1", since) is None
    later = since + timedelta(hours=1)
    assert await twilio.find_sent("+15551230001", "Choir at 7", "delivery-1", later) is None
    [lookup] = [r for r in fake_twilio.requests if r.method == "GET"][:1]
    assert lookup.form["To"] == ["+15551230001"]


async def test_unreachable_provider_is_transient():
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=FROM_NUMBER,
        base_url="http://127.0.0.1:9",  # discard port: nothing listens
        timeout=2,
    )
    try:
        with pytest.raises(TransientSmsError):
            await provider.send("+15551230001", "hi", idempotency_key="k")
    finally:
        await provider.aclose()


async def test_no_status_callback_field_when_not_configured(fake_twilio: FakeTwilio):
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=FROM_NUMBER,
        base_url=fake_twilio.base_url,
    )
    try:
        await provider.send("+15551230001", "hi", idempotency_key="k")
    finally:
        await provider.aclose()
    assert "StatusCallback" not in fake_twilio.requests[0].form


# --- webhook signatures --------------------------------------------------------------------

URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}


def reference_signature(token: str, url: str, params: dict[str, str]) -> str:
    """The algorithm as Twilio documents it, written out independently of the module."""
    data = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_signature_matches_twilios_documented_example():
    # The worked example of Twilio's security documentation (token 12345).
    assert compute_signature("12345", URL, PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert compute_signature("12345", URL, PARAMS) == reference_signature("12345", URL, PARAMS)


def test_valid_signature_accepted():
    signature = reference_signature(AUTH_TOKEN, URL, PARAMS)
    assert validate_signature(AUTH_TOKEN, URL, PARAMS, signature)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url, params, sig: (url, {**params, "Digits": "9999"}, sig),
        lambda url, params, sig: (url.replace("mycompany", "evil"), params, sig),
        lambda url, params, sig: (url, params, sig[:-2] + "A="),
        lambda url, params, sig: (url, params, ""),
        lambda url, params, sig: (url, params, None),
    ],
    ids=["changed-param", "other-url", "bad-signature", "empty", "missing"],
)
def test_tampered_or_missing_signature_rejected(tamper):
    signature = reference_signature(AUTH_TOKEN, URL, PARAMS)
    url, params, sig = tamper(URL, PARAMS, signature)
    assert not validate_signature(AUTH_TOKEN, url, params, sig)


def test_wrong_token_rejected():
    signature = reference_signature("another-token", URL, PARAMS)
    assert not validate_signature(AUTH_TOKEN, URL, PARAMS, signature)


def test_default_port_spelled_either_way_is_accepted():
    signed_without_port = reference_signature(AUTH_TOKEN, "https://sms.example.org/hook", PARAMS)
    assert validate_signature(
        AUTH_TOKEN, "https://sms.example.org:443/hook", PARAMS, signed_without_port
    )


async def test_linking_with_wrong_credentials_is_refused_as_twilio_does(fake_twilio):
    fake_twilio.own("+15551230009")
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token="not-the-token",
        from_number=FROM_NUMBER,
        base_url=fake_twilio.base_url,
    )
    try:
        with pytest.raises(PermanentSmsError) as raised:
            await provider.link_number("+15551230009", CALLBACK, CALLBACK)
    finally:
        await provider.aclose()

    assert raised.value.code == 20003
    assert fake_twilio.number("+15551230009")["sms_url"] == ""  # nothing changed


# --- the log provider: a stand-in that counts every call ---------------------------------


async def test_log_provider_counts_every_call_even_concurrent_calls_with_one_key(redis):
    # Concurrent calls are written in one batch; a repeat inside the batch is still a call.
    provider = LogProvider(redis)
    key = f"delivery-{uuid.uuid4()}"
    ids = await asyncio.gather(*(provider.send("+14155550100", "hi", key) for _ in range(5)))
    ids.append(await provider.send("+14155550100", "hi", key))

    assert len(set(ids)) == 6  # six texts, as a real provider would send
    assert await provider.calls(key) == 6
    assert await provider.find_sent("+14155550100", "hi", key, datetime.now(UTC)) == ids[-1]
    recorded = [r for r in await provider.sent() if r["idempotencyKey"] == key]
    assert [r["id"] for r in recorded] == ids


async def test_log_provider_write_that_fails_fails_every_call_of_its_batch():
    # Nothing listens on the port: the batch's write fails, so every call in it raises (the
    # job makes each ``unknown``) and no count or message id is left as false evidence.
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    provider = LogProvider(unreachable)
    key = f"delivery-{uuid.uuid4()}"
    try:
        results = await asyncio.gather(
            *(provider.send("+14155550100", "hi", key) for _ in range(3)), return_exceptions=True
        )
    finally:
        await unreachable.aclose()
    assert [type(r) for r in results] == [RedisConnectionError] * 3


class AnswersLost:
    """A network between a client and Redis that loses every answer once a script call
    (EVALSHA) has gone through, as a partition that begins once a write has left: the write
    is executed, its caller times out. The connection's handshake is answered."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Future[list[None]]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> AnswersLost:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _connect(self, client: asyncio.StreamReader, answers: asyncio.StreamWriter) -> None:
        from_redis, to_redis = await asyncio.open_connection("127.0.0.1", self.redis_port)
        cut = asyncio.Event()

        async def carry_requests() -> None:
            while data := await client.read(65536):
                if b"EVALSHA" in data:
                    cut.set()
                to_redis.write(data)
                await to_redis.drain()

        async def carry_answers_until_cut() -> None:
            while data := await from_redis.read(65536):
                if not cut.is_set():
                    answers.write(data)
                    await answers.drain()

        relay = asyncio.gather(carry_requests(), carry_answers_until_cut())
        self._relays.add(relay)
        try:
            await relay
        except asyncio.CancelledError:
            pass
        finally:
            to_redis.close()
            answers.close()


async def test_log_provider_counts_a_call_once_when_its_write_is_sent_again(
    servers: TestServers, make_settings, redis
):
    # The worker's client re-sends a command once after a timeout, and the timed-out write
    # may have been executed: the same call must not count twice (a second text).
    await LogProvider(redis).send("+14155550100", "hi", "load the script")  # Redis has it now
    key = f"delivery-{uuid.uuid4()}"
    async with AnswersLost(servers.redis.port) as network:
        worker_client = create_redis(make_settings(redis_url=network.url, redis_socket_timeout=0.3))
        try:
            with pytest.raises(RedisTimeoutError):
                await LogProvider(worker_client).send("+14155550100", "hi", key)
        finally:
            await worker_client.aclose()
    assert await LogProvider(redis).calls(key) == 1
