"""Admission: two separate bounds, so that slow clients cannot starve fast ones.

A prediction holds a *receiving* slot while its body arrives (bounded in number,
``MAX_RECEIVING``, and in bytes held together, ``RECEIVE_BUFFER_MB``) and a
*waiting* slot only once its upload is in, while a worker classifies it
(``MAX_IN_FLIGHT``). A thousand clients that send headers and then stall hold
receiving slots until their read deadline (:mod:`gateway.uploads`), never the
slots of requests that are ready for a worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common.settings import Settings
from gateway.errors import RequestTimeout, ServiceUnavailable
from gateway.metrics import GatewayMetrics


class Admission:
    """Counts bodies being received and requests waiting for a worker; refuses (503) beyond the bounds."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.max_receiving = settings.max_receiving
        self.max_waiting = settings.max_in_flight
        self.buffer_limit = int(settings.receive_buffer_mb * 1024 * 1024)
        self.metrics = metrics
        self.receiving = 0
        self.waiting = 0
        self.buffered = 0  # bytes held by bodies being received

    def check_waiting_room(self) -> None:
        """Refuse at once, before reading a body, when no worker slot could take it anyway."""
        if self.waiting >= self.max_waiting:
            self.metrics.rpc_rejected.labels("gateway_busy").inc()
            raise ServiceUnavailable(
                "The gateway is at its limit of requests in flight; please retry shortly."
            )

    @contextmanager
    def waiting_slot(self) -> Iterator[None]:
        """A slot among MAX_IN_FLIGHT: the upload is in and waits for a worker."""
        self.check_waiting_room()
        self.waiting += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.waiting -= 1
            self.metrics.in_flight.dec()

    @contextmanager
    def receiving_slot(self) -> Iterator[ReceiveBudget]:
        """A slot among MAX_RECEIVING while a body arrives; its bytes count against RECEIVE_BUFFER_MB."""
        if self.receiving >= self.max_receiving:
            self.metrics.rpc_rejected.labels("receiving_full").inc()
            raise ServiceUnavailable(
                "The gateway is receiving too many uploads at once; please retry shortly."
            )
        budget = ReceiveBudget(self)
        self.receiving += 1
        self.metrics.receiving.inc()
        try:
            yield budget
        except RequestTimeout:
            self.metrics.upload_timeouts.inc()
            raise
        finally:
            self.receiving -= 1
            self.metrics.receiving.dec()
            self.buffered -= budget.held


class ReceiveBudget:
    """The bytes one body holds in memory while it arrives, counted in the shared buffer bound."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.held = 0

    def hold(self, n: int) -> None:
        admission = self._admission
        if admission.buffered + n > admission.buffer_limit:
            admission.metrics.rpc_rejected.labels("receive_buffer_full").inc()
            raise ServiceUnavailable("The gateway is receiving too much data at once; please retry shortly.")
        admission.buffered += n
        self.held += n
