"""Reply batches and job batches in the message contract: encoding, parsing, the header that asks for
reply batches (pure logic, no services; the real broker's side: tests/classifier/test_reply_batches.py,
tests/classifier/test_job_batches.py, tests/gateway/test_rpc_batches.py)."""

from __future__ import annotations

import json

import pytest

from common.contract import (
    HEADER_REPLY_BATCHES,
    MAX_JOBS_IN_A_BATCH,
    ContractError,
    ErrorCode,
    FailureReply,
    JobHeaders,
    ModelInfo,
    Prediction,
    SuccessReply,
    encode_job_batch,
    encode_reply_batch,
    parse_job_batch,
    parse_reply_batch,
)

SHA = "b" * 64


def _success(score: float) -> SuccessReply:
    return SuccessReply(
        sha256=SHA,
        model=ModelInfo("m", "0123456789ab"),
        top=[Prediction("cup", 968, score)],
        inference_ms=3.5,
        batch_size=2,
    )


def test_a_batch_gives_back_each_reply_under_its_correlation_id() -> None:
    failure = FailureReply(ErrorCode.INVALID_IMAGE, 'not an "image"')
    # Any client chooses its correlation ids: quotes, backslashes and non-ASCII must survive.
    odd = 'id "with" \\ quotes \u00e9'
    body = encode_reply_batch([("one", _success(0.5).to_json()), (odd, failure.to_json())])
    assert json.loads(body)["replies"]["one"]["top"][0]["score"] == 0.5  # plain JSON for any reader
    assert parse_reply_batch(body) == {"one": _success(0.5), odd: failure}


def test_a_malformed_reply_fails_only_its_own_caller() -> None:
    body = encode_reply_batch([("good", _success(0.25).to_json()), ("bad", b'{"ok": true, "top": 3}')])
    parsed = parse_reply_batch(body)
    assert parsed["good"] == _success(0.25)
    assert isinstance(parsed["bad"], ContractError)


@pytest.mark.parametrize("body", [b"", b"[]", b'{"replies": []}', b'{"other": {}}', b"\xff\xfe"])
def test_a_malformed_batch_is_a_contract_error(body: bytes) -> None:
    with pytest.raises(ContractError):
        parse_reply_batch(body)


def test_the_header_travels_only_when_set() -> None:
    plain = JobHeaders(sha256=SHA, deadline_ms=1, top_k=5)
    assert HEADER_REPLY_BATCHES not in plain.to_amqp()  # a worker answers it one reply a message
    asked = JobHeaders(sha256=SHA, deadline_ms=1, top_k=5, reply_batches=True)
    assert JobHeaders.from_amqp(asked.to_amqp()).reply_batches is True
    with pytest.raises(ContractError, match="reply_batches"):
        JobHeaders.from_amqp({**plain.to_amqp(), HEADER_REPLY_BATCHES: "yes"})


def test_a_job_batch_gives_back_each_job_in_order() -> None:
    jobs = [
        (f"job-{i}", JobHeaders(sha256=SHA, deadline_ms=i, top_k=5, image_in_redis=True)) for i in range(3)
    ]
    parsed = parse_job_batch(encode_job_batch(jobs))
    assert [(cid, JobHeaders.from_amqp(headers)) for cid, headers in parsed] == jobs


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"jobs": []}',
        b'{"jobs": "x"}',
        b'{"jobs": [{"headers": {}}]}',
        b'{"jobs": [{"correlation_id": 7, "headers": {}}]}',
        b'{"jobs": [{"correlation_id": "a", "headers": []}]}',
    ],
)
def test_a_malformed_job_batch_is_a_contract_error(body: bytes) -> None:
    with pytest.raises(ContractError):
        parse_job_batch(body)


def test_a_job_batch_over_the_limit_is_refused() -> None:
    headers = JobHeaders(sha256=SHA, deadline_ms=1, top_k=5, image_in_redis=True)
    assert (
        len(parse_job_batch(encode_job_batch([("j", headers)] * MAX_JOBS_IN_A_BATCH))) == MAX_JOBS_IN_A_BATCH
    )
    with pytest.raises(ContractError, match="more than"):
        parse_job_batch(encode_job_batch([("j", headers)] * (MAX_JOBS_IN_A_BATCH + 1)))
