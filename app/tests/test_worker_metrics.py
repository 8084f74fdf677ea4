"""The SAQ worker's own Prometheus metrics: the cron cycle gauge set under the cycle lock,
``koinonia_jobs_total`` by outcome from SAQ's after_process hook, and the worker's own
``/metrics`` listener (``KOINONIA_WORKER_METRICS_BIND``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from koinonia.delivery.sms import LogProvider
from koinonia.jobs import (
    IN_DOUBT_PERIOD_SECONDS,
    PHONE_LINK_PERIOD_SECONDS,
    RECURRING_PERIOD_SECONDS,
    phone_link_recovery,
    recurring_messages,
    settle_deliveries_in_doubt,
)
from koinonia.metrics import WorkerMetrics, start_worker_metrics_server
from koinonia.models.messaging import Delivery
from koinonia.services.queue import delivery_job_key
from koinonia.settings import Settings
from koinonia.stores.locks import LockService
from tests.messaging_fixtures import create_member, enqueue_failing_job
from tests.servers import free_port

APP_DIR = Path(__file__).resolve().parents[1]
CYCLE = "koinonia_cron_last_run_cycle"
JOBS = "koinonia_jobs_total"


def _jobs(metrics: WorkerMetrics, outcome: str, function: str = "send_deliveries") -> float:
    value = metrics.registry.get_sample_value(JOBS, {"function": function, "outcome": outcome})
    return value or 0.0


async def _one_delivery(client, headers) -> Delivery:
    """POST a one-recipient message (create the worker first: it empties the queue)."""
    member = await create_member(client, headers)
    response = await client.post(
        "/api/messages",
        json={"content": "Count me", "targetType": "members", "targetIds": [member["id"]]},
        headers=headers,
    )
    assert response.status_code == 202
    message = await response.get_json()
    return await Delivery.get(message_id=message["id"])


# --- cron cycle gauge --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "job", "period"),
    [
        ("recurring-messages", recurring_messages, RECURRING_PERIOD_SECONDS),
        ("phone-link-recovery", phone_link_recovery, PHONE_LINK_PERIOD_SECONDS),
        ("settle-deliveries-in-doubt", settle_deliveries_in_doubt, IN_DOUBT_PERIOD_SECONDS),
    ],
)
async def test_cycle_run_under_the_lock_sets_the_gauge_to_the_cycle(
    make_worker, redis: Redis, cron, job, period
):
    step = await make_worker()
    prefix = f"test-wm-{uuid.uuid4().hex[:8]}:"
    servers = []
    for holder in ("server-a:1", "server-b:2"):
        ctx = dict(step.worker.context)
        ctx["locks"] = LockService(redis, prefix=prefix, holder=holder)
        ctx["provider"] = LogProvider(redis)
        ctx["metrics"] = WorkerMetrics()  # one per process, as on two servers
        servers.append(ctx)

    before = int(time.time() // period)
    outcomes = await asyncio.gather(*(job(ctx) for ctx in servers))
    after = int(time.time() // period)

    assert sorted(o["ran"] for o in outcomes) == [False, True]
    for ctx, outcome in zip(servers, outcomes, strict=True):
        value = ctx["metrics"].registry.get_sample_value(CYCLE, {"cron": cron})
        if outcome["ran"]:
            assert value is not None and before <= value <= after
        else:
            # The server that did not get the lock did not run the cycle: no series.
            assert value is None


# --- jobs by outcome ---------------------------------------------------------------------------


async def test_finally_failed_job_counts_as_failed(make_worker):
    worker = await make_worker()
    metrics: WorkerMetrics = worker.worker.context["metrics"]
    await enqueue_failing_job(worker.queue, "deliveries:broken")

    assert await worker.run_next()

    assert (await worker.job("deliveries:broken")).status.value == "failed"
    assert _jobs(metrics, "failed") == 1
    assert _jobs(metrics, "retried") == 0
    assert _jobs(metrics, "complete") == 0


class HangingProvider(LogProvider):
    """Its first send never answers (until the job's timeout cancels it)."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.calls = 0

    async def send(
        self, to, body, idempotency_key, status_callback_url=None, from_number=None
    ) -> str:
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()
        return await super().send(to, body, idempotency_key, status_callback_url, from_number)


async def test_retried_then_complete_job_counts_each_outcome(client, church_a, make_worker, redis):
    provider = HangingProvider(redis)
    worker = await make_worker(provider)
    metrics: WorkerMetrics = worker.worker.context["metrics"]
    delivery = await _one_delivery(client, church_a.headers)
    key = delivery_job_key([str(delivery.id)])
    await (await worker.job(key)).update(timeout=1)

    assert await worker.run_next()  # times out in the provider call: SAQ retries the job
    assert _jobs(metrics, "retried") == 1
    assert _jobs(metrics, "failed") == 0
    await worker.fast_forward(key)
    assert await worker.run_next()  # the retry claims nothing: the delivery is not queued
    assert provider.calls == 1

    assert _jobs(metrics, "complete") == 1
    assert _jobs(metrics, "retried") == 1
    assert _jobs(metrics, "failed") == 0


# --- the worker's /metrics listener ------------------------------------------------------------


async def test_worker_metrics_listener_serves_both_metrics(make_worker):
    worker = await make_worker()
    metrics: WorkerMetrics = worker.worker.context["metrics"]
    await enqueue_failing_job(worker.queue, "deliveries:broken")
    assert await worker.run_next()
    metrics.cron_last_run_cycle.labels(cron="recurring-messages").set(12345)

    server, thread = start_worker_metrics_server("127.0.0.1:0", metrics)
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    assert response.status_code == 200
    text = response.text
    assert 'koinonia_jobs_total{function="send_deliveries",outcome="failed"} 1.0' in text
    assert 'koinonia_cron_last_run_cycle{cron="recurring-messages"} 12345.0' in text


async def test_koinonia_worker_process_serves_metrics_on_the_bind(servers, migrated):
    """``koinonia worker`` itself listens on KOINONIA_WORKER_METRICS_BIND."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOINONIA_")}
    env.update(
        PYTHONPATH=str(APP_DIR),
        KOINONIA_DATABASE_URL=servers.pgbouncer.url,
        KOINONIA_MIGRATION_DATABASE_URL=servers.postgres.url,
        KOINONIA_REDIS_URL=servers.redis.url,
        # A queue of its own: this worker must not take other tests' jobs.
        KOINONIA_QUEUE_NAME=f"test-worker-metrics-{uuid.uuid4().hex[:8]}",
        KOINONIA_WORKER_METRICS_BIND=f"127.0.0.1:{port}",
        KOINONIA_WORKER_SHUTDOWN_GRACE_SECONDS="2",
        KOINONIA_LOG_LEVEL="WARNING",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koinonia.cli",
        "worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    text = None
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(300):
                if proc.returncode is not None:
                    break
                try:
                    response = await http.get(f"http://127.0.0.1:{port}/metrics")
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                assert response.status_code == 200
                text = response.text
                break
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
        except TimeoutError:
            proc.kill()
            raise
    assert text is not None, stderr.decode(errors="replace")[-2000:]
    assert "# TYPE koinonia_jobs_total counter" in text
    assert "# TYPE koinonia_cron_last_run_cycle gauge" in text
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]


# --- the setting -------------------------------------------------------------------------------


def test_worker_metrics_bind_setting(make_settings):
    assert Settings.model_fields["worker_metrics_bind"].default == "127.0.0.1:9101"
    assert make_settings(worker_metrics_bind="").worker_metrics_bind == ""
    assert make_settings(worker_metrics_bind="0.0.0.0:9200").worker_metrics_bind == "0.0.0.0:9200"
    with pytest.raises(ValueError, match="host:port"):
        make_settings(worker_metrics_bind="9101x")
