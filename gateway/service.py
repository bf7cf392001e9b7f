"""The prediction service: the one code path behind ``POST /predict``, the page's ``POST /`` and v2 ``infer``.

upload -> (single-flight per image) cache look-up -> RPC to a worker -> store.
It takes plain values (an :class:`~gateway.images.Upload`, or an image's bytes) and
knows no HTTP: the views read the request (gateway.receive). Broker-level failures
are translated here into the gateway's error types (gateway.errors), each with its status.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from common.contract import (
    IMAGE_TTL_MARGIN_MS,
    MAX_TOP_K,
    MIN_TOP_K,
    ErrorCode,
    FailureReply,
    JobHeaders,
    Prediction,
    Reply,
    SuccessReply,
    now_ms,
)
from common.settings import Settings
from gateway.admission import Admission
from gateway.cache import ResultCache
from gateway.errors import (
    RETRY_AFTER_BROKER_DOWN_S,
    BadGateway,
    BadRequest,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
    UnprocessableImage,
    UnsupportedMediaType,
)
from gateway.image_size import check_pixel_limit
from gateway.images import ACCEPTED_NAMES, SNIFF_BYTES, Upload, sniff_image_type
from gateway.metrics import GatewayMetrics
from gateway.rpc import (
    BrokerUnavailable,
    DeadlineExceeded,
    MalformedReply,
    MessageTooLarge,
    QueueFull,
    RpcClient,
)
from gateway.singleflight import SingleFlight
from gateway.store import UploadStore

log = logging.getLogger(__name__)

# IMAGE_TRANSPORT: "redis" puts each job's image in Redis (the message carries its hash),
# "inline" always sends it in the message. docs/DESIGN.md, "Images in Redis".
IMAGE_TRANSPORTS = ("redis", "inline")


@dataclass(frozen=True, slots=True)
class PredictionResult:
    """What a prediction request gets: the worker's answer, where it came from, how long it took."""

    reply: SuccessReply
    cached: bool
    image_id: str
    latency_ms: float
    top_k: int

    @property
    def top(self) -> list[Prediction]:
        return self.reply.top[: self.top_k]

    def to_json(self) -> dict[str, Any]:
        """The /predict 200 body of docs/DESIGN.md."""
        best = self.top[0]
        return {
            "success": True,
            "prediction": best.label,
            "score": best.score,
            "top_k": [{"label": p.label, "score": p.score} for p in self.top],
            "model": {"name": self.reply.model.name, "version": self.reply.model.version},
            "cached": self.cached,
            "image": self.image_id,
            "latency_ms": round(self.latency_ms, 1),
        }


def parse_top_k(raw: str | None) -> int:
    """``?top_k=`` as an int in 1..5 (default 5), else 400."""
    if raw is None:
        return MAX_TOP_K
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not MIN_TOP_K <= value <= MAX_TOP_K:
        raise BadRequest(f"top_k must be a whole number from {MIN_TOP_K} to {MAX_TOP_K}.")
    return value


