"""The message contract between the gateway and the classifier workers.

This module is the single owner of every name that crosses a process boundary:
queue names, AMQP headers, the reply schema and the Redis cache key. Both sides
import it; it imports only the standard library so that either side can.
See docs/DESIGN.md for the prose version.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CONTRACT_VERSION = "v1"

DEFAULT_QUEUE = "classify"

# AMQP message headers on a request.
HEADER_SHA256 = "sha256"
HEADER_DEADLINE_MS = "deadline_ms"
HEADER_TOP_K = "top_k"
# Present and true: the reply also carries the whole probability vector (the Open Inference
# Protocol's ``probabilities`` output). Absent means false, so older gateways are unaffected.
HEADER_PROBABILITIES = "probabilities"
# Present and true: the message body is empty and the image waits in Redis under
# image_key(sha256) (the claim-check pattern: the broker carries a reference, not 100 KB
# of photo through its quorum log). Absent or false: the body is the image.
HEADER_IMAGE_IN_REDIS = "image_in_redis"
# Present and true: the requester also reads reply batches (REPLY_BATCH_CONTENT_TYPE), so a worker
# may answer this job together with others for the same reply queue in one message. Absent means
# false: one message per reply, so a requester that predates batches is answered as before.
HEADER_REPLY_BATCHES = "reply_batches"

# On a job a worker took out of a job batch delivered again (it then sends each job alone): how many
# times that batch was delivered before, so that the job's poison count goes on from there.
HEADER_EARLIER_DELIVERIES = "earlier_deliveries"

# The content type of a job batch: several jobs in one message, ``{"jobs": [{"correlation_id": ...,
# "headers": {<the job's headers>}}, ...]}``, all for the message's reply_to and all with their image
# in Redis (HEADER_IMAGE_IN_REDIS), so the body is small. The message has no correlation_id.
JOB_BATCH_CONTENT_TYPE = "application/vnd.classify.job-batch+json"
# The most jobs one job batch may carry (MAX_JOBS_PER_MESSAGE is at most this): a worker refuses a
# bigger one as malformed rather than take thousands of jobs in hand from one message.
MAX_JOBS_IN_A_BATCH = 64

# The content type of a reply batch: ``{"replies": {"<correlation id>": <reply>, ...}}``, each
# reply the JSON a single reply message would carry. A reply batch has no correlation_id.
REPLY_BATCH_CONTENT_TYPE = "application/vnd.classify.reply-batch+json"

MIN_TOP_K = 1
MAX_TOP_K = 5

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def dead_letter_queue(queue: str) -> str:
    """Name of the queue that collects ``queue``'s rejected and poison jobs."""
    return f"{queue}.dead"


def image_key(sha256: str) -> str:
    """Redis key of an image waiting for a worker (see HEADER_IMAGE_IN_REDIS)."""
    return f"clf:{CONTRACT_VERSION}:image:{sha256}"


# A claimed image outlives its job's deadline by this much in Redis: the job itself expires
# from the queue at the deadline, and a worker holding it checks the deadline before fetching.
IMAGE_TTL_MARGIN_MS = 2_000


def cache_key(model_version: str, sha256: str, *, probabilities: bool = False) -> str:
    """Redis key of a cached success reply: one model's answer for one image.

    An answer with the whole probability vector is cached under a key of its own
    (suffix ``:p``): a top-k entry must never be served to a request that needs
    every class, and the common top-k entry stays small.
    """
    key = f"clf:{CONTRACT_VERSION}:{model_version}:{sha256}"
    return f"{key}:p" if probabilities else key


def encode_probabilities(float32_le: bytes) -> str:
    """The wire form of a probability vector: base64 of its little-endian float32 bytes.

    Exact (no decimal round trip), a third of the size of a JSON list, and the gateway
    turns it into the protocol's binary output without numpy.
    """
    return base64.b64encode(float32_le).decode("ascii")


