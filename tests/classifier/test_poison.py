"""Poison jobs: a job that kills every worker that takes it is retried a bounded number of
times, then dead-lettered, and its requester gets an error instead of waiting forever.

Real processes throughout: a gateway, workers that hold the job (a long batch wait)
and are killed with SIGKILL while holding it, RabbitMQ's quorum queue counting the
deliveries, and the management API to see where the job ended.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import aio_pika
import aiohttp
import pytest

from classifier.config import parse_args
from common.contract import dead_letter_queue
from common.settings import Settings
from common.topology import DEAD_LETTER_MAX_BYTES, declare_request_queue
from tests.classifier.test_worker import unique_jpeg
from tests.support import rabbitmq_api
from tests.support.metrics import scrape, total
from tests.support.processes import ServiceProcess

DELIVERY_LIMIT = 2
REQUEST_TIMEOUT_S = 60


async def test_quorum_queue_counts_deliveries_as_the_worker_expects(rabbitmq_url, queue_name) -> None:
    """RabbitMQ 3.10's semantics, which the worker's check relies on: delivery n carries
    x-delivery-count n-1 (the first none), and a job returned after the delivery carrying
    DELIVERY_LIMIT is dead-lettered by the broker itself (silently, for the requester)."""
    settings = Settings(queue_name=queue_name, delivery_limit=DELIVERY_LIMIT)
    seen: list[object] = []
    setup = await aio_pika.connect(rabbitmq_url)
    async with setup:
        channel = await setup.channel()
        await declare_request_queue(channel, settings)
        await channel.default_exchange.publish(aio_pika.Message(b"job"), routing_key=queue_name)
    for _ in range(DELIVERY_LIMIT + 2):
        connection = await aio_pika.connect(rabbitmq_url)  # a "worker" that dies holding the job
        async with connection:
            channel = await connection.channel()
            queue = await declare_request_queue(channel, settings)
            delivered: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = asyncio.Future()

            async def take(
                message: aio_pika.abc.AbstractIncomingMessage,
                delivered: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = delivered,
            ) -> None:
                if not delivered.done():
                    delivered.set_result(message)

            await queue.consume(take)  # a consumer, as workers are (basic.get counts differently)
            try:
                message = await asyncio.wait_for(delivered, 3)
            except TimeoutError:
                break
            seen.append((message.headers or {}).get("x-delivery-count"))
    assert seen == [None, 1, 2]
    dead = rabbitmq_api.wait_for(
        lambda: (q := rabbitmq_api.queue(dead_letter_queue(queue_name)))["messages"] == 1 and q,
        what="the job in the dead-letter queue",
    )
    assert dead["arguments"]["x-max-length-bytes"] == DEAD_LETTER_MAX_BYTES


def in_hand(worker: ServiceProcess) -> float:
    port = worker.metrics_port  # type: ignore[attr-defined]
    return total(scrape(f"http://127.0.0.1:{port}/metrics"), "classifier_jobs_in_hand")


def wait_holding(worker: ServiceProcess, timeout: float = 20) -> None:
    worker.wait_until(lambda: in_hand(worker) == 1, timeout, "the job in hand")


async def test_a_job_that_kills_workers_is_dead_lettered_and_answered(
    workers, gateway, photos, queue_name, rabbitmq_url
) -> None:
    # Both sides declare the queue, so both must agree on its x-delivery-limit.
    worker_env = {"DELIVERY_LIMIT": DELIVERY_LIMIT, "MAX_BATCH": 8, "BATCH_WAIT_MS": 600_000}
    holder = workers(**worker_env)
    gw = gateway(DELIVERY_LIMIT=DELIVERY_LIMIT, REQUEST_TIMEOUT_S=REQUEST_TIMEOUT_S)
    image = unique_jpeg(photos["coffee"])
    started = time.monotonic()

    async def request() -> tuple[int, dict]:
        form = aiohttp.FormData()
        form.add_field("file", image, filename="poison.jpg", content_type="image/jpeg")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.base_url}/predict", data=form) as response:
                return response.status, await response.json()

    answer = asyncio.create_task(request())
    await asyncio.to_thread(wait_holding, holder)
    # Deliveries 1..DELIVERY_LIMIT each die with the worker holding them; the next worker
    # is started first, so the broker hands the job straight to it.
    for kill in range(1, DELIVERY_LIMIT + 1):
        successor = await asyncio.to_thread(workers, **worker_env)
        holder.kill()
        holder = successor
        if kill < DELIVERY_LIMIT:
            await asyncio.to_thread(wait_holding, holder)  # redelivered, and held again
            assert not answer.done()
    last = holder  # got the job with x-delivery-count = DELIVERY_LIMIT: refuses to run it

    status, body = await asyncio.wait_for(answer, REQUEST_TIMEOUT_S)
    elapsed = time.monotonic() - started
    print(f"\n[poison] answered {status} after {elapsed:.1f} s, {DELIVERY_LIMIT} workers killed")
    assert status == 502, body  # the gateway's mapping of `internal`
    assert body["success"] is False and "classifier failed" in body["error"]
    assert elapsed < REQUEST_TIMEOUT_S
    await asyncio.to_thread(gw.wait_for_log, f"delivered {DELIVERY_LIMIT} times without an answer", 5)

    # The job is in <queue>.dead, rejected by the last worker; the request queue is empty.
    dead_name = dead_letter_queue(queue_name)
    rabbitmq_api.wait_for(lambda: rabbitmq_api.queue(dead_name)["messages"] == 1, what="one dead letter")
    rabbitmq_api.wait_until_drained(queue_name)
    rabbitmq_api.wait_for(lambda: rabbitmq_api.queue(queue_name)["consumers"] == 1, what="one consumer")
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        dead = await channel.get_queue(dead_name, ensure=False)
        letter = await dead.get(no_ack=False, timeout=5)
        assert letter.headers["sha256"] == hashlib.sha256(image).hexdigest()
        assert letter.headers["x-death"][0]["reason"] == "rejected"
        await letter.nack(requeue=True)  # leave it there for the checks below

    # Nothing loops: the last worker answered once, ran nothing, holds nothing, and stays up.
    await asyncio.sleep(2)
    samples = scrape(f"http://127.0.0.1:{last.metrics_port}/metrics")  # type: ignore[attr-defined]
    assert total(samples, "classifier_poison_jobs_total") == 1
    assert total(samples, "classifier_jobs_total", outcome="internal") == 1
    assert total(samples, "classifier_jobs_total") == 1
    assert total(samples, "classifier_decode_seconds_count") == 0
    assert total(samples, "classifier_inference_seconds_count") == 0
    assert total(samples, "classifier_jobs_in_hand") == 0
    assert last.proc.poll() is None
    assert last.log_text().count("without an answer") == 1
    assert rabbitmq_api.queue(dead_name)["messages"] == 1
    assert rabbitmq_api.queue(queue_name)["messages"] == 0


def test_a_delivery_limit_below_one_is_refused(monkeypatch, capsys) -> None:
    """DELIVERY_LIMIT=0 would make the worker refuse every job as poison."""
    monkeypatch.setenv("DELIVERY_LIMIT", "0")
    with pytest.raises(SystemExit) as exit_info:
        parse_args([])
    assert exit_info.value.code == 2
    assert "DELIVERY_LIMIT must be >= 1" in capsys.readouterr().err
