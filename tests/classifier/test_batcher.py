"""The micro-batch collector's rule, on its own (pure asyncio, no broker)."""

from __future__ import annotations

import asyncio

import pytest

from classifier.batcher import Batcher

WAIT_S = 0.05


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


async def test_full_batch_is_returned_at_once_and_the_rest_waits():
    batcher: Batcher[int] = Batcher(max_batch=4, max_wait_s=10.0)
    for i in range(10):
        batcher.put(i)
    start = asyncio.get_running_loop().time()
    assert await batcher.next_batch() == [0, 1, 2, 3]
    assert await batcher.next_batch() == [4, 5, 6, 7]
    assert elapsed_since(start) < 0.5  # a full batch never waits for the 10 s
    assert len(batcher) == 2


async def test_fewer_items_are_returned_after_the_wait():
    batcher: Batcher[str] = Batcher(max_batch=8, max_wait_s=WAIT_S)
    batcher.put("a")
    batcher.put("b")
    start = asyncio.get_running_loop().time()
    assert await batcher.next_batch() == ["a", "b"]
    waited = elapsed_since(start)
    assert WAIT_S * 0.8 <= waited < WAIT_S + 0.5


async def test_items_arriving_during_the_wait_join_the_batch():
    batcher: Batcher[int] = Batcher(max_batch=3, max_wait_s=5.0)

    async def producer():
        for i in range(3):
            batcher.put(i)
            await asyncio.sleep(0.01)

    start = asyncio.get_running_loop().time()
    task = asyncio.create_task(producer())
    assert await batcher.next_batch() == [0, 1, 2]
    assert elapsed_since(start) < 1.0  # closed by the third item, not by the 5 s wait
    await task


async def test_the_wait_counts_from_the_oldest_item():
    """Items that queued up while the previous batch ran have waited enough: no extra wait."""
    batcher: Batcher[int] = Batcher(max_batch=8, max_wait_s=WAIT_S)
    batcher.put(1)
    batcher.put(2)
    await asyncio.sleep(WAIT_S * 2)
    start = asyncio.get_running_loop().time()
    assert await batcher.next_batch() == [1, 2]
    assert elapsed_since(start) < WAIT_S / 2


async def test_next_batch_waits_for_the_first_item():
    batcher: Batcher[int] = Batcher(max_batch=2, max_wait_s=0.0)
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0.05)
    assert not task.done()
    batcher.put(7)
    assert await asyncio.wait_for(task, 1) == [7]


async def test_close_drains_without_waiting_then_returns_empty():
    batcher: Batcher[int] = Batcher(max_batch=2, max_wait_s=10.0)
    for i in range(3):
        batcher.put(i)
    batcher.close()
    start = asyncio.get_running_loop().time()
    assert await batcher.next_batch() == [0, 1]
    assert await batcher.next_batch() == [2]
    assert await batcher.next_batch() == []
    assert elapsed_since(start) < 0.5
    with pytest.raises(RuntimeError):
        batcher.put(3)


async def test_close_wakes_a_waiting_consumer():
    batcher: Batcher[int] = Batcher(max_batch=2, max_wait_s=10.0)
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0.01)
    batcher.close()
    assert await asyncio.wait_for(task, 1) == []


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        Batcher(max_batch=0, max_wait_s=0.01)
    with pytest.raises(ValueError, match="max_wait_s must be >= 0"):
        Batcher(max_batch=1, max_wait_s=-1)
