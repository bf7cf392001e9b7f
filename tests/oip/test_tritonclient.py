"""The Open Inference Protocol, driven by NVIDIA's own client (tritonclient[http]) against the real stack."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from common.contract import cache_key, parse_reply
from tests.oip.conftest import MODEL_NAME
from tests.security.conftest import Stack
from tests.support.processes import REPO_ROOT

ESPRESSO = 967
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
CLASSIFICATION_RE = re.compile(r"^(\d+\.\d{6}):(\d+):(.+)$")


def image_input(images: list[bytes], *, binary: bool) -> httpclient.InferInput:
    """The model's input: one encoded image per element (base64 when sent as JSON)."""
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(image) for image in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def classify(
    client: httpclient.InferenceServerClient, images: list[bytes], k: int, *, binary: bool
) -> list[list]:
    """Triton's classification extension: per image, k (score, index, label), best first."""
    output = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=k)
    result = client.infer(MODEL_NAME, [image_input(images, binary=binary)], outputs=[output])
    rows = result.as_numpy("probabilities")
    assert rows.shape == (len(images), k)
    parsed = []
    for row in rows:
        entries = []
        for element in row:
            text = element.decode() if isinstance(element, bytes) else element
            match = CLASSIFICATION_RE.match(text)
            assert match, text
            entries.append((float(match[1]), int(match[2]), match[3]))
        assert [score for score, _, _ in entries] == sorted((score for score, _, _ in entries), reverse=True)
        parsed.append(entries)
    return parsed


def probabilities(
    client: httpclient.InferenceServerClient, images: list[bytes], *, binary: bool
) -> np.ndarray:
    output = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    rows = client.infer(MODEL_NAME, [image_input(images, binary=binary)], outputs=[output]).as_numpy(
        "probabilities"
    )
    assert rows.dtype == np.float32 and rows.shape == (len(images), 1000)
    return rows


def test_server_and_model_health(triton: httpclient.InferenceServerClient, model_version: str) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MODEL_NAME)
    assert triton.is_model_ready(MODEL_NAME, model_version)
    assert not triton.is_model_ready("resnet50")
    server = triton.get_server_metadata()
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"])


def test_model_metadata(triton: httpclient.InferenceServerClient, model_version: str) -> None:
    metadata = triton.get_model_metadata(MODEL_NAME)
    assert metadata == {
        "name": MODEL_NAME,
        "versions": [model_version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}],
    }
    assert re.fullmatch(r"[0-9a-f]{12}", model_version)
    assert triton.get_model_metadata(MODEL_NAME, model_version) == metadata
    for name, version in (("resnet50", ""), (MODEL_NAME, "000000000000")):
        with pytest.raises(InferenceServerException) as caught:
            triton.get_model_metadata(name, version)
        assert caught.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_k3_coffee_is_espresso(
    triton: httpclient.InferenceServerClient, photos: dict[str, Path], binary: bool
) -> None:
    (top3,) = classify(triton, [photos["coffee"].read_bytes()], 3, binary=binary)
    score, index, label = top3[0]
    assert (index, label) == (ESPRESSO, "espresso")
    assert 0.5 < score <= 1.0
    assert len({index for _, index, _ in top3}) == 3


def test_probabilities_binary_and_json_agree(
    triton: httpclient.InferenceServerClient, photos: dict[str, Path]
) -> None:
    coffee = photos["coffee"].read_bytes()
    binary = probabilities(triton, [coffee], binary=True)
    as_json = probabilities(triton, [coffee], binary=False)
    assert int(binary[0].argmax()) == ESPRESSO
    assert abs(float(binary[0].sum()) - 1.0) < 1e-3
    # JSON carries the same float32 values (printed as doubles, read back exactly).
    assert np.array_equal(binary, as_json)
    (top3,) = classify(triton, [coffee], 3, binary=True)
    assert [index for _, index, _ in top3] == list(np.argsort(binary[0])[::-1][:3])


def test_batch_of_8_comes_back_in_order(
    triton: httpclient.InferenceServerClient, distinct_jpegs: list[bytes]
) -> None:
    """Eight different photos in one request: eight answers, each the one its photo gets alone."""
    batch = distinct_jpegs[:8]  # crops of coffee, chelsea, astronaut, coffee, ...
    together = probabilities(triton, batch, binary=True)
    alone = np.concatenate([probabilities(triton, [image], binary=True) for image in batch])
    assert np.array_equal(together, alone)
    assert len({row.tobytes() for row in together}) == 8  # eight different answers, not one repeated
    labels = [entries[0][2] for entries in classify(triton, batch, 1, binary=False)]
    assert len(labels) == 8
    assert [labels[i] for i in (0, 3, 6)] == ["espresso"] * 3, labels
    assert {labels[i] for i in (1, 4, 7)} <= CATS, labels
    assert [int(row.argmax()) for row in together] == [
        entries[0][1] for entries in classify(triton, batch, 1, binary=True)
    ]


