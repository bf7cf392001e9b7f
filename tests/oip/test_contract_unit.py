"""The contract's probabilities: the job flag, the reply field, the cache key (pure logic, no services)."""

from __future__ import annotations

import json
import struct

import pytest

from common.contract import (
    ContractError,
    JobHeaders,
    ModelInfo,
    Prediction,
    SuccessReply,
    cache_key,
    decode_probabilities,
    encode_probabilities,
    parse_reply,
)

SHA = "a" * 64
MODEL = ModelInfo(name="m", version="0123456789ab")


def _reply(probabilities: str | None = None) -> SuccessReply:
    return SuccessReply(
        sha256=SHA,
        model=MODEL,
        top=[Prediction("cup", 968, 0.5)],
        inference_ms=1.0,
        batch_size=1,
        probabilities=probabilities,
    )


def test_job_flag_travels_only_when_set() -> None:
    plain = JobHeaders(sha256=SHA, deadline_ms=1, top_k=5)
    assert "probabilities" not in plain.to_amqp()  # old workers and gateways see what they always saw
    assert JobHeaders.from_amqp(plain.to_amqp()).probabilities is False
    asked = JobHeaders(sha256=SHA, deadline_ms=1, top_k=5, probabilities=True)
    assert JobHeaders.from_amqp(asked.to_amqp()) == asked
    with pytest.raises(ContractError):
        JobHeaders.from_amqp({**plain.to_amqp(), "probabilities": "yes"})


def test_vector_round_trips_exactly_and_replies_keep_their_old_shape() -> None:
    values = [0.25, 0.5, 0.125, 0.125]
    raw = struct.pack("<4f", *values)
    assert decode_probabilities(encode_probabilities(raw)) == raw
    with_vector = _reply(encode_probabilities(raw))
    assert parse_reply(with_vector.to_json()) == with_vector
    assert struct.unpack("<4f", parse_reply(with_vector.to_json()).probability_bytes()) == tuple(values)
    assert "probabilities" not in json.loads(_reply().to_json())
    assert parse_reply(_reply().to_json()).probability_bytes() is None


@pytest.mark.parametrize("bad", ["not base64!", "AAA=", 42])
def test_a_broken_vector_is_a_contract_error(bad: object) -> None:
    data = json.loads(_reply().to_json())
    data["probabilities"] = bad
    with pytest.raises(ContractError):
        parse_reply(json.dumps(data).encode())


def test_full_answers_have_a_cache_key_of_their_own() -> None:
    assert cache_key("v", SHA) != cache_key("v", SHA, probabilities=True)
    assert cache_key("v", SHA, probabilities=True).startswith(cache_key("v", SHA))


def test_the_gateway_with_the_protocol_imports_nothing_heavy() -> None:
    """The v2 tensors are built with array/struct: importing the gateway pulls no numpy, Pillow or ORT."""
    import subprocess
    import sys

    from tests.support.processes import REPO_ROOT, service_env

    code = (
        "import sys, gateway, gateway.oip, gateway.openapi\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'numpy', 'PIL', 'onnxruntime', 'torch', 'tensorflow'}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=service_env({}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert run.stdout.strip() == "[]", run.stdout
