"""The ``twilio`` provider: Twilio's REST API over httpx.

``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded ``To``, ``From``,
``Body`` and ``StatusCallback``, HTTP basic auth with the account SID and auth token.

The ``I-Twilio-Idempotency-Token`` header still names the delivery, but nothing relies on it:
the one Twilio documents is a header Twilio sends on its OWN webhooks, not one it honours on
outbound messages, so a second call is a second text. One call per delivery is the
database's job (delivery/store.py); this module only says what each failure means:

- not accepted, retry later (TransientSmsError): the connection was never made (connect
  error or timeout, no free pooled connection), or Twilio answered 408, 409, 429 or 503;
- refused for good (PermanentSmsError): any other 4xx (invalid number 21211, unsubscribed
  recipient 21610, ...): the same request would get the same answer;
- unknown (UnknownOutcomeSmsError): the request left and no usable answer came back (read or
  write timeout, connection dropped, 500/502/504 from Twilio or a gateway, a 2xx without a
  sid). Only evidence settles these: the status callback or ``find_sent``.
"""

from __future__ import annotations

import itertools
import logging
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx

from koinonia.delivery.sms.base import PermanentSmsError, TransientSmsError, UnknownOutcomeSmsError

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# Answers that say the request was not processed: request timeout, conflict, rate limit,
# service unavailable. Other 5xx answers may come after the message was created.
RETRYABLE_STATUSES = {408, 409, 429, 503}
# httpx errors raised before any byte of the request reached Twilio.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
CONNECTIONS_PER_CLIENT = 10
# A lookup matches a message created from a minute before the claim (clock skew).
LOOKUP_SLACK = timedelta(minutes=1)


class TwilioProvider:
    name = "twilio"
    # Twilio's Messages list may not show a message the moment it is created.
    absence_is_evidence = False

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
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.from_number = from_number
        self.status_callback_url = status_callback_url
        self._owns_client = client is None
        # As many pooled connections as sends the worker runs at once (with fewer, sends wait
        # for one and a burst ends in PoolTimeout), spread over clients of at most
        # CONNECTIONS_PER_CLIENT: httpcore's pool work per request grows with its pooled
        # connections. Measured on loopback (200 ms answers): 100 sends on one client of
        # 100 connections took 1.5-4.2 s once the connections were kept alive, on ten
        # clients of 10 connections 0.38 s.
        self._clients = (
            [client]
            if client is not None
            else [
                httpx.AsyncClient(
                    timeout=timeout,
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                )
                for size in _shares(max_connections, CONNECTIONS_PER_CLIENT)
            ]
        )
        self._next_client = itertools.cycle(self._clients)
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self.messages_url = (
            f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        )

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
        try:
            response = await self.client.post(
                self.messages_url,
                data=form,
                auth=self._auth,
                headers={IDEMPOTENCY_HEADER: idempotency_key, "Accept": "application/json"},
            )
        except NOT_SENT_ERRORS as exc:
            raise TransientSmsError(f"twilio unreachable: {exc.__class__.__name__}") from exc
        except httpx.HTTPError as exc:  # the request left: read timeout, dropped connection
            raise UnknownOutcomeSmsError(
                f"twilio gave no answer: {exc.__class__.__name__}"
            ) from exc

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
        try:
            response = await self.client.get(
                self.messages_url,
                params={"To": to, "DateSent>": earliest.date().isoformat(), "PageSize": 100},
                auth=self._auth,
            )
        except httpx.HTTPError as exc:
            raise TransientSmsError(f"twilio unreachable: {exc.__class__.__name__}") from exc
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
        try:
            found = await self.client.get(
                f"{base}/IncomingPhoneNumbers.json",
                params={"PhoneNumber": number},
                auth=self._auth,
                headers={"Accept": "application/json"},
            )
            if found.status_code != 200:
                raise _error(found)
            numbers = found.json().get("incoming_phone_numbers") or []
            if not numbers:
                raise PermanentSmsError(f"{number} is not a number of this Twilio account")
            updated = await self.client.post(
                f"{base}/IncomingPhoneNumbers/{numbers[0]['sid']}.json",
                data={
                    "SmsUrl": inbound_url,
                    "SmsMethod": "POST",
                    "StatusCallback": status_url,
                    "StatusCallbackMethod": "POST",
                },
                auth=self._auth,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise TransientSmsError(f"twilio unreachable: {exc.__class__.__name__}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # an answer not shaped as documented
            raise UnknownOutcomeSmsError(f"twilio answered unexpectedly: {exc}") from exc
        if updated.status_code not in (200, 201):
            raise _error(updated)

    @property
    def client(self) -> httpx.AsyncClient:
        """The next of the clients, in turn."""
        return next(self._next_client)

    async def aclose(self) -> None:
        if self._owns_client:
            for client in self._clients:
                await client.aclose()


def _error_details(response: httpx.Response) -> tuple[int | None, str | None]:
    try:
        payload = response.json()
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    return payload.get("code"), payload.get("message")


def _shares(total: int, per_client: int) -> list[int]:
    """``total`` connections as client sizes of at most ``per_client`` (10, 10, 5 for 25)."""
    full, rest = divmod(max(total, 1), per_client)
    return [per_client] * full + ([rest] if rest else [])


def _twilio_date(value: str | None) -> datetime | None:
    # Twilio writes dates as RFC 2822: "Wed, 03 Dec 2026 14:40:00 +0000".
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _error(
    response: httpx.Response,
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
