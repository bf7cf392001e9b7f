"""End to end: a real gateway and real workers over the real RabbitMQ and Redis, real photos.

The model is the offline EfficientNet-Lite0 with ImageNet weights, so the
labels asserted here are the model's real answers, not fixtures.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import rabbitmq_api
from tests.support.metrics import wait_for_worker_jobs, worker_jobs

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


async def predict(session: aiohttp.ClientSession, base_url: str, photo: Path, **params: str):
    form = aiohttp.FormData()
    form.add_field("file", photo.read_bytes(), filename=photo.name, content_type="image/jpeg")
    async with session.post(f"{base_url}/predict", data=form, params=params) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_photo_is_classified_then_served_from_cache(gateway, workers, photos):
    worker = workers()
    gw = gateway()
    async with aiohttp.ClientSession() as session:
        status, first, _ = await predict(session, gw.base_url, photos["coffee"])
        assert status == 200, first
        assert first["success"] is True
        assert first["prediction"] == "espresso"
        assert 0.0 < first["score"] <= 1.0
        assert first["cached"] is False
        assert first["model"]["name"].startswith("efficientnet-lite0")
        assert len(first["model"]["version"]) == 12
        assert len(first["top_k"]) == 5
        assert first["image"].endswith(".jpg") and len(first["image"]) == 64 + 4
        jobs_after_first = wait_for_worker_jobs(worker.metrics_port, 1)
        assert jobs_after_first == 1

        status, second, _ = await predict(session, gw.base_url, photos["coffee"])
        assert status == 200, second
        assert second["cached"] is True
        assert second["prediction"] == first["prediction"]
        assert second["score"] == pytest.approx(first["score"])
        assert second["model"] == first["model"]
        # The cached answer never reached a worker.
        assert worker_jobs(worker.metrics_port) == jobs_after_first

        status, cat, _ = await predict(session, gw.base_url, photos["chelsea"], top_k="3")
        assert status == 200, cat
        assert len(cat["top_k"]) == 3
        assert CAT_LABELS & {entry["label"] for entry in cat["top_k"]}


async def test_two_workers_share_one_queue(gateway, workers, photos, queue_name, tmp_path):
    first, second = workers(), workers()
    gw = gateway()
    listed = rabbitmq_api.wait_for(
        lambda: rabbitmq_api.queue(queue_name)["consumers"] == 2 and 2, what="2 consumers"
    )
    assert listed == 2

    # Distinct images (re-encodings of the photos), so that every request is a cache miss.
    from PIL import Image

    bodies = []
    for i in range(24):
        image = Image.open(photos[("coffee", "chelsea", "astronaut")[i % 3]])
        buffer = io.BytesIO()
        image.crop((i, i, image.width - i, image.height - i)).save(buffer, "JPEG", quality=90)
        bodies.append(buffer.getvalue())
    async with aiohttp.ClientSession() as session:

        async def post(body: bytes):
            form = aiohttp.FormData()
            form.add_field("file", body, filename="photo.jpg", content_type="image/jpeg")
            async with session.post(f"{gw.base_url}/predict", data=form) as response:
                return response.status

        statuses = await asyncio.gather(*(post(body) for body in bodies))
    assert statuses == [200] * len(bodies)
    wait_for_worker_jobs(first.metrics_port, 1)
    wait_for_worker_jobs(second.metrics_port, len(bodies) - worker_jobs(first.metrics_port))
    counts = [worker_jobs(first.metrics_port), worker_jobs(second.metrics_port)]
    assert sum(counts) == len(bodies)
    assert all(count > 0 for count in counts), counts


async def test_concurrent_identical_uploads_cause_one_inference(gateway, workers, photos):
    worker = workers()
    gw = gateway()
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(predict(session, gw.base_url, photos["astronaut"]) for _ in range(20))
        )
    assert [status for status, _, _ in results] == [200] * 20
    assert len({body["prediction"] for _, body, _ in results}) == 1
    assert wait_for_worker_jobs(worker.metrics_port, 1) == 1
    await asyncio.sleep(0.5)  # a second job, if any, would be counted by now
    assert worker_jobs(worker.metrics_port) == 1


async def test_feedback_rows_from_two_gateways_are_whole(gateway, workers, photos, stack_env, tmp_path):
    workers()
    gateways = [gateway(), gateway(PORT=_free_port())]
    csv_path = Path(str(stack_env["FEEDBACK_CSV"]))
    async with aiohttp.ClientSession() as session:
        status, body, _ = await predict(session, gateways[0].base_url, photos["coffee"])
        assert status == 200, body

        async def feedback(i: int):
            payload = {
                "image": body["image"],
                "prediction": body["prediction"],
                "score": body["score"],
                "correct_label": f'=HYPERLINK("http://x","{i}"), "quoted"',
            }
            url = f"{gateways[i % 2].base_url}/feedback"
            async with session.post(url, json=payload) as response:
                return response.status, await response.json()

        answers = await asyncio.gather(*(feedback(i) for i in range(8)))
    assert [status for status, _ in answers] == [200] * 8, answers
    rows = list(csv.reader(csv_path.open(newline="")))
    assert rows[0] == ["timestamp", "image", "predicted_label", "score", "correct_label", "model_version"]
    assert len(rows) == 1 + 8
    for row in rows[1:]:
        assert len(row) == 6
        assert row[1] == body["image"]
        assert row[2] == "espresso"
        # A spreadsheet must not run it as a formula.
        assert not row[4].startswith("=")
        assert "HYPERLINK" in row[4]
        assert row[5] == body["model"]["version"]
    assert sorted(row[4][-11:] for row in rows[1:]) == sorted(f'{i}"), "quoted"'[-11:] for i in range(8))


def _free_port() -> int:
    from tests.support.processes import free_port

    return free_port()


async def test_stopped_worker_gives_504_within_the_deadline(gateway, workers, photos):
    worker = workers()
    gw = gateway(REQUEST_TIMEOUT_S=2)
    worker.terminate()
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        status, body, _ = await predict(session, gw.base_url, photos["chelsea"])
        elapsed = time.monotonic() - started
    assert status == 504, body
    assert body["success"] is False and body["error"]
    assert elapsed < 2 + 1.0


async def test_full_queue_gives_503_with_retry_after(gateway, distinct_jpegs, queue_name):
    # No worker, a queue of one: publishes are accepted until the broker refuses one
    # (a quorum queue may let one message past x-max-length), and that one is a 503 at once.
    gw = gateway(QUEUE_MAX_LENGTH=1, REQUEST_TIMEOUT_S=4)
    accepted: list[asyncio.Task] = []
    async with aiohttp.ClientSession() as session:

        async def post(body: bytes):
            form = aiohttp.FormData()
            form.add_field("file", body, filename="photo.jpg", content_type="image/jpeg")
            started = time.monotonic()
            async with session.post(f"{gw.base_url}/predict", data=form) as response:
                return response.status, await response.json(), response.headers, time.monotonic() - started

        for body in distinct_jpegs[:5]:
            task = asyncio.create_task(post(body))
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                status, answer, headers, elapsed = task.result()
                break
            accepted.append(task)
        else:
            pytest.fail("five publishes to a queue of one were all accepted")
        assert status == 503, answer
        assert int(headers["Retry-After"]) >= 1
        assert answer["success"] is False and "queue" in answer["error"].lower()
        assert elapsed < 1.0
        assert 1 <= len(accepted) <= 2
        # The accepted jobs were never taken: they end at the deadline.
        assert [result[0] for result in await asyncio.gather(*accepted)] == [504] * len(accepted)


async def test_bad_uploads_get_clear_errors(gateway, workers, photos):
    workers()
    gw = gateway(MAX_UPLOAD_MB=1)
    coffee = photos["coffee"].read_bytes()
    async with aiohttp.ClientSession() as session:

        async def post(body: bytes, name: str):
            form = aiohttp.FormData()
            form.add_field("file", body, filename=name, content_type="image/jpeg")
            async with session.post(f"{gw.base_url}/predict", data=form) as response:
                return response.status, await response.json()

        status, body = await post(coffee[: len(coffee) // 3], "truncated.jpg")
        assert status == 422, body
        status, body = await post(b"just some text, not a photo\n" * 10, "notes.jpg")
        assert status == 415, body
        status, body = await post(b"", "empty.jpg")
        assert status == 400, body
        async with session.post(f"{gw.base_url}/predict", data=aiohttp.FormData({"other": "x"})) as response:
            assert response.status == 400
            assert (await response.json())["error"]
    for status_body in (body,):
        assert status_body["success"] is False and status_body["prediction"] is None


async def test_oversized_upload_is_refused_while_streaming(gateway, photos):
    gw = gateway(MAX_UPLOAD_MB=1)
    sent = 0

    async def slow_body():
        nonlocal sent
        chunk = b"\xff\xd8\xff\xe0" + b"\0" * (64 * 1024 - 4)
        for _ in range(20 * 16):  # 20 MB offered, 64 KB at a time
            sent += len(chunk)
            yield chunk
            await asyncio.sleep(0.005)
            chunk = b"\0" * (64 * 1024)

    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(
                f"{gw.base_url}/predict", data=slow_body(), headers={"Content-Type": "image/jpeg"}
            ) as response:
                status = response.status
                body = await response.json()
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            pytest.fail("the gateway dropped the connection instead of answering 413")
    assert status == 413, body
    assert "MB" in body["error"]
    assert sent < 20 * 1024 * 1024, "the gateway read the whole oversized upload"


async def test_sigterm_lets_requests_in_flight_finish(gateway, workers, photos):
    # The worker holds each job ~1.5 s (batch wait), so the request is in flight at the SIGTERM.
    workers(BATCH_WAIT_MS=1500, MAX_BATCH=64)
    gw = gateway()
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(predict(session, gw.base_url, photos["chelsea"]))
        await asyncio.sleep(0.5)
        gw.proc.terminate()
        status, body, _ = await asyncio.wait_for(in_flight, 15)
        assert status == 200, body
        assert CAT_LABELS & {entry["label"] for entry in body["top_k"]}
        # No new request is accepted once it is stopping.
        with pytest.raises(aiohttp.ClientConnectionError):
            await predict(session, gw.base_url, photos["coffee"])
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    assert "shutting down" in gw.log_text()