def decode_probabilities(text: str) -> bytes:
    """Little-endian float32 bytes of a vector made by :func:`encode_probabilities`."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ContractError(f"probabilities are not base64: {exc}") from exc
    if not raw or len(raw) % 4:
        raise ContractError("probabilities are not a whole number of float32 values")
    return raw


def model_announcement_key(queue: str) -> str:
    """Redis key where workers announce the model they serve on ``queue``.

    The gateway reads it to know which model version's cache entries are valid
    before it has seen a single reply.
    """
    return f"clf:{CONTRACT_VERSION}:model:{queue}"


def now_ms() -> int:
    return int(time.time() * 1000)


class ErrorCode(StrEnum):
    """Why a worker could not classify a job."""

    INVALID_IMAGE = "invalid_image"
    EXPIRED = "expired"
    INTERNAL = "internal"
    # The job said its image was in Redis, and it was not there (evicted, expired, Redis down or
    # restarted): the gateway sends the job again with the image in the message.
    IMAGE_MISSING = "image_missing"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which model answered: its name and the 12-hex-digit SHA-256 prefix of its file."""

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Prediction:
    """One ranked class of a reply."""

    label: str
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class SuccessReply:
    """A worker's answer for one image; also the value stored in the Redis cache."""

    sha256: str
    model: ModelInfo
    top: list[Prediction]
    inference_ms: float
    batch_size: int
    # Every class's probability (see encode_probabilities), only when the job asked for it.
    probabilities: str | None = None
    ok: bool = field(default=True, init=False)

    def to_json(self) -> bytes:
        # Spelled out rather than dataclasses.asdict, which copies recursively (a third of the cost;
        # the worker serialises two per job). Same keys, same order.
        data: dict[str, Any] = {
            "sha256": self.sha256,
            "model": {"name": self.model.name, "version": self.model.version},
            "top": [{"label": p.label, "index": p.index, "score": p.score} for p in self.top],
            "inference_ms": self.inference_ms,
            "batch_size": self.batch_size,
        }
        if self.probabilities is not None:  # top-k replies and cache entries keep their old shape
            data["probabilities"] = self.probabilities
        data["ok"] = True
        return json.dumps(data, separators=(",", ":")).encode()

    def probability_bytes(self) -> bytes | None:
        """The probability vector as little-endian float32 bytes, or None when not asked for."""
        return None if self.probabilities is None else decode_probabilities(self.probabilities)


@dataclass(frozen=True, slots=True)
class FailureReply:
    """A worker's refusal: ``code`` is machine-readable, ``message`` is for a human."""

    code: ErrorCode
    message: str
    ok: bool = field(default=False, init=False)

    def to_json(self) -> bytes:
        payload = {"ok": False, "error": {"code": str(self.code), "message": self.message}}
        return json.dumps(payload, separators=(",", ":")).encode()


Reply = SuccessReply | FailureReply


class ContractError(ValueError):
    """A message that does not follow this contract."""


def model_announcement(model: ModelInfo) -> str:
    """The value workers store under :func:`model_announcement_key`: ``{"name": ..., "version": ...}``."""
    return json.dumps({"name": model.name, "version": model.version}, separators=(",", ":"))


