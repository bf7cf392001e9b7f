"""The Open Inference Protocol (KServe v2, Triton's REST protocol): health, metadata, inference.

Clients that already speak it (``tritonclient``, KServe's client, load tools) work
unchanged. The model is the one the workers announce (gateway/cache.py); an image
goes in as one element of the ``BYTES`` input ``image``: raw bytes with the
binary-data extension (``Inference-Header-Content-Length``), base64 in plain JSON.
Outputs: ``probabilities`` (FP32 ``[N, 1000]``, a job that asks the worker for every
class) or, with ``"parameters": {"classification": k}``, Triton's classification
extension (BYTES ``[N, k]``, ``"score:index:label"``, from the top-5 that /predict
shares). Errors are the protocol's ``{"error": "..."}`` with our usual statuses.
No numpy here: tensors are built with ``array`` and ``struct``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from common.contract import CONTRACT_VERSION, MAX_TOP_K, ContractError, ModelInfo
from gateway.errors import (
    RETRY_AFTER_BROKER_DOWN_S,
    BadGateway,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from gateway.middleware import error_body_shape
from gateway.receive import receive_body
from gateway.service import PredictionResult
from gateway.state import GATEWAY

SERVER_NAME = "image-classification-serving"
EXTENSIONS = ("classification", "binary_tensor_data", "model_repository")
PLATFORM = "onnxruntime_onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Every model this system serves is an ImageNet-1k classifier (the converter checks the labels).
NUM_CLASSES = 1000
# Images in one request: each is a job of its own on the queue (bounded at QUEUE_MAX_LENGTH).
MAX_BATCH = 32
HEADER_LENGTH = "Inference-Header-Content-Length"
# The JSON of a request besides its images (ids, parameters, outputs) fits in this.
JSON_OVERHEAD = 64 * 1024
_LENGTH_PREFIX = struct.Struct("<I")


def protocol_error(message: str) -> dict[str, Any]:
    """The protocol's error body."""
    return {"error": message}


oip_errors = error_body_shape(protocol_error)


# -- health and metadata -------------------------------------------------------------------


@oip_errors
async def server_metadata(request: web.Request) -> web.Response:
    """GET /v2: who we are and which protocol extensions we speak."""
    return web.json_response(
        {"name": SERVER_NAME, "version": CONTRACT_VERSION, "extensions": list(EXTENSIONS)}
    )


@oip_errors
async def server_live(request: web.Request) -> web.Response:
    """GET /v2/health/live."""
    return web.json_response({"live": True})


@oip_errors
async def server_ready(request: web.Request) -> web.Response:
    """GET /v2/health/ready: 200 when the broker is connected and a worker consumes, else 503."""
    ready = await _workers_ready(request)
    return web.json_response({"ready": ready}, status=200 if ready else 503)


@oip_errors
async def model_metadata(request: web.Request) -> web.Response:
    """GET /v2/models/{model_name}[/versions/{model_version}]: the served model's tensors."""
    model = await _served_model(request)
    return web.json_response(
        {
            "name": model.name,
            "versions": [model.version],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
        }
    )


@oip_errors
async def model_ready(request: web.Request) -> web.Response:
    """GET /v2/models/{model_name}[/versions/{model_version}]/ready: 200 when it can infer now, else 503."""
    model = await _served_model(request)
    ready = await _workers_ready(request)
    return web.json_response({"name": model.name, "ready": ready}, status=200 if ready else 503)


@oip_errors
async def repository_index(request: web.Request) -> web.Response:
    """POST /v2/repository/index (model repository extension): the served model, if one is announced.

    Body optional: ``{"ready": true}`` lists only a model that can infer now.
    """
    body = await receive_body(request, JSON_OVERHEAD)
    only_ready = False
    if body.strip():
        try:
            options = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("The repository index request is not valid JSON.") from None
        only_ready = _object(options, "the request").get("ready", False)
        if not isinstance(only_ready, bool):
            raise BadRequest("'ready' must be true or false.")
    model = await request.app[GATEWAY].cache.model()
    if model is None:
        return web.json_response([])
    ready = await _workers_ready(request)
    if only_ready and not ready:
        return web.json_response([])
    entry = {"name": model.name, "version": model.version, "state": "READY" if ready else "UNAVAILABLE"}
    if not ready:
        entry["reason"] = "no worker consumes the request queue"
    return web.json_response([entry])


