"""The one error shape for unexpected failures and rate limits (a bare app, no lifespan)."""

from __future__ import annotations

from koinonia.app import create_app
from koinonia.errors import RateLimited


async def test_unexpected_exception_is_generic_500_without_trace(settings, caplog):
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internals: password=hunter2")

    @app.get("/limited")
    async def limited() -> dict:
        raise RateLimited(retry_after_seconds=7)

    client = app.test_client()
    response = await client.get("/boom")
    assert response.status_code == 500
    text = await response.get_data(as_text=True)
    assert "hunter2" not in text and "Traceback" not in text
    assert (await response.get_json()) == {
        "error": {"code": "internal_error", "message": "Internal server error", "details": None}
    }
    # ...but the operator gets the traceback in the log.
    assert any("unhandled error" in r.getMessage() and r.exc_info for r in caplog.records)

    limited_response = await client.get("/limited")
    assert limited_response.status_code == 429
    assert limited_response.headers["Retry-After"] == "7"
    body = await limited_response.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["details"] == {"retryAfter": 7}
