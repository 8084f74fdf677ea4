"""Analytics summary: figures, window validation and the 5-minute cache."""

from __future__ import annotations

from koinonia.stores.cache import ANALYTICS, cache_key, version_key, versioned_key


async def test_summary_counts_members_and_opt_ins(client, church_a, redis):
    for n, opt_in in ((1, True), (2, True), (3, False)):
        response = await client.post(
            "/api/members",
            headers=church_a.headers,
            json={"firstName": f"S{n}", "phone": f"+1 312 555 {n:04d}", "optInSms": opt_in},
        )
        assert response.status_code == 201
    response = await client.get("/api/analytics/summary?days=7", headers=church_a.headers)
    assert response.status_code == 200
    assert response.headers["X-Cache"] == "MISS"
    body = await response.get_json()
    assert body["members"] == {"total": 3, "optedIn": 2}
    assert body["window"]["days"] == 7
    assert body["messages"] == {"total": 0, "byStatus": {}}
    assert body["deliveries"]["total"] == 0

    again = await client.get("/api/analytics/summary?days=7", headers=church_a.headers)
    assert again.headers["X-Cache"] == "HIT"
    version = await redis.get(version_key(ANALYTICS, church_a.church_id)) or 0
    ttl = await redis.ttl(versioned_key(cache_key(ANALYTICS, church_a.church_id, 7), version))
    assert 240 < ttl <= 300  # 5 minutes


async def test_summary_window_validation(client, church_a):
    for days in ("0", "1000", "x"):
        response = await client.get(f"/api/analytics/summary?days={days}", headers=church_a.headers)
        assert response.status_code == 422, days


async def test_summary_requires_auth(client):
    assert (await client.get("/api/analytics/summary")).status_code == 401
