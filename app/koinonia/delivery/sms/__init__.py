"""SMS providers behind one small interface, chosen by the ``sms_provider`` setting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from koinonia.delivery.sms.base import (
    PermanentSmsError,
    SmsError,
    SmsProvider,
    TransientSmsError,
    UnknownOutcomeSmsError,
)
from koinonia.delivery.sms.log import LogProvider
from koinonia.delivery.sms.signature import compute_signature, validate_signature
from koinonia.delivery.sms.twilio import TwilioProvider

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from koinonia.settings import Settings

STATUS_CALLBACK_PATH = "/api/webhooks/sms/status"

__all__ = [
    "STATUS_CALLBACK_PATH",
    "LogProvider",
    "PermanentSmsError",
    "SmsError",
    "SmsProvider",
    "TransientSmsError",
    "TwilioProvider",
    "UnknownOutcomeSmsError",
    "build_provider",
    "compute_signature",
    "validate_signature",
]


def build_provider(settings: Settings, redis: Redis) -> SmsProvider:
    """The provider the settings name; the caller closes it (``await provider.aclose()``)."""
    if settings.sms_provider == "twilio":
        missing = [
            name
            for name in ("twilio_account_sid", "twilio_auth_token", "twilio_from_number")
            if not getattr(settings, name)
        ]
        if missing:
            raise ValueError(
                "sms_provider=twilio needs " + ", ".join("KOINONIA_" + m.upper() for m in missing)
            )
        return TwilioProvider(
            account_sid=settings.twilio_account_sid or "",
            auth_token=settings.twilio_auth_token.get_secret_value()
            if settings.twilio_auth_token
            else "",
            from_number=settings.twilio_from_number or "",
            base_url=settings.twilio_base_url,
            status_callback_url=settings.public_base_url.rstrip("/") + STATUS_CALLBACK_PATH,
            # One provider per worker process, shared by its concurrent jobs.
            max_connections=settings.sms_worker_send_concurrency
            or settings.worker_concurrency * settings.sms_send_concurrency,
        )
    return LogProvider(redis)
