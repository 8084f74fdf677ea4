"""The ``twilio`` provider: Twilio's REST API over httpx.

``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded ``To``, ``From``,
``Body`` and ``StatusCallback``, HTTP basic auth with the account SID and auth token, and the
``I-Twilio-Idempotency-Token`` header so that Twilio drops a repeat of a send it already
accepted (a job retried after its send succeeded but before the database recorded it).
"""

from __future__ import annotations

import logging

import httpx

from koinonia.sms.base import PermanentSmsError, TransientSmsError

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# HTTP statuses worth retrying: timeouts, conflicts, rate limits. Other 4xx answers reject the
# request itself (invalid "To" number 21211, unsubscribed recipient 21610, ...), and sending the
# same request again would get the same answer, so those fail at once.
RETRYABLE_CLIENT_STATUSES = {408, 409, 429}


class TwilioProvider:
    name = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str = "https://api.twilio.com",
        status_callback_url: str | None = None,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.from_number = from_number
        self.status_callback_url = status_callback_url
        self._owns_client = client is None
        self.client = client or httpx.AsyncClient(timeout=timeout)
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self.messages_url = (
            f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        )

    async def send(
        self, to: str, body: str, idempotency_key: str, status_callback_url: str | None = None
    ) -> str:
        form = {"To": to, "From": self.from_number, "Body": body}
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
        except httpx.HTTPError as exc:  # connection refused, timeouts, protocol errors
            raise TransientSmsError(f"twilio unreachable: {exc.__class__.__name__}") from exc

        if response.status_code in (200, 201):
            try:
                sid = response.json()["sid"]
            except (ValueError, KeyError, TypeError) as exc:
                raise TransientSmsError("twilio answered without a message sid") from exc
            return str(sid)

        raise _error(response)

    async def link_number(self, number: str, inbound_url: str) -> None:
        """Set the number's SmsUrl: find its IncomingPhoneNumber sid, then update it."""
        base = self.messages_url.rsplit("/", 1)[0]
        try:
            found = await self.client.get(
                f"{base}/IncomingPhoneNumbers.json",
                params={"PhoneNumber": number},
                auth=self._auth,
            )
            if found.status_code != 200:
                raise _error(found)
            numbers = found.json().get("incoming_phone_numbers") or []
            if not numbers:
                raise PermanentSmsError(f"{number} is not a number of this Twilio account")
            updated = await self.client.post(
                f"{base}/IncomingPhoneNumbers/{numbers[0]['sid']}.json",
                data={"SmsUrl": inbound_url, "SmsMethod": "POST"},
                auth=self._auth,
            )
        except httpx.HTTPError as exc:
            raise TransientSmsError(f"twilio unreachable: {exc.__class__.__name__}") from exc
        if updated.status_code not in (200, 201):
            raise _error(updated)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()


def _error_details(response: httpx.Response) -> tuple[int | None, str | None]:
    try:
        payload = response.json()
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    return payload.get("code"), payload.get("message")


def _error(response: httpx.Response) -> PermanentSmsError | TransientSmsError:
    code, message = _error_details(response)
    text = f"twilio {response.status_code}" + (f" code {code}" if code else "")
    if message:
        text += f": {message}"
    if 400 <= response.status_code < 500 and response.status_code not in RETRYABLE_CLIENT_STATUSES:
        return PermanentSmsError(text, code=code)
    return TransientSmsError(text, code=code)