def test_probabilities_are_cached_under_their_own_key(
    oip_stack: Stack,
    triton: httpclient.InferenceServerClient,
    photos: dict[str, Path],
    model_version: str,
    redis_url: str,
) -> None:
    """A top-5 answer (from /predict) is never served as a full vector, and the full one is cached apart."""
    chelsea = photos["chelsea"].read_bytes()
    sha256 = hashlib.sha256(chelsea).hexdigest()
    request = urllib.request.Request(
        f"{oip_stack.base_url}/predict", data=chelsea, headers={"Content-Type": "image/jpeg"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        assert json.loads(response.read())["success"] is True
    client = redis.Redis.from_url(redis_url)
    try:
        top5 = parse_reply(client.get(cache_key(model_version, sha256)))
        assert top5.ok and len(top5.top) == 5 and top5.probabilities is None
        assert client.get(cache_key(model_version, sha256, probabilities=True)) is None
        first = probabilities(triton, [chelsea], binary=True)  # a new job: the top-5 entry will not do
        full = parse_reply(client.get(cache_key(model_version, sha256, probabilities=True)))
        assert full.ok and full.probabilities is not None
        assert np.array_equal(np.frombuffer(full.probability_bytes(), "<f4"), first[0])
        again = probabilities(triton, [chelsea], binary=True)  # from the cache now
        assert np.array_equal(first, again)
    finally:
        client.close()


def _post_infer(stack: Stack, body: dict | bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{stack.base_url}/v2/models/{MODEL_NAME}/infer",
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _image_request(elements: list[str], name: str = "image") -> dict:
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(elements)], "data": elements}]}


def test_errors_use_the_protocol_body_and_our_statuses(oip_stack: Stack, photos: dict[str, Path]) -> None:
    coffee = base64.b64encode(photos["coffee"].read_bytes()).decode()
    cases = [
        (_image_request([coffee], name="pixels"), 400),
        (_image_request(["not base64!"]), 400),
        (_image_request(["eA=="] * 33), 400),  # over the cap of 32 images
        (_image_request([coffee] * 12), 413),  # 12 x 105 kB: over the stack's 1 MB upload limit
        (_image_request([base64.b64encode(b"plain text, no image").decode()]), 415),
        (_image_request([base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 64).decode()]), 422),
        (
            {
                **_image_request([coffee]),
                "outputs": [{"name": "probabilities", "parameters": {"classification": 6}}],
            },
            400,
        ),
        (b"{not json", 400),
    ]
    for body, status in cases:
        got, payload = _post_infer(oip_stack, body)
        assert (got, list(payload)) == (status, ["error"]), (
            body if isinstance(body, bytes) else status,
            payload,
        )
        assert payload["error"]
    got, payload = _post_infer(
        oip_stack, b'{"inputs": []}', headers={"Inference-Header-Content-Length": "999"}
    )
    assert got == 400 and "Inference-Header-Content-Length" in payload["error"]


def _binary_request(
    elements: list[bytes], *, declared_size: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The binary-data extension as tritonclient sends it: JSON, then the BYTES tensor."""
    tensor = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(elements)],
                    "parameters": {
                        "binary_data_size": len(tensor) if declared_size is None else declared_size
                    },
                }
            ]
        }
    ).encode()
    return header + tensor, {"Inference-Header-Content-Length": str(len(header))}


def test_binary_requests_are_bounded_and_checked(oip_stack: Stack, photos: dict[str, Path]) -> None:
    coffee = photos["coffee"].read_bytes()
    # 11 x 105 kB: the body fits the request bound, the images together are over the 1 MB upload limit.
    body, headers = _binary_request([coffee] * 11)
    assert _post_infer(oip_stack, body, headers)[0] == 413
    body, headers = _binary_request([coffee], declared_size=10)
    assert _post_infer(oip_stack, body, headers)[0] == 400
    body, headers = _binary_request([coffee])
    truncated = body[:-100]  # the last element's length prefix promises more than is left
    status, payload = _post_infer(oip_stack, truncated, headers)
    assert status == 400 and "binary_data_size" in payload["error"]
    # A length prefix that promises more than the tensor holds.
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}
            ]
        }
    ).encode()
    status, payload = _post_infer(
        oip_stack,
        header + struct.pack("<I", 1000) + b"abc",
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and "longer than the data left" in payload["error"]
    status, payload = _post_infer(oip_stack, body, headers)  # the same request whole: fine
    assert status == 200 and payload["outputs"][0]["shape"] == [1, 1000]


def test_readme_example_runs_as_written(oip_stack: Stack) -> None:
    """The README's tritonclient example, pointed at this stack instead of port 8000."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Open Inference Protocol", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "127.0.0.1:8000" in code
    code = code.replace("127.0.0.1:8000", oip_stack.base_url.removeprefix("http://"))
    run = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "espresso" in run.stdout.splitlines()[-1], run.stdout
