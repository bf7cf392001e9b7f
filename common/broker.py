"""RabbitMQ connections for the gateway and the workers: one node or a cluster, failover, back-off.

``RABBITMQ_URL`` holds one address or several, comma-separated (the nodes of one
cluster). Both services connect with :func:`connect_until_up`: the first node
that answers wins; while none does, it retries with back-off. The connection it
returns is a :class:`FailoverConnection`: aio-pika's robust connection (it
re-opens channels, re-declares queues and re-consumes by itself), except that
each reconnection attempt goes to the next address, so losing a node costs one
reconnect interval, not a wait for that node to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from common.settings import redact

log = logging.getLogger(__name__)

# Bound on one connection attempt (TCP + AMQP handshake) to one node.
CONNECT_TIMEOUT_S = 5.0
# Pause between rounds over every address while no node answers (the last value repeats).
CONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
# Pause before each reconnection attempt once a connection stood (aio-pika's reconnect_interval).
RECONNECT_INTERVAL_S = 1.0


def backoff_delay(attempt: int, table: Sequence[float] = CONNECT_BACKOFF_S) -> float:
    """The pause after ``attempt`` failed attempts in a row (0-based)."""
    return table[min(attempt, len(table) - 1)]


class FailoverConnection(RobustConnection):
    """A robust connection to one of several nodes: every reconnection attempt tries the next one.

    aio-pika's :class:`~aio_pika.RobustConnection` reconnects to its one URL.
    Here ``url`` is the current entry of a list, and each reconnection attempt
    moves to the next: when a node dies, the next attempt reaches a live one;
    the restored channels then re-declare their queues on the new node.
    Connection options in an address's query string are read from the first.
    """

    def __init__(self, addresses: Sequence[str], *, first: int = 0, **kwargs: Any) -> None:
        self._addresses = [URL(address) for address in addresses]
        self._current = first % len(self._addresses)
        super().__init__(self._addresses[self._current], **kwargs)

    @property
    def url(self) -> URL:
        return self._addresses[self._current]

    @url.setter
    def url(self, value: URL) -> None:  # set by Connection.__init__ and update_secret
        self._addresses[self._current] = URL(value)

    @property
    def transport(self) -> Any:
        return self._failover_transport

    @transport.setter
    def transport(self, value: Any) -> None:
        # RobustConnection clears the transport right before each (re)connection attempt. Once
        # a connection has stood, each attempt goes to the next address: a dead node is skipped
        # at once, and a node that keeps refusing us does not hold the connection forever.
        if (
            value is None
            and getattr(self, "connection_attempt", 0) > 0
            and not getattr(self, "_close_called", False)
            and len(self._addresses) > 1
        ):
            self._current = (self._current + 1) % len(self._addresses)
            log.info("RabbitMQ connection lost; trying the next node, %s", redact(str(self.url)))
        self._failover_transport = value


async def connect_until_up(
    addresses: Sequence[str],
    *,
    name: str,
    setup: Callable[[AbstractRobustConnection], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> FailoverConnection | None:
    """Connect to the first node that answers and run ``setup`` on the connection; retry while none does.

    A ``setup`` that fails (e.g. a queue declaration refused) counts as a failed
    attempt on that node. Rounds over every address are separated by
    :data:`CONNECT_BACKOFF_S`. Returns None only if ``stop`` is set first.
    ``name`` is shown in the management UI (``connection_name``).
    """
    attempt = 0
    while stop is None or not stop.is_set():
        for first in range(len(addresses)):
            connection = FailoverConnection(
                addresses,
                first=first,
                reconnect_interval=RECONNECT_INTERVAL_S,
                client_properties={"connection_name": name},
            )
            try:
                await connection.connect(CONNECT_TIMEOUT_S)
                if setup is not None:
                    await setup(connection)
            except asyncio.CancelledError:
                await _close_quietly(connection)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure here means "try the next node, then later"
                log.warning(
                    "RabbitMQ at %s not available (%s: %s)", redact(addresses[first]), type(exc).__name__, exc
                )
                await _close_quietly(connection)
                continue
            log.info("connected to RabbitMQ at %s", redact(str(connection.url)))
            return connection
        delay = backoff_delay(attempt)
        attempt += 1
        log.warning("RabbitMQ unreachable (no node in RABBITMQ_URL answers); retrying in %.1f s", delay)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def _close_quietly(connection: AbstractRobustConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()