class Predictor:
    """Turns an uploaded image into a :class:`PredictionResult`, or a :class:`GatewayError`."""

    def __init__(
        self,
        settings: Settings,
        store: UploadStore,
        cache: ResultCache,
        rpc: RpcClient,
        metrics: GatewayMetrics,
        admission: Admission,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.store = store
        self.cache = cache
        self.rpc = rpc
        self.metrics = metrics
        self._flights: SingleFlight[tuple[SuccessReply, bool]] = SingleFlight(
            on_join=metrics.shared_flights.inc
        )

    def image_upload(self, data: bytes) -> Upload:
        """An image given as bytes (not read from a request), checked as an upload would be:
        400 empty, 413 over MAX_UPLOAD_MB, 415 not an accepted type, 422 over MAX_PIXELS."""
        if not data:
            raise BadRequest("The image is empty.")
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"The image is larger than the limit of {limit / (1024 * 1024):g} MB.")
        kind = sniff_image_type(data[:SNIFF_BYTES])
        if kind is None:
            raise UnsupportedMediaType(f"The file is not an image we accept; send a {ACCEPTED_NAMES} file.")
        upload = Upload(data=data, sha256=hashlib.sha256(data).hexdigest(), kind=kind)
        check_pixel_limit(upload, self.settings.max_pixels)
        return upload

    async def predict_image(
        self, data: bytes, *, top_k: int = MAX_TOP_K, probabilities: bool = False
    ) -> PredictionResult:
        """The service entry point free of HTTP: one image's bytes in, its prediction out.

        ``probabilities``: the answer also carries every class's probability (a job and
        a cache entry of their own). Raises a :class:`~gateway.errors.GatewayError`.
        """
        started = time.perf_counter()
        return await self.predict_upload(
            self.image_upload(data), top_k=top_k, probabilities=probabilities, started=started
        )

    async def predict_upload(
        self, upload: Upload, *, top_k: int, probabilities: bool = False, started: float | None = None
    ) -> PredictionResult:
        """Classify a received upload: the cache or a worker (single-flight); then store it.

        ``started``: when the request began (``time.perf_counter()``), so that the reported
        latency includes receiving the upload; by default, now.
        """
        started = time.perf_counter() if started is None else started
        self.admission.check_waiting_room()
        check_pixel_limit(upload, self.settings.max_pixels)  # a bomb is never published
        # The deadline starts once the upload is in: a slow client's upload does not eat the worker's time.
        deadline_ms = now_ms() + int(self.settings.request_timeout_s * 1000)
        # Identical images in flight at once are classified once (same sha256, same job);
        # a job for the probabilities is another job (its answer holds more).
        flight = f"{upload.sha256}:p" if probabilities else upload.sha256
        with self.admission.waiting_slot():
            reply, cached = await self._flights.run(
                flight, lambda: self._classify(upload, deadline_ms, probabilities)
            )
        if not reply.top:
            raise BadGateway("The classifier answered with no labels.")
        if probabilities and reply.probabilities is None:
            raise BadGateway("The classifier answered without the probabilities.")
        # Only an image a worker decoded is kept (a 4xx upload never reaches the disk).
        await self.store.save(upload)
        return PredictionResult(
            reply=reply,
            cached=cached,
            image_id=upload.image_id,
            latency_ms=(time.perf_counter() - started) * 1000,
            top_k=top_k,
        )

    async def _classify(
        self, upload: Upload, deadline_ms: int, probabilities: bool = False
    ) -> tuple[SuccessReply, bool]:
        hit = await self.cache.get(upload.sha256, probabilities=probabilities)
        if hit is not None:
            self.metrics.cache_hits.inc()
            return hit, True
        self.metrics.cache_misses.inc()
        # Always ask for the full top-5 and slice per request: one job serves every top_k.
        headers = JobHeaders(
            sha256=upload.sha256, deadline_ms=deadline_ms, top_k=MAX_TOP_K, probabilities=probabilities
        )
        try:
            reply = await self._send_job(upload, headers)
        except MessageTooLarge:
            raise PayloadTooLarge("The upload is larger than the message broker can carry.") from None
        except QueueFull:
            self.metrics.rpc_rejected.labels("queue_full").inc()
            raise ServiceUnavailable("The classifier queue is full; please retry shortly.") from None
        except BrokerUnavailable as exc:
            self.metrics.rpc_rejected.labels("broker_unavailable").inc()
            log.warning("job for %s not sent: %s", upload.sha256[:12], exc)
            raise ServiceUnavailable(
                "The classification service is unavailable (message broker down); please retry shortly.",
                retry_after=RETRY_AFTER_BROKER_DOWN_S,
            ) from None
        except DeadlineExceeded:
            self.metrics.rpc_timeouts.inc()
            raise GatewayTimeout(
                f"No classifier answered within {self.settings.request_timeout_s:g} s; please retry."
            ) from None
        except MalformedReply as exc:
            log.error("malformed reply for %s: %s", upload.sha256[:12], exc)
            raise BadGateway("The classifier sent an answer we could not read.") from None
        if isinstance(reply, FailureReply):
            raise _failure_error(reply)
        return reply, False

    async def _send_job(self, upload: Upload, headers: JobHeaders) -> Reply:
        """One job to a worker, its image in Redis (the claim check) when Redis takes it,
        else in the message; and once more with the image in the message if the worker
        found it missing from Redis (evicted, or Redis restarted in between)."""
        content_type = upload.kind.content_type
        if self.settings.image_transport == "redis" and await self.cache.put_image(
            upload.sha256, upload.data, headers.ms_left() + IMAGE_TTL_MARGIN_MS
        ):
            self.metrics.jobs_sent.labels("redis").inc()
            reply = await self.rpc.call(
                b"", content_type=content_type, headers=replace(headers, image_in_redis=True)
            )
            if not (isinstance(reply, FailureReply) and reply.code is ErrorCode.IMAGE_MISSING):
                return reply
            log.warning(
                "a worker found image %s missing from Redis; sending it in the message", upload.sha256[:12]
            )
        self.metrics.jobs_sent.labels("message").inc()
        return await self.rpc.call(upload.data, content_type=content_type, headers=headers)


def _failure_error(reply: FailureReply) -> Exception:
    """A worker's refusal as an HTTP error: 422 bad image, 504 expired, 502 worker fault."""
    if reply.code is ErrorCode.INVALID_IMAGE:
        return UnprocessableImage(f"The file could not be decoded as an image: {reply.message}")
    if reply.code is ErrorCode.IMAGE_MISSING:  # only after the job was sent again with the image
        log.error("a worker found the image missing although it was in the message: %s", reply.message)
        return BadGateway("The classifier could not read this image's job.")
    if reply.code is ErrorCode.EXPIRED:
        return GatewayTimeout("The request expired before a classifier could take it; please retry.")
    log.error("worker failed: %s", reply.message)
    return BadGateway("The classifier failed while processing this image.")
