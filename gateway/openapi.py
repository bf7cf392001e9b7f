"""The OpenAPI 3.1 document of every route: ours and the Open Inference Protocol's.

The document is built here (one helper per repeated shape) and committed as
``gateway/openapi.json``, which the gateway serves at ``GET /openapi.json``.
After changing a route, regenerate it::

    python -c "from gateway.openapi import write; write()"

tests/oip/test_openapi.py fails when the committed file differs from this
builder, or when a route exists that the document lacks (or the reverse).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from common.contract import MAX_TOP_K, MIN_TOP_K
from gateway import oip

DOCUMENT_PATH = Path(__file__).resolve().parent / "openapi.json"

JSON = "application/json"
HTML = "text/html"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

_WHY = {
    400: "Malformed request: no image, an empty one, a bad parameter.",
    404: "Not found.",
    413: "Over the upload limit (MAX_UPLOAD_MB).",
    415: "Not an image type we accept (JPEG, PNG, GIF, WebP, BMP, TIFF), judged by content.",
    422: "The image cannot be decoded, or is over MAX_PIXELS.",
    502: "A worker failed on the job.",
    503: "Queue full, broker down, or the gateway at MAX_IN_FLIGHT; retry after Retry-After.",
    504: "No answer within REQUEST_TIMEOUT_S.",
}


def _errors(statuses: tuple[int, ...], content: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {"description": _WHY[status], "content": content}
        if status == 503:
            response["headers"] = _RETRY_AFTER
        responses[str(status)] = response
    return responses


def _api_errors(*statuses: int) -> dict[str, Any]:
    return _errors(statuses, _json(_ref("Error")))


def _page_errors(*statuses: int) -> dict[str, Any]:
    return _errors(statuses, {HTML: {"schema": {"type": "string"}}})


def _protocol_errors(*statuses: int) -> dict[str, Any]:
    return _errors(statuses, _json(_ref("ProtocolError")))


_PREDICTION_ERRORS = (400, 413, 415, 422, 502, 503, 504)

_MODEL_NAME = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
_MODEL_VERSION = {
    "name": "model_version",
    "in": "path",
    "required": True,
    "description": "The model file's version (the 12-hex-digit SHA-256 prefix the workers announce).",
    "schema": {"type": "string"},
}


def _v2_model_paths(suffix: str, operation: dict[str, Any], method: str = "get") -> dict[str, Any]:
    """The same operation with and without ``/versions/{model_version}``."""
    plain = {**operation, "parameters": [_MODEL_NAME]}
    versioned = {
        **operation,
        "operationId": f"{operation['operationId']}Version",
        "parameters": [_MODEL_NAME, _MODEL_VERSION],
    }
    if "parameters" in operation:
        plain["parameters"] = [_MODEL_NAME, *operation["parameters"]]
        versioned["parameters"] = [_MODEL_NAME, _MODEL_VERSION, *operation["parameters"]]
    return {
        f"/v2/models/{{model_name}}{suffix}": {method: plain},
        f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}": {method: versioned},
    }


def _schemas() -> dict[str, Schema]:
    tensor_metadata = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    return {
        "Error": {
            "type": "object",
            "description": "Every error of our own routes (the seed's keys keep their meaning).",
            "required": ["success", "prediction", "score", "error"],
            "properties": {
                "success": {"const": False},
                "prediction": {"type": "null"},
                "score": {"type": "null"},
                "error": {"type": "string"},
            },
        },
        "ProtocolError": {
            "type": "object",
            "description": "The Open Inference Protocol's error.",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "Prediction": {
            "type": "object",
            "required": ["success", "prediction", "score", "top_k", "model", "cached", "image", "latency_ms"],
            "properties": {
                "success": {"const": True},
                "prediction": {"type": "string"},
                "score": {"type": "number"},
                "top_k": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_TOP_K,
                    "items": {
                        "type": "object",
                        "required": ["label", "score"],
                        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                    },
                },
                "model": {
                    "type": "object",
                    "required": ["name", "version"],
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                },
                "cached": {"type": "boolean"},
                "image": {"type": "string", "pattern": "^[0-9a-f]{64}\\.(jpg|png|gif|webp|bmp|tiff)$"},
                "latency_ms": {"type": "number"},
            },
        },
        "Feedback": {
            "type": "object",
            "required": ["image", "prediction", "score"],
            "properties": {
                "image": {"type": "string", "description": "The image id /predict returned."},
                "prediction": {"type": "string"},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "correct_label": {"type": "string"},
                "model_version": {"type": "string"},
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "broker", "queue", "consumers", "redis", "shutting_down"],
            "properties": {
                "ready": {"type": "boolean"},
                "broker": {"enum": ["connected", "disconnected"]},
                "queue": {"type": "string"},
                "consumers": {"type": ["integer", "null"]},
                "redis": {"enum": ["up", "down"]},
                "shutting_down": {"type": "boolean"},
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "TensorMetadata": tensor_metadata,
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            },
        },
        "ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
        "InferRequest": {
            "type": "object",
            "description": (
                f"One input '{oip.INPUT_NAME}' (BYTES, shape [N], 1 <= N <= {oip.MAX_BATCH}): each element one "
                "encoded image, base64 in JSON, or raw with the binary-data extension (the JSON is then "
                "followed by the tensor: per element a little-endian uint32 length and the bytes; "
                "Inference-Header-Content-Length gives the JSON's length)."
            ),
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "properties": {"binary_data_output": {"type": "boolean"}},
                },
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape"],
                        "properties": {
                            "name": {"const": oip.INPUT_NAME},
                            "datatype": {"const": "BYTES"},
                            "shape": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 2,
                                "items": {"type": "integer", "minimum": 1, "maximum": oip.MAX_BATCH},
                            },
                            "parameters": {
                                "type": "object",
                                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                            },
                            "data": {
                                "type": "array",
                                "maxItems": oip.MAX_BATCH,
                                "items": {"type": "string", "contentEncoding": "base64"},
                            },
                        },
                    },
                },
                "outputs": {
                    "type": "array",
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"const": oip.OUTPUT_NAME},
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "binary_data": {"type": "boolean"},
                                    "classification": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "maximum": MAX_TOP_K,
                                        "description": "k > 0: the top-k as 'score:index:label' strings.",
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "model_version", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape"],
                        "properties": {
                            "name": {"type": "string"},
                            "datatype": {"enum": ["FP32", "BYTES"]},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "parameters": {
                                "type": "object",
                                "properties": {"binary_data_size": {"type": "integer"}},
                            },
                            "data": {"type": "array", "items": {"type": ["number", "string"]}},
                        },
                    },
                },
            },
        },
    }


def _our_paths() -> dict[str, Any]:
    upload_form = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream"}},
    }
    page = {HTML: {"schema": {"type": "string"}}}
    return {
        "/": {
            "get": {
                "operationId": "page",
                "summary": "The upload page.",
                "responses": {"200": {"description": "The page.", "content": page}},
            },
            "post": {
                "operationId": "uploadPage",
                "summary": "Classify the form's upload; the page shows the top-5.",
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": upload_form}},
                },
                "responses": {
                    "200": {"description": "The page with the result.", "content": page},
                    **_page_errors(*_PREDICTION_ERRORS),
                },
            },
        },
        "/predict": {
            "post": {
                "operationId": "predict",
                "summary": "Classify one image (multipart field 'file', or the raw image as the body).",
                "parameters": [
                    {
                        "name": "top_k",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": MIN_TOP_K, "maximum": MAX_TOP_K},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": upload_form},
                        "image/jpeg": {"schema": {"type": "string", "contentMediaType": "image/jpeg"}},
                        "application/octet-stream": {
                            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                        },
                    },
                },
                "responses": {
                    "200": {"description": "The prediction.", "content": _json(_ref("Prediction"))},
                    **_api_errors(*_PREDICTION_ERRORS),
                },
            },
        },
        "/feedback": {
            "post": {
                "operationId": "feedback",
                "summary": "Report on a prediction; one row in FEEDBACK_CSV. A form gets the page back.",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("Feedback")},
                        "application/x-www-form-urlencoded": {"schema": _ref("Feedback")},
                    },
                },
                "responses": {
                    "200": {
                        "description": "Recorded.",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["success"],
                                    "properties": {"success": {"const": True}},
                                }
                            },
                            **page,
                        },
                    },
                    **_errors((400, 404, 413, 415), {**_json(_ref("Error")), **page}),
                },
            },
        },
        "/uploads/{image_id}": {
            "get": {
                "operationId": "uploadedImage",
                "summary": "A stored upload, with its real content type.",
                "parameters": [
                    {
                        "name": "image_id",
                        "in": "path",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "description": "<sha256>.<ext>, as /predict returned it.",
                        },
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The image.",
                        "content": {
                            f"image/{kind}": {"schema": {"type": "string"}}
                            for kind in ("jpeg", "png", "gif", "webp", "bmp", "tiff")
                        },
                    },
                    **_api_errors(404),
                },
            },
        },
        "/health/live": {
            "get": {
                "operationId": "live",
                "summary": "Liveness.",
                "responses": {
                    "200": {
                        "description": "The event loop answers.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "alive"}},
                            }
                        ),
                    }
                },
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: broker connected and the queue has a consumer (Redis reported).",
                "responses": {
                    "200": {"description": "Ready.", "content": _json(_ref("Readiness"))},
                    "503": {
                        "description": "Not ready; the body says why.",
                        "content": _json(_ref("Readiness")),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/static/{filename}": {
            "get": {
                "operationId": "static",
                "summary": "The page's CSS and icon.",
                "parameters": [
                    {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            "text/css": {"schema": {"type": "string"}},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    "403": {"description": "Forbidden path.", "content": _json(_ref("Error"))},
                    "404": {
                        "description": "No such file (aiohttp's static handler answers it itself, with no body).",
                        "content": {
                            **_json(_ref("Error")),
                            "application/octet-stream": {"schema": {"type": "string"}},
                        },
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}},
            }
        },
    }


def _v2_paths() -> dict[str, Any]:
    not_ready = {"description": "Not ready.", "content": _json(_ref("ModelReady"))}
    infer = {
        "operationId": "modelInfer",
        "summary": "Classify N images (Open Inference Protocol); N jobs, answers in input order.",
        "parameters": [
            {
                "name": oip.HEADER_LENGTH,
                "in": "header",
                "required": False,
                "description": "Binary-data extension: the length of the JSON at the start of the body.",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": _ref("InferRequest")},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "contentMediaType": "application/octet-stream",
                        "description": "The JSON request, then the binary tensor data.",
                    }
                },
            },
        },
        "responses": {
            "200": {
                "description": "The outputs. With binary data, the JSON is followed by the output's bytes "
                "(FP32 little-endian, or length-prefixed BYTES) and Inference-Header-Content-Length is set.",
                "headers": {oip.HEADER_LENGTH: {"required": False, "schema": {"type": "string"}}},
                "content": {
                    JSON: {"schema": _ref("InferResponse")},
                    "application/octet-stream": {"schema": {"type": "string"}},
                },
            },
            **_protocol_errors(400, 404, 413, 415, 422, 502, 503, 504),
        },
    }
    return {
        "/v2": {
            "get": {
                "operationId": "serverMetadata",
                "summary": "Server metadata.",
                "responses": {
                    "200": {
                        "description": "Name, version, protocol extensions.",
                        "content": _json(_ref("ServerMetadata")),
                    }
                },
            }
        },
        "/v2/health/live": {
            "get": {
                "operationId": "serverLive",
                "summary": "Server liveness.",
                "responses": {
                    "200": {
                        "description": "Live.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["live"],
                                "properties": {"live": {"type": "boolean"}},
                            }
                        ),
                    }
                },
            }
        },
        "/v2/health/ready": {
            "get": {
                "operationId": "serverReady",
                "summary": "Server readiness.",
                "responses": {
                    **{
                        str(status): {
                            "description": "Ready." if status == 200 else "Not ready.",
                            "content": _json(
                                {
                                    "type": "object",
                                    "required": ["ready"],
                                    "properties": {"ready": {"type": "boolean"}},
                                }
                            ),
                        }
                        for status in (200, 503)
                    }
                },
            }
        },
        "/v2/repository/index": {
            "post": {
                "operationId": "repositoryIndex",
                "summary": "Model repository extension: the served model (none before a worker announces it).",
                "requestBody": {
                    "required": False,
                    "content": _json({"type": "object", "properties": {"ready": {"type": "boolean"}}}),
                },
                "responses": {
                    "200": {
                        "description": "The models.",
                        "content": _json(
                            {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["name", "version", "state"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "version": {"type": "string"},
                                        "state": {"enum": ["READY", "UNAVAILABLE"]},
                                        "reason": {"type": "string"},
                                    },
                                },
                            }
                        ),
                    },
                    **_protocol_errors(400, 413),
                },
            }
        },
        **_v2_model_paths(
            "",
            {
                "operationId": "modelMetadata",
                "summary": "The served model's metadata; 404 for another name or version.",
                "responses": {
                    "200": {"description": "Metadata.", "content": _json(_ref("ModelMetadata"))},
                    **_protocol_errors(404, 503),
                },
            },
        ),
        **_v2_model_paths(
            "/ready",
            {
                "operationId": "modelReady",
                "summary": "Whether the model can infer now (a worker consumes).",
                "responses": {
                    "200": {"description": "Ready.", "content": _json(_ref("ModelReady"))},
                    **_protocol_errors(404),
                    "503": {
                        **not_ready,
                        "content": {JSON: {"schema": {"anyOf": [_ref("ModelReady"), _ref("ProtocolError")]}}},
                        "headers": _RETRY_AFTER,
                    },
                },
            },
        ),
        **_v2_model_paths("/infer", infer, method="post"),
    }


def build_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Image classification serving",
            "version": "1.0.0",
            "description": (
                "ImageNet-1k classification: our REST API (/predict, the page, feedback, health, metrics) "
                "and the Open Inference Protocol (KServe v2) under /v2."
            ),
        },
        "paths": {**_our_paths(), **_v2_paths()},
        "components": {"schemas": _schemas()},
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def write() -> None:
    """Regenerate the committed gateway/openapi.json."""
    DOCUMENT_PATH.write_text(render())


async def document(request: web.Request) -> web.Response:
    """GET /openapi.json: the committed document."""
    return web.Response(body=_committed(), content_type=JSON)


@functools.cache
def _committed() -> bytes:
    return DOCUMENT_PATH.read_bytes()
