"""The micro-batch collector: pure asyncio, no I/O, unit-testable on its own.

One ``session.run`` over N images costs much less than N runs of one, but a lone
request must not wait for company. The rule: a batch closes when it holds
``max_batch`` items, or when its *oldest* item has waited ``max_wait_s``. Under
load, items pile up while the previous batch is being inferred; their wait has
already run out, so the next batch is taken at once and is naturally full. At
one client the cost is at most ``max_wait_s`` (a few ms).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """A FIFO of items handed out in micro-batches by :meth:`next_batch`.

    One consumer (the worker's batch loop) calls :meth:`next_batch`; any number
    of producers call :meth:`put`. After :meth:`close`, :meth:`next_batch`
    returns the buffered items without waiting, then ``[]`` when empty.
    """

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._items: deque[tuple[float, T]] = deque()  # (arrival time on the loop clock, item)
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        """Add one item; it is stamped with its arrival time."""
        if self._closed:
            raise RuntimeError("put() on a closed Batcher")
        self._items.append((asyncio.get_running_loop().time(), item))
        self._changed.set()

    def close(self) -> None:
        """No more items will come: stop waiting for company, drain what is buffered."""
        self._closed = True
        self._changed.set()

    async def next_batch(self) -> list[T]:
        """The next batch, oldest first; ``[]`` only once closed and empty."""
        loop = asyncio.get_running_loop()
        while not self._items:
            if self._closed:
                return []
            await self._wait_for_change(None)
        deadline = self._items[0][0] + self.max_wait_s
        while len(self._items) < self.max_batch and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait_for_change(remaining):
                break
        count = min(len(self._items), self.max_batch)
        return [self._items.popleft()[1] for _ in range(count)]

    async def _wait_for_change(self, timeout: float | None) -> bool:
        """Wait until put() or close() is called; False on timeout."""
        # No await between clear() and wait(): a put() cannot slip in unseen.
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True
