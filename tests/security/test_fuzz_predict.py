"""Property: whatever bytes and multipart shapes reach /predict, the answer is never a 5xx
and the worker behind the gateway never dies. One real gateway + worker for the module."""

from __future__ import annotations

import http.client
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security import multipart
from tests.security.conftest import Stack

EXAMPLES = 150
ALLOWED = {200, 400, 413, 415, 422}
# Magic numbers of every accepted type (so the bytes reach the worker), and of some refused ones.
MAGICS = [
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x10\x00\x00\x00WEBPVP8 ",
    b"RIFF\x10\x00\x00\x00WEBPVP8L",
    b"II*\x00",
    b"MM\x00*",
    b"BM" + bytes(12) + b"(\x00",
    b"%PDF-",
    b"PK\x03\x04",
    b"<svg ",
    b"<html>",
    b"",
]
CONTENT_TYPES = [
    "image/jpeg",
    "image/png",
    "text/html",
    "application/octet-stream",
    "multipart/form-data",
    "image/svg+xml",
    "application/x-www-form-urlencoded",
    "",
]
NASTY_NAMES = [
    "../../etc/passwd",
    "..\\..\\boot.ini",
    "<script>alert(1)</script>.jpg",
    "a/b/c.png",
    "ünïcødé ☕.gif",
    "CON",
    ".htaccess",
    "x" * 300,
    "file",
    "",
]

STATUSES: Counter[int] = Counter()  # what the examples got, for the report

payloads = st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGICS), st.binary(max_size=3000))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
content_types = st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), header_text)
# Mostly "file", so that most bodies get past the form checks to the type sniffing and the worker.
field_names = st.one_of(
    st.just("file"), st.just("file"), st.none(), st.sampled_from(NASTY_NAMES), st.text(max_size=20)
)
filenames = st.one_of(st.none(), st.sampled_from(NASTY_NAMES), st.text(max_size=60))
parts = st.builds(
    multipart.Part, name=field_names, data=payloads, filename=filenames, content_type=content_types
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """(body, Content-Type) of a multipart form, possibly cut short, or of a raw body."""
    if draw(st.booleans()):
        body, content_type = multipart.encode(
            draw(st.lists(parts, max_size=4)),
            draw(st.sampled_from(["b", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x" * 70])),
        )
        if draw(st.integers(0, 3)) == 0:
            body = body[: draw(st.integers(0, len(body)))]
        return body, draw(
            st.sampled_from([content_type, content_type.replace("form-data", "mixed"), "multipart/form-data"])
        )
    return draw(payloads), draw(content_types)


def post(stack: Stack, body: bytes, content_type: str | None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    try:
        headers = {"Content-Length": str(len(body))}
        if content_type is not None:
            headers["Content-Type"] = content_type
        connection.request("POST", "/predict", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def baseline(stack: Stack) -> tuple[int, float]:
    return stack.worker.pid, stack.worker_start_time()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no example database left in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def test_predict_never_answers_5xx(stack: Stack, baseline, request: tuple[bytes, str | None]) -> None:
    status, body = post(stack, *request)
    STATUSES[status] += 1
    assert status in ALLOWED, (status, body[:300], request[1], request[0][:200])


def test_the_worker_survived_the_fuzzing(stack: Stack, baseline) -> None:
    pid, started_at = baseline
    time.sleep(0.5)  # the last jobs are settled
    stack.assert_unharmed(pid, started_at)
    print(
        f"\n[security] fuzz: statuses {dict(sorted(STATUSES.items()))}, worker pid {pid} alive, "
        f"{stack.worker_jobs():.0f} jobs reached it, no 5xx"
    )
