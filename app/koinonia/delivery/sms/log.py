"""The ``log`` provider: records sends in Redis instead of texting anyone.

It is the default for development and the test stack. It records EVERY call it receives,
with no deduplication by idempotency key (a real provider texts twice when called twice), so
counting its records counts provider calls:

- the Redis list ``sms:log`` (newest last, capped at 10,000): one JSON record per call;
- the hash ``sms:log:calls:<UTC day>`` (kept 2 days): calls per idempotency key (per
  delivery), one HINCRBY per call, uncapped by the list's trimming;
- the hash ``sms:log:last:<UTC day>``: the message id of each key's latest call, what
  ``find_sent`` answers. It is written with the count, which makes its absence proof that no
  call was accepted, once no call given up on can still arrive (``absence_is_evidence_after``:
  a write whose answer was lost may still land, its bytes retransmitted by the kernel after a
  network partition heals).

Calls that arrive together (a chunk's concurrent sends) are written together: one script
(``RECORD_CALLS``), one round trip, for every call waiting when the previous write finished.
Each call returns only once its own record is committed, and a failed write fails every call
in it (each then ``unknown``, as any provider error the provider did not classify).

A call is one ``send``, and is counted once however often its write reaches Redis: the
client re-sends a command once when it met a dead connection or a timeout, and a timed-out
write may have been executed (or still be, as above). So each call carries its own id
(the message id it answers), and the script counts only ids it has not seen (the hash
``sms:log:ids:<UTC day>``). A second ``send`` for the same delivery is a new call with a new
id, counted again, as a second request to Twilio is a second text.

Phone numbers and message bodies are personal data: they are in the Redis record (that is
what the stand-in is for) but never in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger(__name__)

SENT_LIST_KEY = "sms:log"
CALLS_KEY_PREFIX = "sms:log:calls:"
LAST_ID_KEY_PREFIX = "sms:log:last:"
IDS_KEY_PREFIX = "sms:log:ids:"
LINKED_NUMBERS_KEY = "sms:log:linked"
MAX_RECORDED = 10_000
# How long a write given up on may still reach Redis: its socket timeout (seconds, and once
# more when the client re-sends it), then the kernel's retransmissions of the closed
# connection's data (8 by default, tcp_orphan_retries; the last about 51 s after the first
# with the least retransmission timeout of 200 ms).
LATE_WRITE_SECONDS = 120
# Each day's hashes live two days: a call is counted for at least 24 h after it was made.
DAY_TTL_SECONDS = 2 * 24 * 3600


def day_keys(prefix: str, now: datetime | None = None) -> list[str]:
    """Today's and yesterday's (UTC) hash of ``prefix``: where the last 24 h of calls are."""
    today = (now or datetime.now(UTC)).date()
    return [f"{prefix}{day.isoformat()}" for day in (today, today - timedelta(days=1))]


# KEYS: the list, the day's calls, last-id and seen-ids hashes. ARGV: the list's cap, the
# hashes' ttl, then (message id, idempotency key, JSON record) per call. Atomic, as a script.
RECORD_CALLS = """
for i = 3, #ARGV, 3 do
  local id, key, record = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', KEYS[4], id, 1) == 1 then
    redis.call('RPUSH', KEYS[1], record)
    redis.call('HINCRBY', KEYS[2], key, 1)
    redis.call('HSET', KEYS[3], key, id)
  end
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
for k = 2, 4 do
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
"""


class LogProvider:
    name = "log"
    absence_is_evidence_after = LATE_WRITE_SECONDS

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._record_calls = redis.register_script(RECORD_CALLS)
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def send(
        self,
        to: str,
        body: str,
        idempotency_key: str,
        status_callback_url: str | None = None,
        from_number: str | None = None,
    ) -> str:
        record = {
            "id": "LOG" + uuid.uuid4().hex,
            "to": to,
            "from": from_number,
            "body": body,
            "idempotencyKey": idempotency_key,
            "at": time.time(),
        }
        recorded: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((record, recorded))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting(), name="sms-log-writer")
        # Shielded: a cancelled send leaves its call to be written (it may be already), so
        # it is recorded exactly when it crossed; the caller treats it as in flight.
        message_id = await asyncio.shield(recorded)
        log.debug("sms (log provider) %s recorded as %s", idempotency_key, message_id)
        return message_id

    async def _write_waiting(self) -> None:
        """Write every waiting call, batch after batch, until none waits."""
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._write([record for record, _ in batch])
            except BaseException as exc:  # every call of the batch shares the write's fate
                failure = (
                    exc
                    if isinstance(exc, Exception)
                    else RuntimeError("the log provider stopped while writing")
                )
                # The error's class and text only: a record holds a number and a body.
                log.warning(
                    "sms (log provider) write of %d call(s) failed: %s: %s",
                    len(batch),
                    failure.__class__.__name__,
                    failure,
                )
                for _, recorded in batch:
                    if not recorded.done():
                        recorded.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
            else:
                for record, recorded in batch:
                    if not recorded.done():
                        recorded.set_result(record["id"])

    async def _write(self, records: list[dict[str, Any]]) -> None:
        keys = [
            SENT_LIST_KEY,
            *(day_keys(p)[0] for p in (CALLS_KEY_PREFIX, LAST_ID_KEY_PREFIX, IDS_KEY_PREFIX)),
        ]
        args: list[Any] = [MAX_RECORDED, DAY_TTL_SECONDS]
        for record in records:
            args += [record["id"], record["idempotencyKey"], json.dumps(record)]
        await self._record_calls(keys=keys, args=args)

    async def find_sent(
        self, to: str, body: str, idempotency_key: str, since: datetime
    ) -> str | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in day_keys(LAST_ID_KEY_PREFIX):
                pipe.hget(key, idempotency_key)
            found = next((f for f in await pipe.execute() if f is not None), None)
        if found is None:
            return None
        return found.decode() if isinstance(found, bytes) else str(found)

    async def calls(self, idempotency_key: str) -> int:
        """How many calls carried this key (at least the last 24 h of them)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in day_keys(CALLS_KEY_PREFIX):
                pipe.hget(key, idempotency_key)
            return sum(int(n or 0) for n in await pipe.execute())

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
        """The Redis client belongs to the caller; calls still waiting are written first."""
        if self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
