"""What a process keeps of Redis's data for itself, and the rules that keep it honest.

A ``LocalCopy`` is a bounded map consulted only while ``enabled`` (while the invalidation
subscription that evicts it is up); each entry is kept at most ``max_age`` seconds. Every
clear or eviction bumps an epoch, and a lookup stores its answer only if the epoch is the one
it began under, so a load that raced an invalidation cannot put back what was invalidated.
The session cache (``session_cache.SessionCache``) and the page copy (``cache.LocalPages``)
are both one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class LocalCopy(Generic[V]):
    def __init__(
        self,
        max_age_seconds: float,
        *,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age_seconds
        self.max_entries = max_entries
        self.clock = clock
        self.enabled = False
        self._entries: dict[str, V] = {}
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def epoch(self) -> int:
        return self._epoch

    def accepts(self, epoch: int) -> bool:
        """Whether a lookup that began at ``epoch`` may store what it read."""
        return self.enabled and self.max_age > 0 and epoch == self._epoch

    def _store(self, key: str, value: V) -> None:
        if key not in self._entries and len(self._entries) >= self.max_entries:
            # Oldest insertion first (dicts keep insertion order); a refetch costs one trip.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = value

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    def disable(self) -> None:
        self.enabled = False
        self.clear()

    def enable(self) -> None:
        self.clear()
        self.enabled = self.max_age > 0
