"""A keep-alive connection is closed after KEEPALIVE_MAX_REQUESTS answers, so that the kernel (or a
Service) spreads the client's next connection again; the client just reconnects."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

from tests.gateway.conftest import GatewayFactory


async def through_one_connection_pool(url: str, requests: int) -> tuple[list[tuple[int, str | None]], int]:
    """Each request's (status, Connection header) through a one-connection pool, and the number of
    connections the client had to open."""
    opened = 0

    async def on_open(_session: object, _context: SimpleNamespace, _params: object) -> None:
        nonlocal opened
        opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_open)
    seen = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]
    ) as session:
        for _ in range(requests):
            async with session.get(url) as response:
                await response.read()
                seen.append((response.status, response.headers.get("Connection")))
    return seen, opened


async def test_a_connection_is_closed_after_the_last_answer_it_may_carry(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(keepalive_max_requests=3)
    seen, opened = await through_one_connection_pool(str(gateway.make_url("/health/live")), 7)
    assert seen == [(200, None), (200, None), (200, "close")] * 2 + [(200, None)]
    assert opened == 3


async def test_no_limit_keeps_one_connection(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(keepalive_max_requests=0)
    seen, opened = await through_one_connection_pool(str(gateway.make_url("/health/live")), 5)
    assert seen == [(200, None)] * 5
    assert opened == 1
