"""A test's wait for things to arrive (deliveries, replies) until there are enough, without polling."""

from __future__ import annotations

import asyncio


class Tally:
    """Counts what arrives: a subclass calls :meth:`arrived` after each arrival and says in
    :meth:`size` what it has so far; :meth:`wait_for` returns once ``size()`` reaches a count."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def size(self) -> int:
        raise NotImplementedError

    def arrived(self) -> None:
        self._changed.set()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while self.size() < count:
                self._changed.clear()
                await self._changed.wait()
