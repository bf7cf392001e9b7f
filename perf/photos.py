"""Photo pools made from the real test photos: every file distinct, so each request is a cache miss.

Each photo is a crop of one of ``tests/data``'s photos (random box, optional
mirror, a small brightness change), resized to a phone-like size and
re-encoded as JPEG at a random quality. The pool is deterministic (seeded)
and cached on disk under ``perf/.run/photos``; the same files feed every
measurement, so all numbers are on the same photos.

``python -m perf.photos --count 1500`` makes (or reuses) the pool and prints its folder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
from pathlib import Path

from PIL import Image, ImageEnhance

from perf.paths import RUN_DIR, SOURCE_PHOTOS

POOL_DIR = RUN_DIR / "photos"
# Long side of the generated photos: 640..1024 px, like a resized phone photo (the
# machine facts were measured on 1024x768).
LONG_SIDE = (640, 1024)
QUALITY = (80, 95)


def _sources() -> list[Image.Image]:
    files = sorted(p for p in SOURCE_PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no source photos in {SOURCE_PHOTOS}")
    return [Image.open(p).convert("RGB") for p in files]


def _variant(source: Image.Image, rng: random.Random) -> bytes:
    w, h = source.size
    scale = rng.uniform(0.6, 1.0)
    cw, ch = max(32, int(w * scale)), max(32, int(h * rng.uniform(0.6, 1.0)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = source.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    long_side = rng.randint(*LONG_SIDE)
    ratio = long_side / max(image.size)
    image = image.resize(
        (max(1, round(image.width * ratio)), max(1, round(image.height * ratio))), Image.Resampling.BILINEAR
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=rng.randint(*QUALITY))
    return out.getvalue()


def make_pool(count: int, seed: int = 5) -> list[Path]:
    """``count`` distinct JPEG files (reused when already made with this seed); sorted paths."""
    folder = POOL_DIR / f"seed{seed}"
    existing = sorted(folder.glob("photo-*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    folder.mkdir(parents=True, exist_ok=True)
    sources = _sources()
    rng = random.Random(seed)
    seen: set[str] = set()
    paths: list[Path] = []
    i = 0
    while len(paths) < count:
        data = _variant(sources[i % len(sources)], rng)
        i += 1
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        path = folder / f"photo-{len(paths):05d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def load(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    paths = make_pool(args.count, args.seed)
    sizes = [p.stat().st_size for p in paths]
    print(f"{paths[0].parent}: {len(paths)} photos, mean {sum(sizes) / len(sizes) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
