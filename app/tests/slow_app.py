"""The real app plus one slow route, for the graceful-shutdown test (run by Hypercorn in a
subprocess via ``koinonia serve --app tests.slow_app:create``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from quart import Blueprint, Quart, request

from koinonia.app import asgi_app

slow = Blueprint("slow_test", __name__)


@slow.get("/test/slow")
async def slow_request() -> dict:
    seconds = float(request.args.get("seconds", "2"))
    marker = os.environ.get("SLOW_MARKER")
    if marker:
        await asyncio.to_thread(Path(marker).write_text, "started")
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def create() -> Quart:
    app = asgi_app()
    app.register_blueprint(slow)
    return app
