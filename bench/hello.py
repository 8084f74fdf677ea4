"""The framework ceiling: a bare Quart hello-world, served by Hypercorn like the service."""

from quart import Quart

app = Quart(__name__)


@app.get("/")
async def hello() -> dict[str, str]:
    return {"status": "ok"}