async def _workers_ready(request: web.Request) -> bool:
    gateway = request.app[GATEWAY]
    if gateway.shutting_down or not gateway.rpc.connected:
        return False
    return (await gateway.rpc.consumer_count() or 0) >= 1


async def _served_model(request: web.Request) -> ModelInfo:
    """The model the workers announce, if the path names it (and its version, when given); else 404."""
    name = request.match_info["model_name"]
    version = request.match_info.get("model_version")
    model = await request.app[GATEWAY].cache.model()
    if model is None:
        raise ServiceUnavailable(
            "No worker has announced its model yet; please retry shortly.",
            retry_after=RETRY_AFTER_BROKER_DOWN_S,
        )
    if name != model.name:
        raise NotFound(f"Unknown model '{name}'; this server serves '{model.name}'.")
    if version is not None and version != model.version:
        raise NotFound(f"Model '{name}' has no version '{version}'; the served version is '{model.version}'.")
    return model


# -- inference -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One output the client asked for: as FP32 probabilities, or as the top-``classification``."""

    binary: bool
    classification: int = 0  # 0: the probabilities themselves


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed inference request: the images in order and what to answer with."""

    request_id: str | None
    images: list[bytes]
    output: RequestedOutput

    @property
    def needs_probabilities(self) -> bool:
        return self.output.classification == 0


@oip_errors
async def infer(request: web.Request) -> web.Response:
    """POST /v2/models/{model_name}[/versions/{model_version}]/infer: N images -> N answers, in order."""
    gateway = request.app[GATEWAY]
    model = await _served_model(request)
    limit = gateway.settings.max_upload_bytes
    body = await receive_body(request, limit * 4 // 3 + JSON_OVERHEAD)  # base64 in JSON is 4/3 the bytes
    parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
    if sum(len(image) for image in parsed.images) > limit:
        raise PayloadTooLarge(
            f"The images together are larger than the limit of {limit / (1024 * 1024):g} MB."
        )
    predictor = gateway.predictor
    # Every image is checked (type, size, pixels) before any job is sent.
    uploads = [predictor.image_upload(image) for image in parsed.images]
    outcomes = await asyncio.gather(
        *(
            predictor.predict_upload(upload, top_k=MAX_TOP_K, probabilities=parsed.needs_probabilities)
            for upload in uploads
        ),
        return_exceptions=True,
    )
    for outcome in outcomes:  # the first failure, in input order, is the request's
        if isinstance(outcome, BaseException):
            raise outcome
    results: list[PredictionResult] = outcomes  # type: ignore[assignment]
    return infer_response(model, parsed, results)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse the JSON (and, with the binary-data extension, the binary tail) of an inference request."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} must be a whole number from 0 to the body's length.")
        json_part, binary = body[:size], body[size:]
    try:
        doc = json.loads(json_part)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The inference request is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise BadRequest("The inference request must be a JSON object.")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string.")
    parameters = _object(doc.get("parameters"), "parameters")
    images = _parse_inputs(doc.get("inputs"), binary)
    output = _parse_outputs(doc.get("outputs"), bool(parameters.get("binary_data_output", False)))
    return InferRequest(request_id=request_id, images=images, output=output)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{what}' must be a JSON object.")
    return value


def _parse_inputs(inputs: Any, binary: bytes) -> list[bytes]:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(
            f"Send exactly one input, '{INPUT_NAME}' (BYTES, shape [N]: one encoded image each)."
        )
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise BadRequest(f"Unknown input {tensor.get('name')!r}; the model's input is '{INPUT_NAME}'.")
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"Input '{INPUT_NAME}' must have datatype BYTES.")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise BadRequest(f"Input '{INPUT_NAME}' must have shape [N] (or [N, 1]).")
    count = shape[0]
    if not 1 <= count <= MAX_BATCH:
        raise BadRequest(f"A request carries 1 to {MAX_BATCH} images; shape says {count}.")
    parameters = _object(tensor.get("parameters"), "inputs[0].parameters")
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None:
        if "data" in tensor:
            raise BadRequest(f"Input '{INPUT_NAME}' has both 'data' and binary_data_size.")
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size != len(binary):
            raise BadRequest("binary_data_size must equal the length of the binary data after the JSON.")
        images = _split_bytes_tensor(binary)
    else:
        if binary:
            raise BadRequest(
                "The body has binary data after the JSON but no input declares binary_data_size."
            )
        images = [_base64_image(element) for element in _flatten(tensor.get("data"))]
    if len(images) != count:
        raise BadRequest(f"Input '{INPUT_NAME}' has {len(images)} elements but its shape says {count}.")
    return images


def _split_bytes_tensor(raw: bytes) -> list[bytes]:
    """A BYTES tensor in binary form: each element is a little-endian uint32 length, then its bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw) or len(elements) >= MAX_BATCH:
            raise BadRequest(f"The binary data is not a BYTES tensor of at most {MAX_BATCH} elements.")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest("An element of the binary data is longer than the data left.")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest(f"Input '{INPUT_NAME}' needs 'data' (a list of base64 strings) or binary data.")
    flat: list[Any] = []
    for element in data:
        flat.extend(element if isinstance(element, list) else [element])
        if len(flat) > MAX_BATCH:
            raise BadRequest(f"A request carries 1 to {MAX_BATCH} images.")
    return flat


