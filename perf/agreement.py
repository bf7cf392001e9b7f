"""int8 vs fp32 top-1 agreement on the benchmark's own photos, through the serving code.

Both models see the same decoded inputs (the classifier's Preprocessor).
Reported: agreement on every photo, and on the photos where fp32's top-1 leads
its runner-up by at least ``--margin`` (the converter's gated figure); plus how
many distinct classes fp32 predicts, since a random-weight network may put
most photos in a few classes (which makes agreement easy).

``python -m perf.agreement --fp32 A --int8 B --photo-dir D`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from classifier.model import Model
from classifier.preprocess import Preprocessor, configure_pillow
from common.settings import Settings

BATCH = 16


def agreement(fp32: Path, int8: Path, bodies: list[bytes], threads: int, margin: float) -> dict[str, float]:
    a, b = Model(fp32, threads=threads), Model(int8, threads=threads)
    configure_pillow(Settings().max_pixels)
    pre = Preprocessor(a.input_size, a.metadata.resize, Settings().max_pixels)
    images = np.stack([pre(body) for body in bodies])
    pa = np.concatenate([a.predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])
    pb = np.concatenate([b.predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])
    top_a, top_b = pa.argmax(1), pb.argmax(1)
    ordered = np.sort(pa, axis=1)
    decisive = (ordered[:, -1] - ordered[:, -2]) >= margin
    same = top_a == top_b
    top5_a, top5_b = np.argsort(pa, 1)[:, -5:], np.argsort(pb, 1)[:, -5:]
    top5 = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top5_a.tolist(), top5_b.tolist(), strict=True)])
    return {
        "photos": len(bodies),
        "agreement": float(same.mean()),
        "decisive": int(decisive.sum()),
        "agreement_decisive": float(same[decisive].mean()) if decisive.any() else float("nan"),
        "margin": margin,
        "top5_overlap": float(top5),
        "fp32_distinct_top1": len(set(top_a.tolist())),
        "max_abs_prob_diff": float(np.abs(pa - pb).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--photo-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--margin", type=float, default=0.2, help="the converter's --decisive-margin (default 0.2)"
    )
    args = parser.parse_args()
    bodies = [p.read_bytes() for p in sorted(args.photo_dir.glob("*.jpg"))[: args.count]]
    print(json.dumps(agreement(args.fp32, args.int8, bodies, args.threads, args.margin)))


if __name__ == "__main__":
    main()
