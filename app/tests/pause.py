"""A point where a test holds coroutines (the racy point of a race), until it lets them go."""

from __future__ import annotations

import asyncio


class Pause:
    """Holds a coroutine at one point until the test releases it."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self.arrivals = 0
        self._arrived = asyncio.Event()

    def before(self, func):
        async def paused(*args, **kwargs):
            self.arrivals += 1
            self._arrived.set()
            self.reached.set()
            await self.release.wait()
            return await func(*args, **kwargs)

        return paused

    async def until(self, arrivals: int) -> None:
        async with asyncio.timeout(10):
            while self.arrivals < arrivals:
                self._arrived.clear()
                await self._arrived.wait()