def parse_model_announcement(raw: bytes | str) -> ModelInfo:
    """Decode a model announcement; :class:`ContractError` if it is not one."""
    try:
        data = json.loads(raw)
        return ModelInfo(name=str(data["name"]), version=str(data["version"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"malformed model announcement: {exc}") from exc


def parse_reply(body: bytes) -> Reply:
    """Decode a reply (or a cache entry) into its typed form."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ContractError(f"malformed reply: {exc}") from exc
    return _reply_from_json(data)


def encode_reply_batch(replies: Sequence[tuple[str, bytes]]) -> bytes:
    """One message body for several replies: (correlation id, the reply's own JSON) pairs.

    Each reply's bytes go in as they are (no second encoding); a correlation id is escaped, since
    any client may choose one.
    """
    items = b",".join(json.dumps(cid).encode() + b":" + body for cid, body in replies)
    return b'{"replies":{' + items + b"}}"


def parse_reply_batch(body: bytes) -> dict[str, Reply | ContractError]:
    """The replies of a reply batch by correlation id; a malformed reply maps to its ContractError
    (only that caller fails), a malformed batch raises ContractError."""
    try:
        replies = json.loads(body)["replies"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"malformed reply batch: {exc}") from exc
    if not isinstance(replies, dict):
        raise ContractError("malformed reply batch: replies is not an object")
    parsed: dict[str, Reply | ContractError] = {}
    for correlation_id, data in replies.items():
        try:
            parsed[correlation_id] = _reply_from_json(data)
        except ContractError as exc:
            parsed[correlation_id] = exc
    return parsed


def encode_job_batch(jobs: Sequence[tuple[str, JobHeaders]]) -> bytes:
    """One message body for several jobs: (correlation id, headers) pairs."""
    entries = [{"correlation_id": cid, "headers": headers.to_amqp()} for cid, headers in jobs]
    return json.dumps({"jobs": entries}, separators=(",", ":")).encode()


def parse_job_batch(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (correlation id, raw headers) of each job in a job batch, in order; ContractError if the
    batch is malformed. Each job's headers are checked where each job is (JobHeaders.from_amqp)."""
    try:
        entries = json.loads(body)["jobs"]
        if not isinstance(entries, list) or not entries:
            raise TypeError("jobs is not a non-empty list")
        if len(entries) > MAX_JOBS_IN_A_BATCH:
            raise ValueError(f"{len(entries)} jobs, more than {MAX_JOBS_IN_A_BATCH}")
        jobs = [(entry["correlation_id"], entry["headers"]) for entry in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"malformed job batch: {exc}") from exc
    for correlation_id, headers in jobs:
        if not isinstance(correlation_id, str) or not correlation_id or not isinstance(headers, dict):
            raise ContractError("malformed job batch: an entry without a correlation_id or headers")
    return jobs


def _reply_from_json(data: Any) -> Reply:
    try:
        if data["ok"]:
            return SuccessReply(
                sha256=data["sha256"],
                model=ModelInfo(**data["model"]),
                top=[Prediction(**p) for p in data["top"]],
                inference_ms=float(data["inference_ms"]),
                batch_size=int(data["batch_size"]),
                probabilities=_optional_probabilities(data.get("probabilities")),
            )
        error = data["error"]
        return FailureReply(code=ErrorCode(error["code"]), message=str(error["message"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"malformed reply: {exc}") from exc


def _optional_probabilities(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContractError("probabilities must be a base64 string")
    decode_probabilities(value)  # validated here, so a reader never meets a broken vector
    return value


@dataclass(frozen=True, slots=True)
class JobHeaders:
    """The headers a request carries besides the standard AMQP properties."""

    sha256: str
    deadline_ms: int
    top_k: int
    probabilities: bool = False
    image_in_redis: bool = False
    reply_batches: bool = False

    def to_amqp(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            HEADER_SHA256: self.sha256,
            HEADER_DEADLINE_MS: self.deadline_ms,
            HEADER_TOP_K: self.top_k,
        }
        if self.probabilities:
            headers[HEADER_PROBABILITIES] = True
        if self.image_in_redis:
            headers[HEADER_IMAGE_IN_REDIS] = True
        if self.reply_batches:
            headers[HEADER_REPLY_BATCHES] = True
        return headers

    @classmethod
    def from_amqp(cls, headers: dict[str, Any] | None) -> JobHeaders:
        headers = headers or {}
        try:
            sha256 = str(headers[HEADER_SHA256])
            deadline_ms = int(headers[HEADER_DEADLINE_MS])
            top_k = int(headers.get(HEADER_TOP_K, MAX_TOP_K))
            probabilities = headers.get(HEADER_PROBABILITIES, False)
            image_in_redis = headers.get(HEADER_IMAGE_IN_REDIS, False)
            reply_batches = headers.get(HEADER_REPLY_BATCHES, False)
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"missing or malformed job header: {exc}") from exc
        if not SHA256_RE.match(sha256):
            raise ContractError("header sha256 is not 64 lowercase hex digits")
        if not isinstance(probabilities, bool):
            raise ContractError("header probabilities must be a boolean")
        if not isinstance(image_in_redis, bool):
            raise ContractError("header image_in_redis must be a boolean")
        if not isinstance(reply_batches, bool):
            raise ContractError("header reply_batches must be a boolean")
        return cls(
            sha256=sha256,
            deadline_ms=deadline_ms,
            top_k=min(max(top_k, MIN_TOP_K), MAX_TOP_K),
            probabilities=probabilities,
            image_in_redis=image_in_redis,
            reply_batches=reply_batches,
        )

    def ms_left(self, now: int | None = None) -> int:
        return self.deadline_ms - (now_ms() if now is None else now)
