"""The ``log`` provider: records sends in Redis instead of texting anyone.

It is the default for development and the test stack. It records EVERY call it receives,
with no deduplication by idempotency key (a real provider texts twice when called twice), so
counting its records counts provider calls:

- the Redis list ``sms:log`` (newest last, capped at 10,000): one JSON record per call;
- the counter ``sms:log:calls:<idempotency key>`` (24 h): calls per delivery, uncapped by the
  list's trimming. It is written in the same transaction as the record, which makes its
  absence proof that no call was accepted (``absence_is_evidence``).

Phone numbers and message bodies are personal data: they are in the Redis record (that is
what the stand-in is for) but never in the log.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger(__name__)

SENT_LIST_KEY = "sms:log"
CALLS_KEY_PREFIX = "sms:log:calls:"
LAST_ID_KEY_PREFIX = "sms:log:last:"
LINKED_NUMBERS_KEY = "sms:log:linked"
MAX_RECORDED = 10_000
CALLS_TTL_SECONDS = 24 * 3600


class LogProvider:
    name = "log"
    absence_is_evidence = True

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def send(
        self,
        to: str,
        body: str,
        idempotency_key: str,
        status_callback_url: str | None = None,
        from_number: str | None = None,
    ) -> str:
        message_id = "LOG" + uuid.uuid4().hex
        record = {
            "id": message_id,
            "to": to,
            "from": from_number,
            "body": body,
            "idempotencyKey": idempotency_key,
            "at": time.time(),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(SENT_LIST_KEY, json.dumps(record))
            pipe.ltrim(SENT_LIST_KEY, -MAX_RECORDED, -1)
            pipe.incr(CALLS_KEY_PREFIX + idempotency_key)
            pipe.expire(CALLS_KEY_PREFIX + idempotency_key, CALLS_TTL_SECONDS)
            pipe.set(LAST_ID_KEY_PREFIX + idempotency_key, message_id, ex=CALLS_TTL_SECONDS)
            await pipe.execute()
        log.debug("sms (log provider) %s recorded as %s", idempotency_key, message_id)
        return message_id

    async def find_sent(
        self, to: str, body: str, idempotency_key: str, since: datetime
    ) -> str | None:
        found = await self.redis.get(LAST_ID_KEY_PREFIX + idempotency_key)
        if found is None:
            return None
        return found.decode() if isinstance(found, bytes) else str(found)

    async def calls(self, idempotency_key: str) -> int:
        """How many calls carried this key (within the last 24 h)."""
        return int(await self.redis.get(CALLS_KEY_PREFIX + idempotency_key) or 0)

    async def link_number(self, number: str, inbound_url: str, status_url: str) -> None:
        await self.redis.hset(
            LINKED_NUMBERS_KEY,
            number,
            json.dumps({"smsUrl": inbound_url, "statusCallback": status_url}),
        )
        log.info("sms (log provider) linked a number to %s", inbound_url)

    async def sent(self) -> list[dict[str, Any]]:
        """Everything recorded so far, oldest first."""
        return [json.loads(item) for item in await self.redis.lrange(SENT_LIST_KEY, 0, -1)]

    async def aclose(self) -> None:
        """The Redis client belongs to the caller."""
