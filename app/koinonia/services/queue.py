"""The SAQ job queue seen from the API side: enqueueing deliveries, failed-job bookkeeping,
metrics for the operators' endpoints.  The job functions and the worker are in ``jobs.py``.

SAQ stores a finished job (complete or failed) for its ``ttl`` and then forgets it, so failed
jobs would silently vanish from ``/api/admin/queue/failed``.  The worker therefore records each
finally-failed job in a sorted set (score = failure time) and makes its stored record
permanent; ``retry_failed`` re-enqueues them and ``clear_failed`` deletes them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from saq import Job, Queue
from saq.job import Status
from saq.queue.redis import RedisQueue
from saq.utils import now

from koinonia.settings import Settings
from koinonia.stores.client import create_redis_client, failover_retry

log = logging.getLogger(__name__)

SEND_DELIVERIES = "send_deliveries"
FAILED_LIST_LIMIT = 50
# SAQ re-queues an active delivery job not touched for this long (delivery/jobs.py touches
# it every third of it); workers sweep every half of it, so a killed worker's chunk is back
# in the queue within 30 s. Shorter, a worker starved of CPU for that long (seen at a load
# of 24 on 2 cores) has its live jobs aborted: never a second text, but calls in flight
# then wait as ``unknown`` for the in-doubt sweep.
DELIVERY_JOB_HEARTBEAT_SECONDS = 20


def create_queue(settings: Settings) -> RedisQueue:
    """The queue with its own Redis client: SAQ needs raw bytes replies (no decoding)."""
    # redis-py's URL clients do not retry by default: after a Redis restart the first
    # command on each pooled (now dead) connection would fail. Reconnect and retry; the
    # queue's operations are safe to repeat (enqueue refuses a key that is waiting). Through
    # Sentinel, for as long as a failover takes.
    retry = (
        failover_retry(settings.redis_failover_retry_seconds)
        if settings.redis_sentinels
        else Retry(ExponentialBackoff(cap=1.0, base=0.05), 3)
    )
    # A burst beyond the pool WAITS redis_pool_timeout for a free connection. The default
    # pool raised MaxConnectionsError at once, and those deliveries waited for the sweep.
    client = create_redis_client(
        settings,
        decode_responses=False,
        retry=retry,
        socket_connect_timeout=settings.redis_socket_timeout,
    )
    return RedisQueue(client, name=settings.queue_name, dump=_dump_job)


def _dump_job(record: Any) -> bytes:
    # SAQ serializes every job record it stores (100 for a 100-member message): orjson does
    # it ~10x faster than the stdlib's json.dumps, and SAQ's json.loads reads it back the same.
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)


def delivery_job_key(delivery_ids: list[str], scheduled: int = 0) -> str:
    # Named after its first delivery (and its retry time): SAQ refuses a key that is
    # already waiting, so enqueueing the same chunk twice (a replayed request, the stalled
    # sweep) makes one job. A second job would be harmless anyway: it claims nothing.
    return f"deliveries:{delivery_ids[0]}" + (f"@{scheduled}" if scheduled else "")


def delivery_job_options(settings: Settings) -> dict[str, Any]:
    return {
        # SAQ's ``retries`` is the TOTAL number of attempts, first one included. A delivery
        # job fails only when the database or Redis does (provider errors are recorded per
        # delivery, with their own backoff), and a retried job claims only queued rows.
        "retries": settings.sms_max_retries + 1,
        "timeout": settings.sms_job_timeout_seconds,
        "heartbeat": DELIVERY_JOB_HEARTBEAT_SECONDS,
        "retry_delay": settings.sms_retry_delay_seconds,
        "retry_backoff": True,
    }


# SAQ's own enqueue script (saq.queue.redis.RedisQueue._enqueue, saq 0.24-0.26) looped over
# a batch of jobs: for each, the job record, its place in the incomplete set and the queued
# list, unless its key is already waiting. SAQ runs the script once per job, a round trip and
# a command each; this is one command and one round trip for a whole message's jobs.
# KEYS: incomplete set, queued list, then each job's id and abort id.
# ARGV: each job's serialized record and scheduled time. Returns 1 (enqueued) or 0 per job.
_ENQUEUE_MANY_SCRIPT = """
local results = {}
for i = 1, #ARGV / 2 do
    local job_id, abort_id = KEYS[2 * i + 1], KEYS[2 * i + 2]
    local scheduled = ARGV[2 * i]
    if not redis.call('ZSCORE', KEYS[1], job_id) and redis.call('EXISTS', abort_id) == 0 then
        redis.call('SET', job_id, ARGV[2 * i - 1])
        redis.call('ZADD', KEYS[1], scheduled, job_id)
        if scheduled == '0' then redis.call('RPUSH', KEYS[2], job_id) end
        results[i] = 1
    else
        results[i] = 0
    end
