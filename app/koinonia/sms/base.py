"""The interface every SMS provider implements, and the two kinds of failure."""

from __future__ import annotations

from typing import Protocol


class SmsError(Exception):
    """A send did not succeed."""

    def __init__(self, message: str, *, code: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code


class PermanentSmsError(SmsError):
    """Retrying cannot help (invalid or unsubscribed number, rejected request): fail at once."""


class TransientSmsError(SmsError):
    """The provider or the network failed this time; a later attempt may succeed."""


class SmsProvider(Protocol):
    name: str

    async def send(
        self, to: str, body: str, idempotency_key: str, status_callback_url: str | None = None
    ) -> str:
        """Send ``body`` to ``to`` (E.164) and return the provider's message id.

        ``idempotency_key`` is stable across retries of the same delivery, so that a retried
        job whose first attempt reached the provider does not text the member twice.
        ``status_callback_url`` overrides where the provider reports delivery status.
        """
        ...

    async def link_number(self, number: str, inbound_url: str) -> None:
        """Point the provider's inbound SMS webhook of ``number`` at ``inbound_url``."""
        ...

    async def aclose(self) -> None: ...
