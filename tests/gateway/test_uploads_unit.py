"""Type sniffing on real image bytes, upload ids, the content-addressed store."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from gateway.images import BMP, GIF, JPEG, PNG, TIFF, WEBP, Upload, sniff_image_type, upload_kind
from gateway.store import UploadStore
from gateway.uploads import UPLOAD_GRACE_S, ReadLimits


@pytest.fixture(scope="module")
def encoded(photos: dict[str, Path]) -> dict[str, bytes]:
    """The coffee photo as real files of every accepted format, encoded by Pillow."""
    image = Image.open(photos["coffee"]).convert("RGB").resize((64, 48))
    out = {"JPEG": photos["coffee"].read_bytes()}
    for fmt in ("PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        out[fmt] = buffer.getvalue()
    big_endian = io.BytesIO()
    image.save(big_endian, "TIFF", byteorder=">")  # "MM\0*"
    out["TIFF-MM"] = big_endian.getvalue()
    return out


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [
        ("JPEG", JPEG),
        ("PNG", PNG),
        ("GIF", GIF),
        ("WEBP", WEBP),
        ("BMP", BMP),
        ("TIFF", TIFF),
        ("TIFF-MM", TIFF),
    ],
)
def test_real_images_are_recognised(encoded: dict[str, bytes], fmt: str, kind) -> None:
    assert sniff_image_type(encoded[fmt][:32]) == kind


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, I am a text file named photo.jpg\n",
        b"BMW is a car, not a bitmap, even if it starts with BM",
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # RIFF, but audio
        b"%PDF-1.7\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\xff\xd8",  # a JPEG start cut too short to be sure
    ],
)
def test_non_images_are_refused(data: bytes) -> None:
    assert sniff_image_type(data) is None


def test_every_test_photo_is_a_jpeg(photos: dict[str, Path]) -> None:
    for path in photos.values():
        assert sniff_image_type(path.read_bytes()[:32]) == JPEG, path


SHA = "ab" * 32


@pytest.mark.parametrize("ext", ["jpg", "png", "gif", "webp", "bmp", "tiff"])
def test_well_formed_ids_are_accepted(ext: str) -> None:
    kind = upload_kind(f"{SHA}.{ext}")
    assert kind is not None and kind.ext == ext


@pytest.mark.parametrize(
    "image_id",
    [
        "../../etc/passwd",
        f"../{SHA}.jpg",
        f"{SHA}.jpg/..",
        f"{SHA}.jpg\n",  # `$` in a regex would let this through
        f"{SHA.upper()}.jpg",
        f"{SHA[:-1]}.jpg",
        f"{SHA}0.jpg",
        f"{SHA}.jpeg",
        f"{SHA}.svg",
        f"{SHA}.JPG",
        f"{SHA}",
        "",
        f"{SHA}.jpg\x00.png",
    ],
)
def test_malformed_ids_are_refused(image_id: str) -> None:
    assert upload_kind(image_id) is None


def _upload(data: bytes) -> Upload:
    return Upload(data=data, sha256=hashlib.sha256(data).hexdigest(), kind=JPEG)


async def test_store_is_content_addressed_and_leaves_no_temp_files(tmp_path: Path, photos) -> None:
    store = UploadStore(tmp_path / "uploads")
    upload = _upload(photos["coffee"].read_bytes())
    # Concurrent saves of the same content end with one whole file.
    saved = await asyncio.gather(*(store.save(upload) for _ in range(8)))
    assert all(saved)
    files = list((tmp_path / "uploads").iterdir())
    assert [f.name for f in files] == [upload.image_id]
    assert files[0].read_bytes() == upload.data
    assert store.path_for(upload.image_id) == files[0]


async def test_store_refuses_to_resolve_malformed_or_missing_ids(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8\xff secret")
    store = UploadStore(root)
    assert store.path_for("../secret.jpg") is None
    assert store.path_for(f"{SHA}.jpg") is None  # well formed, but not stored


async def test_store_keeps_its_quota_evicting_the_least_recently_used(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    uploads = [_upload(b"\xff\xd8\xff" + bytes([i]) * 997) for i in range(30)]  # 1,000 bytes each
    store = UploadStore(root, quota_bytes=10_000)
    for upload in uploads[:10]:
        assert await store.save(upload)
    assert store.path_for(uploads[0].image_id) is not None  # used again: now the most recent
    for upload in uploads[10:19]:  # nine more: the nine not used since are evicted, not the first
        assert await store.save(upload)
        assert sum(f.stat().st_size for f in root.iterdir()) <= 10_000
    kept = {f.name for f in root.iterdir()}
    assert kept == {u.image_id for u in uploads[10:19]} | {uploads[0].image_id}
    for upload in uploads[19:]:
        assert await store.save(upload)
    assert {f.name for f in root.iterdir()} == {u.image_id for u in uploads[20:]}
    # Evicted ids are still known (feedback on a page that showed one is accepted); unknown ones are not.
    assert store.was_stored(uploads[1].image_id) and store.path_for(uploads[1].image_id) is None
    assert not store.was_stored(f"{SHA}.jpg")
    # A restart indexes what is there and keeps within a smaller quota.
    smaller = UploadStore(root, quota_bytes=5_000)
    assert smaller.used_bytes <= 5_000 and len(list(root.iterdir())) == 5
    assert not await smaller.save(_upload(b"\xff\xd8\xff" + bytes(6_000)))  # over the whole quota


def test_the_read_deadline_is_the_sooner_of_the_total_and_the_pace() -> None:
    limits = ReadLimits(max_bytes=10 * 1024 * 1024, timeout_s=60.0, min_rate=16 * 1024)
    # Nothing yet: the grace period; then each 16 KiB buys a second more, up to the total deadline.
    assert limits.deadline(100.0, 0) == 100.0 + UPLOAD_GRACE_S
    assert limits.deadline(100.0, 16 * 1024 * 10) == 100.0 + UPLOAD_GRACE_S + 10
    assert limits.deadline(100.0, 10 * 1024 * 1024) == 160.0
    assert ReadLimits(max_bytes=1, timeout_s=3.0, min_rate=0).deadline(0.0, 0) == 3.0


CONTENT_DISPOSITIONS = [
    'form-data; name="file"; filename="coffee.jpg"',
    'form-data; name=file; filename="a \\"quoted\\" name.jpg"',
    "form-data; name=\"file\"; filename*=UTF-8''caf%C3%A9.jpg",
    'form-data; name="file"; filename*0="long"; filename*1="name.jpg"',
    'attachment; filename="\\\\back\\\\slashes"',
    'form-data; name="file";',
    "form-data; name",
    "not a token; name=x",
    "",
]


@pytest.mark.parametrize("header", CONTENT_DISPOSITIONS)
def test_the_memoised_escapes_leave_aiohttp_parsing_content_disposition_as_before(
    header: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re
    import warnings

    import aiohttp.multipart

    assert vars(aiohttp.multipart)["re"].escape is not re.escape  # gateway.uploads' fix is in place
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aiohttp warns of the malformed ones
        memoised = aiohttp.multipart.parse_content_disposition(header)
        monkeypatch.setitem(vars(aiohttp.multipart), "re", re)
        assert aiohttp.multipart.parse_content_disposition(header) == memoised