end
return results
"""
ENQUEUE_BATCH = 500  # jobs per script call: bounds how long one call holds Redis


async def enqueue_many(queue: RedisQueue, jobs: list[Job]) -> list[Job | None]:
    """``queue.enqueue(job)`` for each job, in one Redis command per batch of jobs.

    Same result per job as SAQ's ``enqueue``: the job, or None when its key is already
    waiting. Each batch is atomic (one script); the whole list, like a loop of enqueues, not.
    """
    script = queue.redis.register_script(_ENQUEUE_MANY_SCRIPT)
    queued_at = now()
    fixed_keys = [queue.namespace("incomplete"), queue.namespace("queued")]
    enqueued: list[Job | None] = []
    for start in range(0, len(jobs), ENQUEUE_BATCH):
        batch = jobs[start : start + ENQUEUE_BATCH]
        keys, args = list(fixed_keys), []
        for job in batch:
            if job.queue and job.queue.name != queue.name:
                raise ValueError(f"Job {job} registered to a different queue")
            job.queue = queue
            job.queued = queued_at
            job.status = Status.QUEUED
            keys += (job.id, job.abort_id)
            args += (queue.serialize(job), job.scheduled)
        results = await script(keys=keys, args=args)
        enqueued += [job if ok else None for job, ok in zip(batch, results, strict=True)]
    log.debug("enqueued %d of %d jobs", sum(1 for j in enqueued if j), len(jobs))
    return enqueued


def delivery_jobs(
    settings: Settings,
    delivery_ids: Iterable[uuid.UUID | str],
    scheduled: datetime | None = None,
) -> list[Job]:
    """One send job per chunk of ``sms_chunk_size`` deliveries (not before ``scheduled``)."""
    ids = [str(i) for i in delivery_ids]
    at = int(scheduled.timestamp()) + 1 if scheduled is not None else 0  # never early
    options = delivery_job_options(settings)
    size = settings.sms_chunk_size
    return [
        Job(
            function=SEND_DELIVERIES,
            kwargs={"delivery_ids": chunk},
            key=delivery_job_key(chunk, at),
            scheduled=at,
            **options,
        )
        for chunk in (ids[start : start + size] for start in range(0, len(ids), size))
    ]


async def enqueue_deliveries(
    queue: Queue,
    settings: Settings,
    delivery_ids: Iterable[uuid.UUID | str],
    *,
    scheduled: datetime | None = None,
) -> int:
    """Enqueue the deliveries' send jobs; returns how many deliveries were newly enqueued."""
    jobs = delivery_jobs(settings, delivery_ids, scheduled)
    if not isinstance(queue, RedisQueue):
        enqueued = [await queue.enqueue(job) for job in jobs]
    else:
        enqueued = await enqueue_many(queue, jobs)
    return sum(len(job.kwargs["delivery_ids"]) for job in enqueued if job is not None)


async def redis_memory_ratio(redis: Redis) -> float | None:
    """Redis's used memory as a fraction of its maxmemory; None when it has no limit."""
    info = await redis.info("memory")
    maxmemory = int(info.get("maxmemory", 0))
    if maxmemory <= 0:
        return None
    return int(info["used_memory"]) / maxmemory


