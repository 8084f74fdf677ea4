"""The interface every SMS provider implements, and the three kinds of failure.

Which kind a provider raises decides what the delivery becomes (delivery/store.py):

- ``TransientSmsError``: known NOT to have been accepted (connection refused, a 429/503
  answer); the delivery is queued again with backoff.
- ``PermanentSmsError``: refused for good (invalid or unsubscribed number); ``failed`` at once.
- ``UnknownOutcomeSmsError``: the request may have been accepted (a timeout after it left, a
  5xx from a gateway); ``unknown`` until evidence (status callback, ``find_sent``) says.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class SmsError(Exception):
    """A send did not succeed."""

    def __init__(self, message: str, *, code: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code


class PermanentSmsError(SmsError):
    """Retrying cannot help (invalid or unsubscribed number, rejected request): fail at once."""


class TransientSmsError(SmsError):
    """The provider did not accept the text this time; a later attempt may succeed."""


class UnknownOutcomeSmsError(SmsError):
    """The request may or may not have been accepted: sending again could text twice."""


class SmsProvider(Protocol):
    name: str
    # Seconds after a claim from which ``find_sent`` returning None proves that no call for
    # it was accepted (the log provider counts every call it receives), or None when absence
    # never proves it (Twilio's list may lag behind a send). Not at once: a call given up on
    # may still reach the provider while the kernel retransmits its closed connection's data.
    absence_is_evidence_after: float | None

    async def send(
        self,
        to: str,
        body: str,
        idempotency_key: str,
        status_callback_url: str | None = None,
        from_number: str | None = None,
    ) -> str:
        """Send ``body`` to ``to`` (E.164) and return the provider's message id.

        ``from_number``: the church's own linked number; None sends from the platform's.

        ``idempotency_key`` names the delivery (``delivery-<id>``). It is NOT relied on to drop
        repeats: we found no documentation that Twilio honours one on outbound messages, so
        the database allows one call per delivery (delivery/store.py).
        ``status_callback_url`` overrides where the provider reports delivery status.
        """
        ...

    async def find_sent(
        self, to: str, body: str, idempotency_key: str, since: datetime
    ) -> str | None:
        """The provider's id of a text to ``to`` with ``body`` accepted since ``since``, if the
        provider has one: the evidence that settles an ``unknown`` delivery."""
        ...

    async def link_number(self, number: str, inbound_url: str, status_url: str) -> None:
        """Point ``number``'s inbound SMS webhook at ``inbound_url`` and its status callback
        at ``status_url``."""
        ...

    async def aclose(self) -> None: ...
