"""The costliest images a worker can be sent within the upload limits, and what each costs.

    python scripts/decode_worst_cases.py                 # every case, each in a fresh process
    python scripts/decode_worst_cases.py --max-pixels 24000000

Each case is a small file (well under MAX_UPLOAD_MB) that decodes to as many
pixels as MAX_PIXELS allows, in the formats and modes whose decoding costs the
most memory. Each is decoded by the worker's own Preprocessor in a process of its
own, which reports its time and its peak RSS above the baseline (imports done,
one small image decoded). README "Decode cost" quotes the table this prints.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def _side(max_pixels: int) -> int:
    return math.isqrt(max_pixels)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _gradient(mode: str, side: int) -> Image.Image:
    """A picture that compresses well but is not one flat colour (some decoders shortcut those)."""
    row = Image.linear_gradient("L").resize((side, 1))
    image = row.resize((side, side), Image.Resampling.NEAREST)
    if mode == "L":
        return image
    if mode in ("RGB", "RGBA"):
        bands = [image] * 3 + ([image.point(lambda v: 255 - v)] if mode == "RGBA" else [])
        return Image.merge(mode, bands)
    return image.convert(mode)


def png_rgba(side: int) -> bytes:
    return _encode(_gradient("RGBA", side), "PNG", compress_level=9)


def png_rgba_rotated(side: int) -> bytes:
    """RGBA and an EXIF orientation that swaps the sides (a full-size transpose)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_gradient("RGBA", side), "PNG", compress_level=9, exif=exif.tobytes())


def png_rgb(side: int) -> bytes:
    return _encode(_gradient("RGB", side), "PNG", compress_level=9)


def png_grey16(side: int) -> bytes:
    return _encode(_gradient("L", side).convert("I").point(lambda v: v * 257).convert("I;16"), "PNG")


def png_palette_transparent(side: int) -> bytes:
    image = _gradient("L", side).convert("P")
    return _encode(image, "PNG", transparency=0, compress_level=9)


def gif(side: int) -> bytes:
    return _encode(_gradient("L", side).convert("P"), "GIF")


def webp_lossless_rgba(side: int) -> bytes:
    side = min(side, 16383)  # WebP's own limit
    return _encode(_gradient("RGBA", side), "WEBP", lossless=True, quality=0, method=0)


def tiff_float(side: int) -> bytes:
    return _encode(_gradient("L", side).convert("F"), "TIFF", compression="tiff_adobe_deflate")


def tiff_cmyk(side: int) -> bytes:
    return _encode(_gradient("RGB", side).convert("CMYK"), "TIFF", compression="tiff_adobe_deflate")


def jpeg_progressive_444(side: int) -> bytes:
    return _encode(_gradient("RGB", side), "JPEG", quality=50, progressive=True, subsampling=0)


def jpeg_baseline(side: int) -> bytes:
    return _encode(_gradient("RGB", side), "JPEG", quality=50)


def bmp_rle8(side: int) -> bytes:
    """An 8-bit run-length BMP: two bytes per 255 pixels (Pillow cannot write one)."""
    row = b""
    left = side
    while left:
        run = min(255, left)
        row += bytes((run, left % 256))
        left -= run
    pixels = (row + b"\x00\x00") * side + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


CASES: dict[str, Callable[[int], bytes]] = {
    "PNG RGBA": png_rgba,
    "PNG RGBA, EXIF rotated": png_rgba_rotated,
    "PNG RGB": png_rgb,
    "PNG 16-bit grey": png_grey16,
    "PNG palette + transparency": png_palette_transparent,
    "GIF": gif,
    "BMP RLE8": bmp_rle8,
    "WebP lossless RGBA": webp_lossless_rgba,
    "TIFF float (mode F)": tiff_float,
    "TIFF CMYK": tiff_cmyk,
    "JPEG progressive 4:4:4": jpeg_progressive_444,
    "JPEG baseline": jpeg_baseline,
}


def peak_rss_kib() -> int:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: that one survives exec, so a
    child of a big parent starts with the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure_one(path: Path, max_pixels: int) -> dict[str, object]:
    """Decode one file here, in a process that did nothing else: its outcome, time and peak RSS
    above the baseline. The case is made by another process (making it costs memory too), and
    no model is loaded (onnxruntime's start-up peak would hide smaller decodes): the input is
    ImageNet's 224 x 224, centre crop 0.875, as for both served models."""
    from classifier.preprocess import ImageDecodeError, Preprocessor, configure_pillow
    from common.model_file import ResizePolicy

    data = path.read_bytes()
    configure_pillow(max_pixels)
    preprocess = Preprocessor((224, 224), ResizePolicy("center_crop", 0.875), max_pixels)
    preprocess(_encode(_gradient("RGB", 64), "PNG"))  # load the codecs
    baseline = peak_rss_kib()
    started = time.perf_counter()
    try:
        preprocess(data)
        outcome = "decoded"
    except ImageDecodeError as exc:
        outcome = f"refused: {exc}"
    seconds = time.perf_counter() - started
    peak = peak_rss_kib()
    return {
        "bytes": len(data),
        "outcome": outcome,
        "seconds": round(seconds, 3),
        "peak_mib": round((peak - baseline) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pixels", type=int, default=None, help="default: the worker's MAX_PIXELS")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_pixels is None:
        from common.settings import Settings

        args.max_pixels = Settings.from_env().max_pixels
    if args.one:
        print(json.dumps(measure_one(args.one, args.max_pixels)))
        return
    print(f"MAX_PIXELS={args.max_pixels:,} ({_side(args.max_pixels)} px square)")
    print("| case | file | outcome | decode s | peak RSS above baseline |\n|---|---:|---|---:|---:|")
    folder = Path(tempfile.mkdtemp(prefix="decode-cases-"))
    for name, make in CASES.items():
        path = folder / "case"
        path.write_bytes(make(_side(args.max_pixels)))
        result = subprocess.run(
            [sys.executable, __file__, "--one", str(path), "--max-pixels", str(args.max_pixels)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=False,
        )
        if result.returncode != 0:
            print(f"| {name} | | crashed: {result.stderr.strip().splitlines()[-1:]} | | |")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        outcome = row["outcome"] if row["outcome"] == "decoded" else "refused (422)"
        print(
            f"| {name} | {row['bytes'] / 1024:,.0f} KiB | {outcome} | {row['seconds']:.2f} | "
            f"{row['peak_mib']:,.0f} MiB |",
            flush=True,
        )
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
