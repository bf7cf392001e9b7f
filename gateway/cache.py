"""The Redis result cache as the gateway reads it, the model version that keys it, and images for workers.

Workers write results under ``cache_key(model version, sha256)`` and announce the
model they serve under ``model_announcement_key(queue)``. The gateway writes one kind
of key: an image waiting for a worker, ``image_key(sha256)``, for its job's lifetime. Redis being down must
degrade the gateway (no cache), never fail a prediction: every error here ends
in "no cached answer", and after one failure Redis is left alone for a moment so
that each request does not pay a connect timeout.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from common.contract import (
    ContractError,
    ModelInfo,
    SuccessReply,
    cache_key,
    image_key,
    model_announcement_key,
    parse_model_announcement,
    parse_reply,
)
from common.redis_link import RedisBackoff, redis_client

log = logging.getLogger(__name__)

# The announced model is re-read this often: a newly deployed model is seen within seconds.
MODEL_TTL_S = 3.0
# After a Redis error, skip it for this long (then try again).
BACKOFF_S = 5.0
# Redis answers in well under a millisecond; anything slower counts as down.
SOCKET_TIMEOUT_S = 0.25
# While Redis refuses images, say so at most this often.
IMAGE_WARN_EVERY_S = 60.0


class ResultCache:
    """Reads cached replies for the model the workers announce, holds images for workers;
    reports whether Redis is up."""

    def __init__(self, redis_url: str, queue_name: str) -> None:
        # No retry on a timeout: a miss is cheaper than a slow answer.
        self._client = redis_client(redis_url, SOCKET_TIMEOUT_S, retry_timeouts=False)
        self._announcement_key = model_announcement_key(queue_name)
        self._model: ModelInfo | None = None
        self._model_read_at = float("-inf")
        self._backoff = RedisBackoff(BACKOFF_S)
        # Its own: a Redis that refuses images (full, an ACL without SET) still serves the cache.
        self._image_backoff = RedisBackoff(BACKOFF_S, warn_every_s=IMAGE_WARN_EVERY_S)

    @property
    def up(self) -> bool | None:
        """Whether Redis answered last time; None: not asked yet."""
        return self._backoff.up

    async def close(self) -> None:
        await self._client.aclose()

    def _failed(self, what: str, exc: Exception) -> None:
        if self._backoff.failed():
            log.warning("Redis unavailable (%s: %s); serving without the cache", what, exc)

    def _skipping(self) -> bool:
        return self._backoff.skipping

    async def model(self) -> ModelInfo | None:
        """The model the workers announce, re-read every few seconds; None if unknown."""
        if time.monotonic() - self._model_read_at < MODEL_TTL_S or self._skipping():
            return self._model
        try:
            raw = await self._client.get(self._announcement_key)
        except RedisError as exc:
            self._failed("model announcement", exc)
            return self._model
        self._backoff.succeeded()
        self._model_read_at = time.monotonic()
        self._model = _parse_model(raw)
        return self._model

    async def get(self, sha256: str, *, probabilities: bool = False) -> SuccessReply | None:
        """The cached answer of the announced model for this image, or None (miss, no model, Redis down).

        ``probabilities``: only an answer that carries the whole probability vector will do.
        """
        model = await self.model()
        if model is None or self._skipping():
            return None
        try:
            raw = await self._client.get(cache_key(model.version, sha256, probabilities=probabilities))
        except RedisError as exc:
            self._failed("cache read", exc)
            return None
        self._backoff.succeeded()
        if raw is None:
            return None
        try:
            reply = parse_reply(raw.encode() if isinstance(raw, str) else raw)
        except ContractError as exc:
            log.warning("ignoring a malformed cache entry for %s: %s", sha256, exc)
            return None
        # Belt and braces: an entry must be this image's answer by this model.
        if (
            not isinstance(reply, SuccessReply)
            or reply.sha256 != sha256
            or reply.model.version != model.version
            or (probabilities and reply.probabilities is None)
        ):
            return None
        return reply

    async def put_image(self, sha256: str, data: bytes, ttl_ms: int) -> bool:
        """Keep an image for a worker under ``image_key(sha256)`` for ``ttl_ms``; False if Redis
        did not take it (down, full, refused): the caller then sends the image in the message."""
        if self._skipping() or self._image_backoff.skipping:
            return False
        try:
            await self._client.set(image_key(sha256), data, px=max(ttl_ms, 1))
        except RedisError as exc:
            if self._image_backoff.failed():
                log.warning(
                    "Redis did not take an image (%s: %s); sending images in the messages",
                    type(exc).__name__,
                    exc,
                )
            return False
        self._image_backoff.succeeded()
        return True

    async def ping(self) -> bool:
        """Ask Redis now (readiness); also clears the back-off when it answers."""
        try:
            await self._client.ping()
        except RedisError as exc:
            self._failed("ping", exc)
            return False
        self._backoff.succeeded()
        self._backoff.clear()
        return True


def _parse_model(raw: bytes | str | None) -> ModelInfo | None:
    if raw is None:
        return None
    try:
        return parse_model_announcement(raw)
    except ContractError as exc:
        log.warning("ignoring a malformed model announcement %r: %s", raw[:200], exc)
        return None
