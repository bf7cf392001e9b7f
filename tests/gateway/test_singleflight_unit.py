"""Single-flight: one computation per key, shared by concurrent callers."""

from __future__ import annotations

import asyncio

import pytest

from gateway.singleflight import SingleFlight


async def test_concurrent_callers_share_one_computation() -> None:
    joins = []
    flights: SingleFlight[int] = SingleFlight(on_join=lambda: joins.append(1))
    calls = 0
    release = asyncio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    waiters = [asyncio.create_task(flights.run("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [42] * 5
    assert calls == 1
    assert len(joins) == 4
    assert len(flights) == 0  # forgotten once done: the next call computes afresh
    assert await flights.run("k", compute) == 42 and calls == 2


async def test_different_keys_do_not_share() -> None:
    flights: SingleFlight[str] = SingleFlight()
    results = await asyncio.gather(
        flights.run("a", lambda: asyncio.sleep(0.01, "A")), flights.run("b", lambda: asyncio.sleep(0.01, "B"))
    )
    assert results == ["A", "B"]


async def test_an_error_reaches_every_caller_and_is_not_remembered() -> None:
    flights: SingleFlight[int] = SingleFlight()

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    outcomes = await asyncio.gather(flights.run("k", fail), flights.run("k", fail), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await flights.run("k", lambda: asyncio.sleep(0, 7)) == 7


async def test_a_caller_that_leaves_does_not_cancel_the_others() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def compute() -> int:
        await release.wait()
        return 1

    leaver = asyncio.create_task(flights.run("k", compute))
    stayer = asyncio.create_task(flights.run("k", compute))
    await asyncio.sleep(0)
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    release.set()
    assert await stayer == 1
