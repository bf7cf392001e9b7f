"""Single-flight: concurrent calls for the same key share one computation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs at most one computation per key at a time; callers that arrive meanwhile join it.

    The computation runs in its own task, so a caller that goes away (client
    disconnect) cancels only its own wait, never the work the others share.
    Results are not remembered: once a computation ends, the next call starts anew.
    """

    def __init__(self, on_join: Callable[[], None] | None = None) -> None:
        self._running: dict[str, asyncio.Task[T]] = {}
        self._on_join = on_join

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        """The result (or exception) of the one ``compute()`` running for ``key``."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(compute())
            self._running[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        elif self._on_join is not None:
            self._on_join()
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have left before it finished
