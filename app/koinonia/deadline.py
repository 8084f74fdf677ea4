"""Answer within a deadline even when the awaited work cannot be cancelled promptly.

``asyncio.timeout`` only returns once the cancelled work has unwound — and cancelling an
asyncpg query means sending a cancel request to the server, which through a paused or dead
PgBouncer can take the full command timeout. A health probe must not wait for that: the work
runs in its own task, the caller gets ``TimeoutError`` at the deadline, and the task finishes
its cancellation in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Strong references to abandoned tasks until they finish unwinding (the event loop itself
# only keeps weak ones, so an unreferenced task could be garbage-collected mid-cleanup).
_unwinding: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _unwinding.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception never retrieved"


async def within(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    task.cancel()
    _unwinding.add(task)
    task.add_done_callback(_forget)
    raise TimeoutError(f"no answer within {seconds} s")
