"""The gateway's HTTP behaviour against the real RabbitMQ and Redis (no worker unless said).

Each test has its own request queue (deleted afterwards), so "no worker" is
real: nothing consumes that queue.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import re
import time
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from aiohttp.test_utils import TestClient

import gateway as gateway_module
from common.contract import ModelInfo
from gateway.readiness import READY_TTL_S
from gateway.state import GATEWAY
from tests.gateway.conftest import TEST_TIMEOUT_S, TEST_UPLOAD_MB, make_reply

MODEL = ModelInfo(name="test-model", version="0123456789ab")
ERROR_KEYS = {"success", "prediction", "score", "error"}
FIVE = [("espresso", 0.75), ("cup", 0.1), ("eggnog", 0.05), ("coffee mug", 0.05), ("consomme", 0.05)]


def form(data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg") -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("file", data, filename=filename, content_type=content_type)
    return body


async def assert_error(response: aiohttp.ClientResponse, status: int, says: str) -> dict:
    body = await response.json()
    assert response.status == status, body
    assert set(body) == ERROR_KEYS
    assert body["success"] is False and body["prediction"] is None and body["score"] is None
    assert says.lower() in body["error"].lower(), body["error"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return body


async def queue_depth(rabbitmq_url: str, queue_name: str) -> int:
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        return queue.declaration_result.message_count or 0


# -- input errors -------------------------------------------------------------


async def test_no_file_is_400(gateway_client: TestClient) -> None:
    await assert_error(await gateway_client.post("/predict"), 400, "no file")
    only_text = aiohttp.FormData()
    only_text.add_field("comment", "hello")
    await assert_error(await gateway_client.post("/predict", data=only_text), 400, "no file")


async def test_empty_file_is_400(gateway_client: TestClient) -> None:
    await assert_error(await gateway_client.post("/predict", data=form(b"")), 400, "empty")


async def test_two_files_are_400(gateway_client: TestClient, photos) -> None:
    body = form(photos["coffee"].read_bytes())
    body.add_field("file", photos["chelsea"].read_bytes(), filename="b.jpg", content_type="image/jpeg")
    await assert_error(await gateway_client.post("/predict", data=body), 400, "one file")


async def test_text_named_jpg_is_415_judged_by_content(gateway_client: TestClient) -> None:
    response = await gateway_client.post("/predict", data=form(b"just some text\n" * 10, "cat.jpg"))
    await assert_error(response, 415, "not an image")
    raw = await gateway_client.post("/predict", data=b"%PDF-1.7 ...", headers={"Content-Type": "image/jpeg"})
    await assert_error(raw, 415, "not an image")


@pytest.mark.parametrize("top_k", ["0", "6", "abc", "2.5", ""])
async def test_bad_top_k_is_400_before_the_upload_is_read(gateway_client: TestClient, photos, top_k) -> None:
    response = await gateway_client.post(f"/predict?top_k={top_k}", data=form(photos["coffee"].read_bytes()))
    await assert_error(response, 400, "top_k")


async def test_oversized_content_length_is_413_before_any_body(gateway_client: TestClient) -> None:
    """An honest Content-Length over the limit: 413 at once, no "100 Continue", no body read."""
    reader, writer = await asyncio.open_connection(gateway_client.host, gateway_client.port)
    try:
        size = int(TEST_UPLOAD_MB * 1024 * 1024) * 50
        writer.write(
            f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
    finally:
        writer.close()


async def test_stream_over_the_limit_is_413_without_reading_the_rest(gateway_client: TestClient) -> None:
    """A chunked body (no Content-Length) sent slowly: the 413 arrives once the limit is crossed,
    long before the client is done, and the server then closes the connection."""
    limit = int(TEST_UPLOAD_MB * 1024 * 1024)
    chunk = b"\xff\xd8\xff" + b"\0" * (64 * 1024 - 3)
    planned = 20 * limit
    reader, writer = await asyncio.open_connection(gateway_client.host, gateway_client.port)
    sent = 0
    response_task = asyncio.create_task(reader.readline())
    try:
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        while sent < planned and not response_task.done():
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0.005)
        status_line = await asyncio.wait_for(response_task, 5)
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        assert limit < sent < 3 * limit, f"sent {sent} bytes before the 413"
        # The connection ends soon after (lingering time), though the body never finished.
        rest = await asyncio.wait_for(reader.read(), 10)
        assert b"larger than the limit" in rest
    finally:
        writer.close()


async def test_multipart_over_the_limit_is_413(gateway_client: TestClient) -> None:
    big = b"\xff\xd8\xff" + b"\0" * int(TEST_UPLOAD_MB * 1024 * 1024)
    await assert_error(await gateway_client.post("/predict", data=form(big)), 413, "larger than the limit")


async def test_feedback_as_text_is_415_and_unknown_route_is_json_404(gateway_client: TestClient) -> None:
    response = await gateway_client.post("/feedback", data="hi", headers={"Content-Type": "text/plain"})
    await assert_error(response, 415, "form or as json")
    await assert_error(await gateway_client.get("/no/such/page"), 404, "not found")
    await assert_error(await gateway_client.get("/predict"), 405, "not allowed")


# -- the broker path ----------------------------------------------------------


async def test_no_worker_is_504_within_the_deadline(gateway_client: TestClient, photos) -> None:
    started = time.monotonic()
    response = await gateway_client.post("/predict", data=form(photos["coffee"].read_bytes()))
    elapsed = time.monotonic() - started
    await assert_error(response, 504, "no classifier answered")
    assert TEST_TIMEOUT_S - 0.1 <= elapsed < TEST_TIMEOUT_S + 1
    # The correlation id was forgotten, and the timeout counted.
    rpc = gateway_client.app[GATEWAY].rpc
    assert rpc.in_flight == 0
    metrics = await (await gateway_client.get("/metrics")).text()
    assert "gateway_rpc_timeouts_total 1.0" in metrics


async def test_full_queue_is_503_at_once(make_gateway, photos, rabbitmq_url, queue_name) -> None:
    client = await make_gateway(queue_max_length=1)
    # Fill the queue (the gateway has declared it) until the broker nacks: it is full now.
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for _ in range(5):
            try:
                await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=queue_name)
            except aio_pika.exceptions.DeliveryError:
                break
        else:
            pytest.fail("the request queue never reported full")
    started = time.monotonic()
    response = await client.post("/predict", data=form(photos["chelsea"].read_bytes()))
    elapsed = time.monotonic() - started
    await assert_error(response, 503, "queue is full")
    assert response.headers["Retry-After"].isdigit()
    assert elapsed < 1.0, "the broker's nack must come back at once"
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_rpc_rejected_total{reason="queue_full"} 1.0' in metrics


async def test_missing_request_queue_is_503_at_once(
    gateway_client: TestClient, photos, rabbitmq_url, queue_name
) -> None:
    """The queue vanished under a running gateway: the mandatory publish is returned, not lost."""
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue_name)
    started = time.monotonic()
    response = await gateway_client.post("/predict", data=form(photos["coffee"].read_bytes()))
    await assert_error(response, 503, "unavailable")
    assert time.monotonic() - started < 1.0
    assert gateway_client.app[GATEWAY].rpc.connected  # a returned message does not cost the channel


async def test_broker_down_is_503_at_once_and_not_ready(make_gateway, photos, monkeypatch) -> None:
    monkeypatch.setattr(gateway_module, "BROKER_WAIT_S", 0.2)
    client = await make_gateway(rabbitmq_url="amqp://guest:guest@127.0.0.1:1/")
    started = time.monotonic()
    response = await client.post("/predict", data=form(photos["coffee"].read_bytes()))
    assert time.monotonic() - started < 1.0
    await assert_error(response, 503, "unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert (await client.get("/health/live")).status == 200
    ready = await client.get("/health/ready")
    assert ready.status == 503
    assert (await ready.json())["broker"] == "disconnected"


async def test_redis_down_degrades_but_does_not_fail(make_gateway, photos) -> None:
    client = await make_gateway(redis_url="redis://127.0.0.1:1/0")
    started = time.monotonic()
    response = await client.post("/predict", data=form(photos["coffee"].read_bytes()))
    # It went on to the broker (no worker here: 504), instead of failing for Redis.
    await assert_error(response, 504, "no classifier answered")
    assert time.monotonic() - started < TEST_TIMEOUT_S + 1
    ready = await client.get("/health/ready")
    body = await ready.json()
    assert body["redis"] == "down" and body["broker"] == "connected"


async def test_identical_concurrent_uploads_make_one_job(
    gateway_client, photos, rabbitmq_url, queue_name
) -> None:
    data = photos["astronaut"].read_bytes()
    requests = [asyncio.create_task(gateway_client.post("/predict", data=form(data))) for _ in range(4)]
    await asyncio.sleep(0.7)
    assert await queue_depth(rabbitmq_url, queue_name) == 1
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [504] * 4
    metrics = await (await gateway_client.get("/metrics")).text()
    assert "gateway_singleflight_joined_total 3.0" in metrics


async def test_in_flight_bound_is_503_at_once(make_gateway, photos) -> None:
    client = await make_gateway(max_in_flight=1, request_timeout_s=3.0)
    first = asyncio.create_task(client.post("/predict", data=form(photos["coffee"].read_bytes())))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    response = await client.post("/predict", data=form(photos["chelsea"].read_bytes()))
    await assert_error(response, 503, "limit of requests in flight")
    assert "Retry-After" in response.headers
    assert time.monotonic() - started < 0.5
    # Health and metrics are never shed.
    assert (await client.get("/health/live")).status == 200
    first.cancel()


async def test_late_reply_is_dropped_quietly(gateway_client: TestClient, rabbitmq_url: str) -> None:
    """A reply for a forgotten correlation id must not break the reply consumer."""
    rpc = gateway_client.app[GATEWAY].rpc
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(
                b'{"ok": false, "error": {"code": "expired", "message": "late"}}', correlation_id="forgotten"
            ),
            routing_key=rpc.reply_queue,
        )
    await asyncio.sleep(0.3)
    assert rpc.connected and rpc.in_flight == 0


# -- cache ----------------------------------------------------------------------


async def test_cached_result_is_served_without_a_worker(
    gateway_client: TestClient, photos, announce_model, put_cached
) -> None:
    data = photos["coffee"].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    announce_model(MODEL)
    put_cached(
        make_reply(
            sha,
            MODEL,
            [
                ("espresso", 0.8),
                ("cup", 0.1),
                ("eggnog", 0.05),
                ("coffee mug", 0.03),
                ("chocolate sauce", 0.02),
            ],
        )
    )
    response = await gateway_client.post("/predict", data=form(data))
    body = await response.json()
    assert response.status == 200, body
    assert body == {
        "success": True,
        "prediction": "espresso",
        "score": 0.8,
        "top_k": [
            {"label": "espresso", "score": 0.8},
            {"label": "cup", "score": 0.1},
            {"label": "eggnog", "score": 0.05},
            {"label": "coffee mug", "score": 0.03},
            {"label": "chocolate sauce", "score": 0.02},
        ],
        "model": {"name": "test-model", "version": "0123456789ab"},
        "cached": True,
        "image": f"{sha}.jpg",
        "latency_ms": body["latency_ms"],
    }
    assert body["latency_ms"] >= 0
    # top_k slices; a raw image body works as well as the form.
    raw = await gateway_client.post("/predict?top_k=2", data=data, headers={"Content-Type": "image/jpeg"})
    assert [e["label"] for e in (await raw.json())["top_k"]] == ["espresso", "cup"]
    metrics = await (await gateway_client.get("/metrics")).text()
    assert "gateway_cache_hits_total 2.0" in metrics
    assert 'gateway_requests_total{method="POST",route="/predict",status="200"} 2.0' in metrics


async def test_cache_of_another_model_version_is_not_served(
    gateway_client: TestClient, photos, announce_model, put_cached
) -> None:
    data = photos["chelsea"].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    announce_model(MODEL)
    put_cached(make_reply(sha, ModelInfo("old-model", "ffffffffffff"), FIVE))
    response = await gateway_client.post("/predict", data=form(data))
    await assert_error(response, 504, "no classifier answered")


# -- uploads, feedback, page, health --------------------------------------------


async def _predict_cached(client: TestClient, photo: Path, announce_model, put_cached) -> dict:
    data = photo.read_bytes()
    announce_model(MODEL)
    put_cached(make_reply(hashlib.sha256(data).hexdigest(), MODEL, FIVE))
    response = await client.post("/predict", data=form(data))
    assert response.status == 200
    return await response.json()


async def test_uploads_are_served_and_traversal_is_404(
    gateway_client: TestClient, photos, announce_model, put_cached
) -> None:
    body = await _predict_cached(gateway_client, photos["coffee"], announce_model, put_cached)
    image = await gateway_client.get(f"/uploads/{body['image']}")
    assert image.status == 200
    assert image.headers["Content-Type"] == "image/jpeg"
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert await image.read() == photos["coffee"].read_bytes()

    for path in (
        "/uploads/..%2F..%2Fetc%2Fpasswd",
        "/uploads/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"/uploads/{body['image'].upper()}",
        f"/uploads/{'0' * 64}.jpg",
        "/uploads/",
    ):
        response = await gateway_client.get(path)
        assert response.status == 404, path
    # A raw, unnormalised path straight on the socket.
    reader, writer = await asyncio.open_connection(gateway_client.host, gateway_client.port)
    writer.write(b"GET /uploads/../../etc/passwd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 404") and b"root:" not in raw


async def test_feedback_json_appends_one_row(
    gateway_client: TestClient, photos, announce_model, put_cached, gateway_settings
) -> None:
    body = await _predict_cached(gateway_client, photos["coffee"], announce_model, put_cached)
    report = {
        "image": body["image"],
        "prediction": "espresso",
        "score": 0.75,
        "correct_label": "=1+1 cappuccino",
    }
    response = await gateway_client.post("/feedback", json=report)
    assert response.status == 200
    assert await response.json() == {"success": True}
    with open(gateway_settings.feedback_csv, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "image", "predicted_label", "score", "correct_label", "model_version"]
    assert rows[1][1:] == [body["image"], "espresso", "0.75", "'=1+1 cappuccino", MODEL.version]
    assert len(rows) == 2


async def test_bad_feedback_is_refused_saying_why(
    gateway_client: TestClient, photos, announce_model, put_cached, gateway_settings
) -> None:
    body = await _predict_cached(gateway_client, photos["coffee"], announce_model, put_cached)
    unknown = {"image": f"{'a' * 64}.jpg", "prediction": "espresso", "score": 0.5}
    await assert_error(await gateway_client.post("/feedback", json=unknown), 404, "no uploaded image")
    malformed = {**unknown, "image": "../../etc/passwd"}
    await assert_error(await gateway_client.post("/feedback", json=malformed), 400, "not an image id")
    bad_score = {"image": body["image"], "prediction": "espresso", "score": 7}
    await assert_error(await gateway_client.post("/feedback", json=bad_score), 400, "score")
    control = {"image": body["image"], "prediction": "espresso", "score": 0.5, "correct_label": "a\x1bb"}
    await assert_error(await gateway_client.post("/feedback", json=control), 400, "control")
    await assert_error(
        await gateway_client.post("/feedback", data=b"{nope", headers={"Content-Type": "application/json"}),
        400,
        "json",
    )
    assert not gateway_settings.feedback_csv.exists()  # nothing was written for any of them


async def test_page_flow_without_javascript(
    gateway_client: TestClient, photos, announce_model, put_cached, gateway_settings
) -> None:
    index = await gateway_client.get("/")
    assert index.status == 200
    html = await index.text()
    assert 'enctype="multipart/form-data"' in html and 'name="file"' in html
    csp = index.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'none'" in csp
    assert "<script" not in html and "style=" not in html  # nothing the CSP would block

    data = photos["coffee"].read_bytes()
    announce_model(MODEL)
    put_cached(
        make_reply(
            hashlib.sha256(data).hexdigest(),
            MODEL,
            [("espresso", 0.75), ("cup", 0.2), ("<b>mug</b>", 0.03), ("eggnog", 0.01), ("consomme", 0.01)],
        )
    )
    page = await gateway_client.post("/", data=form(data))
    assert page.status == 200
    html = await page.text()
    image_id = f"{hashlib.sha256(data).hexdigest()}.jpg"
    assert f'src="/uploads/{image_id}"' in html
    assert "espresso" in html and "75.0%" in html and MODEL.version in html
    assert "&lt;b&gt;mug&lt;/b&gt;" in html and "<b>mug</b>" not in html  # autoescaped
    assert re.search(r'<rect class="score-fill" width="75.00"', html)
    assert 'action="/feedback"' in html and 'list="top-labels"' in html

    thanks = await gateway_client.post(
        "/feedback",
        data={
            "image": image_id,
            "prediction": "espresso",
            "score": "0.75",
            "model_version": MODEL.version,
            "correct_label": "cappuccino",
        },
    )
    assert thanks.status == 200
    assert thanks.headers["Content-Type"].startswith("text/html")
    assert "Thank you" in await thanks.text()
    assert gateway_settings.feedback_csv.read_text().count("cappuccino") == 1


async def test_page_shows_errors_with_their_status(gateway_client: TestClient) -> None:
    response = await gateway_client.post("/", data=form(b"plain text", "x.png"))
    assert response.status == 415
    assert response.headers["Content-Type"].startswith("text/html")
    html = await response.text()
    assert 'role="alert"' in html and "not an image we accept" in html
    feedback = await gateway_client.post(
        "/feedback", data={"image": "nope", "prediction": "x", "score": "0.1"}
    )
    assert feedback.status == 400 and "not an image id" in await feedback.text()


async def test_readiness_needs_a_consumer(
    gateway_client: TestClient, rabbitmq_url: str, queue_name: str
) -> None:
    response = await gateway_client.get("/health/ready")
    body = await response.json()
    assert response.status == 503
    assert body["broker"] == "connected" and body["consumers"] == 0 and body["redis"] == "up"
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        await queue.consume(_ignore)
        # The answer is reused for READY_TTL_S (a flood of probes never reaches the broker).
        await asyncio.sleep(READY_TTL_S)
        response = await gateway_client.get("/health/ready")
        body = await response.json()
        assert response.status == 200, body
        assert body == {
            "ready": True,
            "broker": "connected",
            "queue": queue_name,
            "consumers": 1,
            "redis": "up",
            "shutting_down": False,
        }
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


async def test_metrics_are_prometheus_text(gateway_client: TestClient) -> None:
    await gateway_client.get("/health/live")
    response = await gateway_client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'gateway_requests_total{method="GET",route="/health/live",status="200"} 1.0' in text
    for name in (
        "gateway_request_duration_seconds_bucket",
        "gateway_in_flight_requests",
        "gateway_cache_hits_total",
        "gateway_cache_misses_total",
        "gateway_rpc_timeouts_total",
    ):
        assert name in text
    json.dumps(text)  # plain text, no binary


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that takes nothing away (it never acks): it only has to exist."""
