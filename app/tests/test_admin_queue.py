"""Operators' queue and lock endpoints."""

from __future__ import annotations

import pytest
from saq.job import Status

from koinonia.web.state import get_state
from tests.messaging_fixtures import create_member, enqueue_failing_job

ADMIN_ROUTES = [
    ("GET", "/api/admin/queue/metrics"),
    ("GET", "/api/admin/queue/health"),
    ("GET", "/api/admin/queue/failed"),
    ("POST", "/api/admin/queue/retry-failed"),
    ("POST", "/api/admin/queue/clear-failed"),
    ("GET", "/api/admin/locks"),
    ("DELETE", "/api/admin/locks/some-lock"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_operators_only(app, church_a, method, path):
    anonymous = await app.test_client().open(path, method=method)
    assert anonymous.status_code == 401
    member_of_church = await app.test_client().open(path, method=method, headers=church_a.headers)
    assert member_of_church.status_code == 403


async def test_metrics_and_health_follow_the_queue(client, church_a, operator, make_worker):
    worker = await make_worker()
    member = await create_member(client, church_a.headers)
    await client.post(
        "/api/messages",
        json={"content": "hi", "targetType": "members", "targetIds": [member["id"]]},
        headers=church_a.headers,
    )

    metrics = await (
        await client.get("/api/admin/queue/metrics", headers=operator.headers)
    ).get_json()
    assert metrics["name"] == "koinonia-sms"
    assert metrics["queued"] == 1 and metrics["active"] == 0
    health = await client.get("/api/admin/queue/health", headers=operator.headers)
    assert health.status_code == 200
    assert (await health.get_json())["status"] == "degraded"  # jobs wait: no worker running

    await worker.worker.worker_info()  # what a running worker reports every few seconds
    health = await (
        await client.get("/api/admin/queue/health", headers=operator.headers)
    ).get_json()
    assert health["status"] == "healthy" and health["workers"] >= 1

    assert await worker.run_until_idle() == 1
    metrics = await (
        await client.get("/api/admin/queue/metrics", headers=operator.headers)
    ).get_json()
    assert metrics["queued"] == 0


async def test_clear_failed_forgets_failed_jobs(client, operator, make_worker):
    worker = await make_worker()
    key = "deliveries:broken"
    await enqueue_failing_job(worker.queue, key)
    assert await worker.run_next()
    assert (await worker.job(key)).status == Status.FAILED

    cleared = await client.post("/api/admin/queue/clear-failed", headers=operator.headers)
    assert (await cleared.get_json())["cleared"] == 1
    failed = await (
        await client.get("/api/admin/queue/failed", headers=operator.headers)
    ).get_json()
    assert failed["data"] == []
    assert await worker.queue.job(key) is None


async def test_locks_listed_and_force_released(app, client, operator):
    locks = get_state(app).locks
    held = await locks.acquire("admin-test-lock", ttl_ms=60_000)
    assert held is not None

    listing = await (await client.get("/api/admin/locks", headers=operator.headers)).get_json()
    [entry] = [lock for lock in listing["data"] if lock["name"] == "admin-test-lock"]
    assert entry["holder"] == held.holder
    assert 0 < entry["ttlMs"] <= 60_000

    released = await client.delete("/api/admin/locks/admin-test-lock", headers=operator.headers)
    assert released.status_code == 204
    assert not await locks.is_held("admin-test-lock")
    again = await client.delete("/api/admin/locks/admin-test-lock", headers=operator.headers)
    assert again.status_code == 404


async def test_queue_depth_in_prometheus_metrics(client, church_a, make_worker):
    await make_worker()  # empties the queue
    member = await create_member(client, church_a.headers)
    await client.post(
        "/api/messages",
        json={"content": "hi", "targetType": "members", "targetIds": [member["id"]]},
        headers=church_a.headers,
    )

    text = await (await client.get("/metrics")).get_data(as_text=True)

    assert 'koinonia_queue_jobs{queue="koinonia-sms",state="queued"} 1.0' in text
    assert 'koinonia_queue_jobs{queue="koinonia-sms",state="active"} 0.0' in text
