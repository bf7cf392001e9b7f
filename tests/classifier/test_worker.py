"""The real worker (`python -m classifier`, a subprocess) against the real RabbitMQ and Redis.

This test plays the gateway: it publishes jobs to the request queue with its
own reply queue, as docs/DESIGN.md's contract says, and checks replies, the Redis
cache, acknowledgements, the dead-letter queue, metrics and shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import pytest
import redis.asyncio as aioredis

from common.contract import cache_key, dead_letter_queue, model_announcement_key, now_ms
from common.model_file import model_version
from tests.classifier.conftest import JobClient
from tests.support import rabbitmq_api
from tests.support.metrics import scrape, total, worker_jobs
from tests.support.private_services import PrivateRabbitMQ, PrivateRedis
from tests.support.processes import REPO_ROOT, ServiceProcess, free_port, service_env, start_worker

CACHE_TTL_S = 600


def unique_jpeg(path: Path) -> bytes:
    """The photo's exact pixels under a new SHA-256: a JPEG comment segment after SOI.

    Each test gets cache keys no other test (or earlier run) has written.
    """
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8"
    text = uuid.uuid4().hex.encode()
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def cached_value(client: aioredis.Redis, key: str, timeout: float = 5) -> bytes | None:
    """The value at ``key`` once it appears: the worker writes it just after publishing the reply."""
    deadline = time.monotonic() + timeout
    while (value := await client.get(key)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return value


async def test_coffee_is_espresso_replied_cached_and_acked(
    workers, jobs, redis_client, photos, queue_name, lite0_model
):
    worker = workers(CACHE_TTL_S=CACHE_TTL_S)
    body = unique_jpeg(photos["coffee"])
    correlation_id = await jobs.publish(body, top_k=3)
    reply = await jobs.reply(correlation_id)

    assert reply.message.correlation_id == correlation_id
    assert reply.message.content_type == "application/json"
    data = reply.data
    assert data["ok"] is True and data["sha256"] == sha(body)
    assert data["top"][0]["label"] == "espresso"
    assert len(data["top"]) == 3
    version = model_version(lite0_model)
    assert data["model"] == {"name": "efficientnet-lite0", "version": version}
    assert data["batch_size"] == 1 and 0 < data["inference_ms"] < 5_000

    # Cached before the ack, with the configured TTL: this reply, but with the full top-5
    # (the key has no top_k, so the entry must answer any top_k).
    key = cache_key(version, sha(body))
    entry = json.loads(await cached_value(redis_client, key))
    assert len(entry["top"]) == 5 and entry["top"][:3] == data["top"]
    assert {**entry, "top": data["top"]} == data
    assert 0 < await redis_client.ttl(key) <= CACHE_TTL_S

    # The model is announced for the gateway.
    announcement = await redis_client.get(model_announcement_key(queue_name))
    assert json.loads(announcement) == {"name": "efficientnet-lite0", "version": version}
    assert 0 < await redis_client.ttl(model_announcement_key(queue_name)) <= 90

    # Acked; one consumer with the configured prefetch.
    rabbitmq_api.wait_until_drained(queue_name)
    consumers = rabbitmq_api.wait_for(
        lambda: rabbitmq_api.queue(queue_name).get("consumer_details"), what="a consumer"
    )
    assert [c["prefetch_count"] for c in consumers] == [16]

    samples = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics")
    assert total(samples, "classifier_jobs_total", outcome="ok") == 1
    assert total(samples, "classifier_batch_size_count") == 1
    assert total(samples, "classifier_inference_seconds_count") == 1
    assert total(samples, "classifier_decode_seconds_count") == 1
    assert total(samples, "classifier_cache_write_failures_total") == 0


async def test_expired_job_is_answered_expired_and_acked_without_running(
    workers, jobs, redis_client, photos, queue_name, lite0_model
):
    worker = workers()
    body = unique_jpeg(photos["coffee"])
    correlation_id = await jobs.publish(body, deadline_ms=now_ms() - 1_000)
    reply = await jobs.reply(correlation_id)

    assert reply.data == {
        "ok": False,
        "error": {"code": "expired", "message": reply.data["error"]["message"]},
    }
    assert "deadline" in reply.data["error"]["message"]
    rabbitmq_api.wait_until_drained(queue_name)  # acked, so anything it would cache is cached
    assert await redis_client.exists(cache_key(model_version(lite0_model), sha(body))) == 0
    assert rabbitmq_api.queue(dead_letter_queue(queue_name))["messages"] == 0
    samples = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics")
    assert total(samples, "classifier_jobs_total", outcome="expired") == 1
    assert total(samples, "classifier_inference_seconds_count") == 0  # never ran


async def test_garbage_is_invalid_image_and_the_worker_goes_on(
    workers, jobs, redis_client, photos, queue_name, lite0_model
):
    worker = workers()
    garbage = random.Random(7).randbytes(5_000)
    truncated = photos["chelsea"].read_bytes()[:20_000]
    bad = [await jobs.publish(garbage), await jobs.publish(truncated), await jobs.publish(b"")]
    replies = await jobs.wait_for(bad)
    for correlation_id in bad:
        data = replies[correlation_id].data
        assert data["ok"] is False and data["error"]["code"] == "invalid_image", data
        assert data["error"]["message"]
    assert "not a recognised image" in replies[bad[0]].data["error"]["message"]
    assert "truncated or corrupt" in replies[bad[1]].data["error"]["message"]
    assert worker.proc.poll() is None
    good = await jobs.reply(await jobs.publish(unique_jpeg(photos["coffee"])))
    assert good.data["top"][0]["label"] == "espresso"
    rabbitmq_api.wait_until_drained(queue_name)
    # Failures are never cached.
    version = model_version(lite0_model)
    for body in (garbage, truncated):
        assert await redis_client.exists(cache_key(version, sha(body))) == 0
    assert worker_jobs(worker.metrics_port, "invalid_image") == 3
    assert worker_jobs(worker.metrics_port, "ok") == 1


async def test_malformed_jobs_are_answered_internal_and_dead_lettered(
    workers, jobs, redis_client, photos, queue_name, lite0_model
):
    worker = workers()
    body = unique_jpeg(photos["chelsea"])
    no_sha = await jobs.publish(body, headers={"deadline_ms": now_ms() + 30_000, "top_k": 5})
    wrong_sha = await jobs.publish(body, sha256=sha(b"another image"))
    replies = await jobs.wait_for([no_sha, wrong_sha])
    for correlation_id in (no_sha, wrong_sha):
        error = replies[correlation_id].data["error"]
        assert error["code"] == "internal" and "malformed job" in error["message"]
    assert "does not match" in replies[wrong_sha].data["error"]["message"]
    dead = await jobs.channel.get_queue(dead_letter_queue(queue_name), ensure=True)
    dead_letters = []
    deadline = time.monotonic() + 10
    while len(dead_letters) < 2 and time.monotonic() < deadline:
        message = await dead.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.1)
        else:
            dead_letters.append(message)
    assert sorted(m.correlation_id for m in dead_letters) == sorted([no_sha, wrong_sha])
    assert all(m.headers["x-death"][0]["reason"] == "rejected" for m in dead_letters)
    # Nothing cached under the claimed hash: a wrong header must not poison the cache.
    assert await redis_client.exists(cache_key(model_version(lite0_model), sha(b"another image"))) == 0
    assert worker.proc.poll() is None
    assert worker_jobs(worker.metrics_port, "internal") == 2


async def test_jobs_published_together_are_batched(workers, jobs, photos, queue_name):
    worker = workers(MAX_BATCH=8)
    expected = {"coffee": {"espresso"}, "chelsea": {"tabby", "tiger cat", "Egyptian cat"}}
    names = [("coffee", "chelsea")[i % 2] for i in range(16)]
    bodies = [unique_jpeg(photos[name]) for name in names]
    ids = await asyncio.gather(*(jobs.publish(body) for body in bodies))
    replies = await jobs.wait_for(list(ids))

    sizes = []
    for name, correlation_id in zip(names, ids, strict=True):
        data = replies[correlation_id].data
        assert data["ok"], data
        assert data["top"][0]["label"] in expected[name]
        sizes.append(data["batch_size"])
    assert max(sizes) > 1, f"no batching: {sizes}"
    assert max(sizes) <= 8
    rabbitmq_api.wait_until_drained(queue_name)
    samples = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics")
    assert total(samples, "classifier_batch_size_sum") == 16
    assert total(samples, "classifier_batch_size_count") < 16


async def test_sigterm_answers_every_job_in_hand_then_exits_0(workers, jobs, photos, queue_name):
    # A long batch wait holds the jobs in the worker's hands until the signal comes.
    worker = workers(MAX_BATCH=32, BATCH_WAIT_MS=20_000, PREFETCH=16)
    ids = [await jobs.publish(unique_jpeg(photos["chelsea"])) for _ in range(16)]
    await asyncio.sleep(1.0)  # let the broker deliver all 16 (prefetch 16)
    assert jobs.replies == {}, "answered before the signal: the jobs were not in hand"

    start = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    replies = await jobs.wait_for(ids, timeout=30)
    exit_code = await asyncio.to_thread(worker.proc.wait, 30)
    assert exit_code == 0, worker.log_tail()
    assert time.monotonic() - start < 15  # the drain cut the 20 s batch wait short
    assert all(r.data["ok"] for r in replies.values())
    assert {r.data["batch_size"] for r in replies.values()} == {16}
    log = worker.log_text()
    assert "all jobs in hand answered (0 left unsettled)" in log
    rabbitmq_api.wait_until_drained(queue_name)


async def test_redis_loss_degrades_to_no_cache_and_recovers(workers, jobs, photos, queue_name, tmp_path):
    private = PrivateRedis(tmp_path / "redis", free_port())
    private.start()
    client = aioredis.Redis.from_url(private.url)
    try:
        worker = workers(REDIS_URL=private.url)
        first = unique_jpeg(photos["coffee"])
        reply = await jobs.reply(await jobs.publish(first))
        version = reply.data["model"]["version"]
        assert await cached_value(client, cache_key(version, sha(first))) == reply.body

        private.stop()
        while_down = [unique_jpeg(photos["coffee"]) for _ in range(3)]
        for body in while_down:
            down_reply = await jobs.reply(await jobs.publish(body), timeout=15)
            assert down_reply.data["ok"] and down_reply.data["top"][0]["label"] == "espresso"
        assert worker.proc.poll() is None
        rabbitmq_api.wait_until_drained(queue_name)  # acked, so their cache writes were tried
        assert worker.log_text().count("Redis unavailable") == 1  # rate-limited
        samples = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics")
        assert total(samples, "classifier_cache_write_failures_total") == 3

        private.start()  # an empty Redis: the worker reconnects by itself
        await client.aclose()
        client = aioredis.Redis.from_url(private.url)  # ours does not: its connection died
        deadline = time.monotonic() + 20
        cached = False
        while not cached and time.monotonic() < deadline:
            body = unique_jpeg(photos["coffee"])
            again = await jobs.reply(await jobs.publish(body), timeout=15)
            cached = await cached_value(client, cache_key(version, sha(body)), timeout=1) == again.body
        assert cached, "the worker never cached again after Redis came back"
        # ...and re-announced its model at once (the restarted Redis had lost the key).
        announcement = None
        for _ in range(50):
            announcement = await client.get(model_announcement_key(queue_name))
            if announcement:
                break
            await asyncio.sleep(0.1)
        assert announcement and json.loads(announcement)["version"] == version
        rabbitmq_api.wait_until_drained(queue_name)
    finally:
        await client.aclose()
        private.stop()


def _run_worker(env: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """`python -m classifier` with ``env``, to its exit (for configurations it must refuse)."""
    return subprocess.run(
        [sys.executable, "-m", "classifier"],
        env=service_env(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_model_path_exits_2_with_a_clear_message(tmp_path):
    result = _run_worker({"MODEL_PATH": tmp_path / "missing.onnx", "WORKER_METRICS_PORT": 0})
    assert result.returncode == 2
    assert "model file not found" in result.stderr


def test_bad_configuration_is_refused(tmp_path):
    result = _run_worker({"MAX_BATCH": "eight"})
    assert result.returncode == 2
    assert "bad configuration" in result.stderr


async def test_worker_waits_for_the_broker_and_stops_cleanly(stack_env, tmp_path):
    """Started before RabbitMQ (compose, reboot): it retries, and SIGTERM still exits 0."""
    env = service_env({**stack_env, "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"})
    worker = ServiceProcess("worker", [sys.executable, "-m", "classifier"], env, tmp_path / "worker.log")
    try:
        await asyncio.to_thread(worker.wait_for_log, "RabbitMQ unreachable", 60)
        assert worker.proc.poll() is None
    finally:
        exit_code = await asyncio.to_thread(worker.terminate)
    assert exit_code == 0, worker.log_tail()


@pytest.mark.slow
async def test_worker_survives_a_broker_restart(stack_env, tmp_path, photos):
    broker = PrivateRabbitMQ(free_port(), free_port(), free_port())
    await asyncio.to_thread(broker.start)
    try:
        env = {**stack_env, "RABBITMQ_URL": broker.url, "WORKER_METRICS_PORT": free_port()}
        worker = await asyncio.to_thread(start_worker, env, tmp_path)
        try:

            async def classify_once(timeout: float) -> dict:
                connection = await aio_pika.connect(broker.url)
                try:
                    client = JobClient(await connection.channel(), env["QUEUE_NAME"])
                    await client.start()
                    reply = await client.reply(await client.publish(unique_jpeg(photos["coffee"])), timeout)
                    return reply.data
                finally:
                    await connection.close()

            assert (await classify_once(30))["top"][0]["label"] == "espresso"
            await asyncio.to_thread(broker.stop_app)
            await asyncio.to_thread(broker.start_app)
            deadline = time.monotonic() + 60
            data = None
            while data is None and time.monotonic() < deadline:
                try:
                    data = await classify_once(5)
                except (AssertionError, OSError, aio_pika.exceptions.AMQPError):
                    await asyncio.sleep(1)  # the worker has not re-consumed yet
            assert data is not None, f"no reply after the broker restart:\n{worker.log_tail()}"
            assert data["top"][0]["label"] == "espresso"
            assert worker.proc.poll() is None
        finally:
            exit_code = await asyncio.to_thread(worker.terminate)
        assert exit_code == 0, worker.log_tail()
    finally:
        await asyncio.to_thread(broker.stop)
