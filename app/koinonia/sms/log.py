"""The ``log`` provider: records sends in Redis instead of texting anyone.

It is the default for development and the test stack.  Sends are appended to the Redis list
``sms:log`` (newest last, capped) and logged, and it honours the idempotency key like a real
provider would, so the delivery pipeline behaves the same with it as with Twilio.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger(__name__)

SENT_LIST_KEY = "sms:log"
IDEMPOTENCY_KEY_PREFIX = "sms:log:idempotency:"
LINKED_NUMBERS_KEY = "sms:log:linked"
MAX_RECORDED = 10_000
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class LogProvider:
    name = "log"

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def send(
        self, to: str, body: str, idempotency_key: str, status_callback_url: str | None = None
    ) -> str:
        message_id = "LOG" + uuid.uuid4().hex
        # SET NX claims the key for this send; a repeat returns the first send's id unsent.
        claimed = await self.redis.set(
            IDEMPOTENCY_KEY_PREFIX + idempotency_key,
            message_id,
            nx=True,
            ex=IDEMPOTENCY_TTL_SECONDS,
        )
        if not claimed:
            existing = await self.redis.get(IDEMPOTENCY_KEY_PREFIX + idempotency_key)
            if existing is not None:
                return existing.decode() if isinstance(existing, bytes) else str(existing)
        record = {
            "id": message_id,
            "to": to,
            "body": body,
            "idempotencyKey": idempotency_key,
            "at": time.time(),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(SENT_LIST_KEY, json.dumps(record))
            pipe.ltrim(SENT_LIST_KEY, -MAX_RECORDED, -1)
            await pipe.execute()
        log.info("sms (log provider) to %s: %s", to, body)
        return message_id

    async def link_number(self, number: str, inbound_url: str) -> None:
        await self.redis.hset(LINKED_NUMBERS_KEY, number, inbound_url)
        log.info("sms (log provider) linked %s to %s", number, inbound_url)

    async def sent(self) -> list[dict[str, Any]]:
        """Everything recorded so far, oldest first."""
        return [json.loads(item) for item in await self.redis.lrange(SENT_LIST_KEY, 0, -1)]

    async def aclose(self) -> None:
        """The Redis client belongs to the caller."""