def _base64_image(element: Any) -> bytes:
    if not isinstance(element, str):
        raise BadRequest(f"In JSON, each element of '{INPUT_NAME}' is an image encoded as a base64 string.")
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"An element of '{INPUT_NAME}' is not valid base64.") from None


def _parse_outputs(outputs: Any, binary_default: bool) -> RequestedOutput:
    if outputs is None:  # none named: every output, binary if the request says so
        return RequestedOutput(binary=binary_default)
    if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
        raise BadRequest(f"Request at most one output, '{OUTPUT_NAME}'.")
    output = outputs[0]
    if output.get("name") != OUTPUT_NAME:
        raise BadRequest(f"Unknown output {output.get('name')!r}; the model's output is '{OUTPUT_NAME}'.")
    parameters = _object(output.get("parameters"), "outputs[0].parameters")
    binary = parameters.get("binary_data", binary_default)
    if not isinstance(binary, bool):
        raise BadRequest("binary_data must be true or false.")
    k = parameters.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_TOP_K:
        raise BadRequest(f"classification must be a whole number from 1 to {MAX_TOP_K} (0: probabilities).")
    return RequestedOutput(binary=binary, classification=k)


def infer_response(
    model: ModelInfo, parsed: InferRequest, results: Sequence[PredictionResult]
) -> web.Response:
    """The inference response: JSON, or JSON then the output's bytes when binary data was asked for."""
    count = len(results)
    if parsed.output.classification:
        k = parsed.output.classification
        strings = [f"{p.score:f}:{p.index}:{p.label}" for result in results for p in result.reply.top[:k]]
        if any(len(result.reply.top) < k for result in results):
            raise BadGateway("The classifier answered with fewer classes than asked for.")
        tensor: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [count, k]}
        raw = b"".join(_LENGTH_PREFIX.pack(len(s.encode())) + s.encode() for s in strings)
        values: list[Any] = strings
    else:
        rows = [_probability_row(result) for result in results]
        classes = len(rows[0]) // 4
        if any(len(row) != classes * 4 for row in rows):
            raise BadGateway("The classifier's probability vectors differ in length.")
        tensor = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [count, classes]}
        raw = b"".join(rows)
        values = _floats(raw) if not parsed.output.binary else []
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if parsed.request_id is not None:
        body["id"] = parsed.request_id
    if parsed.output.binary:
        tensor["parameters"] = {"binary_data_size": len(raw)}
        body["outputs"] = [tensor]
        header = json.dumps(body, separators=(",", ":")).encode()
        return web.Response(
            body=header + raw,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(header))},
        )
    tensor["data"] = values
    body["outputs"] = [tensor]
    return web.json_response(body, dumps=lambda obj: json.dumps(obj, separators=(",", ":")))


def _probability_row(result: PredictionResult) -> bytes:
    try:
        row = result.reply.probability_bytes()
    except ContractError:
        row = None
    if row is None:
        raise BadGateway("The classifier answered without the probabilities.")
    return row


def _floats(float32_le: bytes) -> list[float]:
    values = array("f")
    values.frombytes(float32_le)
    if sys.byteorder == "big":  # the wire form is little-endian
        values.byteswap()
    return values.tolist()
