"""The ``twilio`` provider: Twilio's REST API over aiohttp.

``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded ``To``, ``From``,
``Body`` and ``StatusCallback``, HTTP basic auth with the account SID and auth token.

The ``I-Twilio-Idempotency-Token`` header still names the delivery, but nothing relies on it:
the one Twilio documents is a header Twilio sends on its OWN webhooks, not one it honours on
outbound messages, so a second call is a second text. One call per delivery is the
database's job (delivery/store.py); this module only says what each failure means:

- not accepted, retry later (TransientSmsError): the connection was never made (connect
  error, or no connection within the timeout, pooled or new), or Twilio answered 408, 409,
  429 or 503;
- refused for good (PermanentSmsError): any other 4xx (invalid number 21211, unsubscribed
  recipient 21610, ...): the same request would get the same answer;
- unknown (UnknownOutcomeSmsError): the request left and no usable answer came back (read
  timeout, connection dropped, 500/502/504 from Twilio or a gateway, a 2xx without a sid).
  Only evidence settles these: the status callback or ``find_sent``.

aiohttp rather than httpx: measured on loopback, httpx (httpcore's pool, anyio) spent about
2 ms of CPU per send, aiohttp a quarter of a millisecond; at hundreds of sends a second per
worker that was the worker's whole CPU.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from koinonia.delivery.sms.base import PermanentSmsError, TransientSmsError, UnknownOutcomeSmsError

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# Answers that say the request was not processed: request timeout, conflict, rate limit,
# service unavailable. Other 5xx answers may come after the message was created.
RETRYABLE_STATUSES = {408, 409, 429, 503}
# aiohttp errors raised before any byte of the request reached Twilio: no connection could
# be made, or none (new or pooled) was had within the timeout.
NOT_SENT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# The request may have left: a read timeout, a dropped connection, a broken answer.
MAYBE_SENT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
# A lookup matches a message created from a minute before the claim (clock skew).
LOOKUP_SLACK = timedelta(minutes=1)


class _Answer:
    """Status and body of one response, read while its connection was held."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class TwilioProvider:
    name = "twilio"
    # Twilio's Messages list may not show a message the moment it is created.
    absence_is_evidence_after = None

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str = "https://api.twilio.com",
        status_callback_url: str | None = None,
        timeout: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        self.account_sid = account_sid
        self.from_number = from_number
        self.status_callback_url = status_callback_url
        self.timeout = timeout
        # As many pooled connections as sends the worker runs at once: with fewer, sends
        # wait for one, and a burst ends in connect timeouts (not sent: retried later).
        self.max_connections = max_connections
        credentials = f"{account_sid}:{auth_token}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()
        self._session: aiohttp.ClientSession | None = None
        self.messages_url = (
            f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """One session (and connection pool), made on first use inside the running loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                # ``connect`` covers waiting for a pooled connection and making a new one:
                # nothing was sent yet. ``sock_read`` runs once the request is written.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout, sock_read=self.timeout
                ),
                headers={"Authorization": self._authorization, "Accept": "application/json"},
            )
        return self._session

    async def _request(
        self, method: str, url: str, *, read_error: type[Exception], **kwargs: Any
    ) -> _Answer:
        """One request; an error before it was sent is transient, after it ``read_error``."""
        try:
            async with self.session.request(method, url, **kwargs) as response:
                return _Answer(response.status, await response.read())
        except NOT_SENT_ERRORS as exc:
            raise TransientSmsError(f"twilio unreachable: {exc.__class__.__name__}") from exc
        except MAYBE_SENT_ERRORS as exc:
            raise read_error(f"twilio gave no answer: {exc.__class__.__name__}") from exc

    async def send(
        self,
        to: str,
        body: str,
        idempotency_key: str,
        status_callback_url: str | None = None,
        from_number: str | None = None,
    ) -> str:
        form = {"To": to, "From": from_number or self.from_number, "Body": body}
        callback = status_callback_url or self.status_callback_url
        if callback:
            form["StatusCallback"] = callback
        response = await self._request(
            "POST",
            self.messages_url,
            data=form,
            headers={IDEMPOTENCY_HEADER: idempotency_key},
            read_error=UnknownOutcomeSmsError,
        )
        if response.status_code in (200, 201):
            try:
                sid = response.json()["sid"]
            except (ValueError, KeyError, TypeError) as exc:
                raise UnknownOutcomeSmsError("twilio answered without a message sid") from exc
            return str(sid)

        raise _error(response)

    async def find_sent(
        self, to: str, body: str, idempotency_key: str, since: datetime
    ) -> str | None:
        """Twilio's Messages list filtered by To and the day, matched on body and time."""
        earliest = since - LOOKUP_SLACK
        # A lookup sends nothing: an error on the way is only a lookup to try again.
        response = await self._request(
            "GET",
            self.messages_url,
            params={"To": to, "DateSent>": earliest.date().isoformat(), "PageSize": "100"},
            read_error=TransientSmsError,
        )
        if response.status_code != 200:
            raise _error(response)
        for message in response.json().get("messages") or []:
            created = _twilio_date(message.get("date_created"))
            if message.get("body") == body and created is not None and created >= earliest:
                return str(message["sid"])
        return None

    async def link_number(self, number: str, inbound_url: str, status_url: str) -> None:
        """Point the number's webhooks at us: find its IncomingPhoneNumber by PhoneNumber
        (``GET .../IncomingPhoneNumbers.json``), then update that resource
        (``POST .../IncomingPhoneNumbers/{Sid}.json``) with SmsUrl and StatusCallback."""
        base = self.messages_url.rsplit("/", 1)[0]
        # Linking is idempotent: an update whose answer was lost is simply made again.
        found = await self._request(
            "GET",
            f"{base}/IncomingPhoneNumbers.json",
            params={"PhoneNumber": number},
            read_error=TransientSmsError,
        )
        if found.status_code != 200:
            raise _error(found)
        try:
            numbers = found.json().get("incoming_phone_numbers") or []
            number_sid = numbers[0]["sid"] if numbers else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnknownOutcomeSmsError(f"twilio answered unexpectedly: {exc}") from exc
        if number_sid is None:
            raise PermanentSmsError(f"{number} is not a number of this Twilio account")
        updated = await self._request(
            "POST",
            f"{base}/IncomingPhoneNumbers/{number_sid}.json",
            data={
                "SmsUrl": inbound_url,
                "SmsMethod": "POST",
                "StatusCallback": status_url,
                "StatusCallbackMethod": "POST",
            },
            read_error=TransientSmsError,
        )
        if updated.status_code not in (200, 201):
            raise _error(updated)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _error_details(response: _Answer) -> tuple[int | None, str | None]:
    try:
        payload = response.json()
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    return payload.get("code"), payload.get("message")


def _twilio_date(value: str | None) -> datetime | None:
    # Twilio writes dates as RFC 2822: "Wed, 03 Dec 2026 14:40:00 +0000".
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _error(
    response: _Answer,
) -> PermanentSmsError | TransientSmsError | UnknownOutcomeSmsError:
    code, message = _error_details(response)
    text = f"twilio {response.status_code}" + (f" code {code}" if code else "")
    if message:
        text += f": {message}"
    if response.status_code in RETRYABLE_STATUSES:
        return TransientSmsError(text, code=code)
    if 400 <= response.status_code < 500:
        return PermanentSmsError(text, code=code)
    return UnknownOutcomeSmsError(text, code=code)
