"""The worker: a :class:`~classifier.consumer.Consumer` feeding a :class:`~classifier.pipeline.Pipeline`.

The consumer knows AMQP; the pipeline knows jobs (accept, batch, infer, reply,
cache, settle). This module starts them in order and stops them in order: on
:meth:`Worker.request_stop` the consumer is cancelled, the pipeline answers and
settles every job in hand, and only then does the connection close.
"""

from __future__ import annotations

import asyncio
import logging

from classifier.cache import ANNOUNCE_EVERY_S, ResultCache
from classifier.consumer import Consumer
from classifier.model import Model
from classifier.pipeline import Pipeline
from common.settings import Settings

log = logging.getLogger(__name__)


class Worker:
    """One worker process's consumer and pipeline; :meth:`run` until :meth:`request_stop`."""

    def __init__(self, settings: Settings, model: Model, cache: ResultCache) -> None:
        self.settings = settings
        self.model = model
        self.cache = cache
        self._stop = asyncio.Event()
        self.pipeline = Pipeline(settings, model, cache)
        self.consumer = Consumer(settings, self.pipeline.accept, self._stop)
        self.pipeline.acknowledge = self.consumer.acknowledge
        self.pipeline.publish_replies = self.consumer.publish_replies

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Begin a clean shutdown (signal handlers call this)."""
        if not self._stop.is_set():
            log.info("stopping: no new jobs; finishing the %d in hand", self.pipeline.in_hand)
            self._stop.set()

    async def run(self) -> None:
        """Connect, consume until asked to stop, then drain and close. Returns on clean exit."""
        announcer: asyncio.Task[None] | None = None
        batch_loop: asyncio.Task[None] | None = None
        try:
            if not await self.consumer.open():  # asked to stop while the broker was down
                return
            await self.cache.announce(self.settings.queue_name, self.model.info)
            announcer = asyncio.create_task(
                self.cache.announce_forever(self.settings.queue_name, self.model.info, ANNOUNCE_EVERY_S),
                name="announce",
            )
            batch_loop = asyncio.create_task(self.pipeline.run(), name="batch-loop")
            await self.consumer.consume()
            log.info(
                "worker ready: queue=%s model=%s version=%s threads=%d batch=%d wait=%gms prefetch=%d",
                self.settings.queue_name,
                self.model.info.name,
                self.model.version,
                self.model.threads,
                self.settings.max_batch,
                self.settings.batch_wait_ms,
                self.settings.prefetch,
            )
            await self._stop.wait()
            # Stop taking jobs; finish, answer and ack every job already received.
            await self.consumer.cancel()
            self.pipeline.close()
            await self.pipeline.drain(batch_loop)
        finally:
            if announcer is not None:
                announcer.cancel()
            if batch_loop is not None and not batch_loop.done():
                batch_loop.cancel()
            await self.consumer.close()
            await self.cache.close()
            self.pipeline.shutdown()