class QueueHeadroom:
    """Whether the queue's Redis is below its memory high-water mark
    (``Settings.queue_memory_high_watermark``), read at most once per ``interval`` seconds in
    a process: INFO is a round trip, and memory fills over many messages, not between two."""

    def __init__(self, redis: Redis, watermark: float, interval: float = 1.0) -> None:
        self.redis, self.watermark, self.interval = redis, watermark, interval
        self._ratio: float | None = None
        self._read_at = float("-inf")

    async def ratio(self) -> float | None:
        if time.monotonic() - self._read_at >= self.interval:
            self._ratio = await redis_memory_ratio(self.redis)
            self._read_at = time.monotonic()
        return self._ratio

    async def over_watermark(self) -> float | None:
        """The memory ratio when it is at or above the mark; None while there is room."""
        ratio = await self.ratio()
        return ratio if ratio is not None and ratio >= self.watermark else None


def failed_index_key(queue: RedisQueue) -> str:
    return queue.namespace("failed-index")


async def record_failed(queue: RedisQueue, job: Job) -> None:
    """Called by the worker when a job has failed for good: keep it listable until handled."""
    async with queue.redis.pipeline(transaction=True) as pipe:
        pipe.persist(job.id)
        pipe.zadd(failed_index_key(queue), {job.key: job.completed or 0})
        await pipe.execute()


async def failed_jobs(queue: RedisQueue, limit: int = FAILED_LIST_LIMIT) -> list[Job]:
    """The most recent finally-failed jobs, newest first."""
    keys = [
        k.decode() if isinstance(k, bytes) else k
        for k in await queue.redis.zrevrange(failed_index_key(queue), 0, limit - 1)
    ]
    jobs = await queue.jobs(keys) if keys else []
    return [job for job in jobs if job is not None and job.status == Status.FAILED]


async def count_failed(queue: RedisQueue) -> int:
    return int(await queue.redis.zcard(failed_index_key(queue)))


async def retry_failed(queue: RedisQueue, settings: Settings) -> list[Job]:
    """Re-enqueue every recorded failed job with a fresh set of attempts."""
    keys = [
        k.decode() if isinstance(k, bytes) else k
        for k in await queue.redis.zrange(failed_index_key(queue), 0, -1)
    ]
    retried: list[Job] = []
    for key, job in zip(keys, await queue.jobs(keys) if keys else [], strict=True):
        await queue.redis.zrem(failed_index_key(queue), key)
        if job is None or job.status != Status.FAILED:
            continue
        options = (
            delivery_job_options(settings)
            if job.function == SEND_DELIVERIES
            else {
                "retries": job.retries,
                "timeout": job.timeout,
                "retry_delay": job.retry_delay,
                "retry_backoff": job.retry_backoff,
            }
        )
        fresh = Job(function=job.function, kwargs=job.kwargs, key=job.key, ttl=job.ttl, **options)
        # The finished record still exists under this key; SAQ's enqueue only refuses keys
        # that are waiting, so it replaces the record with the fresh job.
        if await queue.enqueue(fresh) is not None:
            retried.append(fresh)
    return retried


async def clear_failed(queue: RedisQueue) -> int:
    keys = [
        k.decode() if isinstance(k, bytes) else k
        for k in await queue.redis.zrange(failed_index_key(queue), 0, -1)
    ]
    if not keys:
        return 0
    async with queue.redis.pipeline(transaction=True) as pipe:
        pipe.delete(*(queue.job_id(key) for key in keys))
        pipe.delete(failed_index_key(queue))
        await pipe.execute()
    return len(keys)


async def queue_metrics(queue: RedisQueue) -> dict[str, Any]:
    info = await queue.info()
    workers = info.get("workers") or {}
    stats = [w.get("stats") or {} for w in workers.values()]
    return {
        "name": queue.name,
        "queued": info["queued"],
        "active": info["active"],
        "scheduled": info["scheduled"],
        "failed": await count_failed(queue),
        "workers": len(workers),
        "totals": {
            kind: sum(int(s.get(kind) or 0) for s in stats)
            for kind in ("complete", "failed", "retried", "aborted")
        },
    }


def describe_job(job: Job) -> dict[str, Any]:
    """A failed job as the admin endpoint shows it (last line of the error, not the trace)."""
    error_lines = (job.error or "").strip().splitlines()
    return {
        "id": job.key,
        "function": job.function,
        "kwargs": job.kwargs or {},
        "attempts": job.attempts,
        "error": error_lines[-1] if error_lines else None,
        "queuedAt": job.queued or None,
        "failedAt": job.completed or None,
    }
