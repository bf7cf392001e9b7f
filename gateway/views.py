"""HTTP handlers, kept thin: read the request, call a service with plain values, shape the answer.

Failures are raised as :class:`~gateway.errors.GatewayError`; the error
middleware renders them as JSON, or as the page for handlers marked
:func:`~gateway.middleware.html_errors`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from common.contract import MAX_TOP_K
from gateway.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from gateway.feedback import FeedbackEntry
from gateway.images import upload_kind
from gateway.middleware import html_errors
from gateway.pages import STATIC_DIR, render_page
from gateway.receive import receive_upload
from gateway.service import PredictionResult, parse_top_k
from gateway.state import GATEWAY
from gateway.uploads import refuse_content_encoding

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
FEEDBACK_MAX_BYTES = 64 * 1024
# Stored uploads never change (their name is their hash): let browsers keep them.
IMMUTABLE = "public, max-age=31536000, immutable"
# Shown in place of an upload the store has evicted (the page that linked it still works).
EVICTED_PLACEHOLDER = STATIC_DIR / "evicted.svg"


def _is_form(request: web.Request) -> bool:
    return request.content_type in FORM_TYPES


async def index(request: web.Request) -> web.Response:
    """GET /: the upload page."""
    return render_page(request, {})


@html_errors()
async def upload_page(request: web.Request) -> web.Response:
    """POST /: classify the form's upload and show the result on the page."""
    result = await _classify_upload(request, top_k=MAX_TOP_K)
    return render_page(request, {"result": result})


async def predict(request: web.Request) -> web.Response:
    """POST /predict: multipart field ``file`` or a raw image body; ``?top_k=1..5``."""
    top_k = parse_top_k(request.query.get("top_k"))  # before the upload is read
    result = await _classify_upload(request, top_k=top_k)
    return web.json_response(result.to_json())


async def _classify_upload(request: web.Request, top_k: int) -> PredictionResult:
    started = time.perf_counter()  # the reported latency includes receiving the upload
    upload = await receive_upload(request)
    return await request.app[GATEWAY].predictor.predict_upload(upload, top_k=top_k, started=started)


@html_errors(_is_form)
async def feedback(request: web.Request) -> web.Response:
    """POST /feedback: a report on a prediction, from the page's form or as JSON."""
    gateway = request.app[GATEWAY]
    data = await _feedback_data(request)
    model = await gateway.cache.model()
    entry = FeedbackEntry.parse(data, default_model_version=model.version if model else "")
    if upload_kind(entry.image) is None:
        raise BadRequest("'image' is not an image id from /predict (expected <sha256>.<ext>).")
    if not gateway.store.was_stored(entry.image):  # evicted lately still counts: the page showed it
        raise NotFound("No uploaded image has this id.")
    await gateway.feedback.record(entry)
    gateway.metrics.feedback_rows.inc()
    if _is_form(request):
        return render_page(request, {"thanks": entry})
    return web.json_response({"success": True})


async def _feedback_data(request: web.Request) -> Mapping[str, Any]:
    if request.content_length is not None and request.content_length > FEEDBACK_MAX_BYTES:
        raise PayloadTooLarge("The feedback is too large.")
    refuse_content_encoding(request)
    if _is_form(request):
        try:
            return await request.post()
        except ValueError as exc:  # e.g. multipart without a boundary: the client's fault, not ours
            raise BadRequest(f"The form body is malformed: {exc}") from None
    if request.content_type == "application/json":
        try:
            data = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("The feedback body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise BadRequest("The feedback body must be a JSON object.")
        return data
    raise UnsupportedMediaType("Send feedback as a form or as JSON (Content-Type: application/json).")


async def uploaded_image(request: web.Request) -> web.StreamResponse:
    """GET /uploads/<id>: a stored upload, with its real content type."""
    image_id = request.match_info["image_id"]
    kind = upload_kind(image_id)  # validated before the disk is touched
    path = request.app[GATEWAY].store.path_for(image_id) if kind else None
    if kind is not None and path is None and _wants_image(request):
        # Evicted from the store (or never kept): the page's <img> gets a placeholder, not a broken icon.
        return web.FileResponse(EVICTED_PLACEHOLDER, status=404, headers={"Cache-Control": "no-store"})
    if kind is None or path is None:
        raise NotFound("No uploaded image has this id.")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": kind.content_type,
            "Cache-Control": IMMUTABLE,
            "Content-Disposition": f'inline; filename="{image_id}"',
        },
    )


def _wants_image(request: web.Request) -> bool:
    """A browser's <img> request (it accepts images), not an API client asking for JSON."""
    accept = request.headers.get("Accept", "")
    return "image/" in accept and "application/json" not in accept


async def live(request: web.Request) -> web.Response:
    """GET /health/live: the event loop answers."""
    return web.json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    """GET /health/ready: 200 when the broker is connected and the request queue has a consumer."""
    gateway = request.app[GATEWAY]
    probe = await gateway.readiness.check()  # cached a moment: a flood of probes never reaches the broker
    consumers = None if gateway.shutting_down else probe.consumers
    redis_up = probe.redis_up
    is_ready = not gateway.shutting_down and gateway.rpc.connected and (consumers or 0) >= 1
    body = {
        "ready": is_ready,
        "broker": "connected" if gateway.rpc.connected else "disconnected",
        "queue": gateway.settings.queue_name,
        "consumers": consumers,
        "redis": "up" if redis_up else "down",
        "shutting_down": gateway.shutting_down,
    }
    return web.json_response(body, status=200 if is_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    registry = request.app[GATEWAY].metrics
    return web.Response(body=registry.render(), headers={"Content-Type": registry.content_type})
