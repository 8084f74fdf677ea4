"""Prometheus metrics at /metrics: request counts by route template and status."""

from __future__ import annotations

import re


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_request_counter_by_route_template_and_status(client, church_a):
    before = await (await client.get("/metrics")).get_data(as_text=True)
    await client.get("/api/members/00000000-0000-0000-0000-000000000000", headers=church_a.headers)
    await client.get("/health")
    after = await (await client.get("/metrics")).get_data(as_text=True)

    labels = {"route": "/api/members/<uuid:member_id>", "method": "GET", "status": "404"}
    assert _sample(after, "koinonia_http_requests_total", **labels) == (
        _sample(before, "koinonia_http_requests_total", **labels) + 1
    )
    health = {"route": "/health", "method": "GET", "status": "200"}
    assert _sample(after, "koinonia_http_requests_total", **health) >= 1
    assert "koinonia_http_request_duration_seconds_bucket" in after
    assert _sample(after, "koinonia_db_pool_connections", state="max") == 10
    assert _sample(after, "koinonia_build_info", release="dev") == 1


async def test_cache_events_counted(client, church_a):
    await client.get("/api/members", headers=church_a.headers)
    await client.get("/api/members", headers=church_a.headers)
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert _sample(text, "koinonia_cache_events_total", family="members", result="hit") >= 1
    assert _sample(text, "koinonia_cache_events_total", family="members", result="miss") >= 1
