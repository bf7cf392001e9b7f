"""The seed's way: Keras ``predict`` on one image at a time (ResNet50, random weights), in-process.

This is what the old demo's worker did per request: open the upload with
Pillow, resize to 224x224, ``img_to_array``, ``preprocess_input``, then
``model.predict`` on a batch of one. TensorFlow is imported here only, in a
process of its own (``python -m perf.seed_baseline``), never by a service.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="windows of --seconds each; ips = the best")
    args = parser.parse_args()

    import keras
    import numpy as np
    from keras.applications.resnet50 import ResNet50, preprocess_input
    from PIL import Image

    bodies = [p.read_bytes() for p in sorted(args.photo_dir.glob("*.jpg"))[: args.count]]
    keras.utils.set_random_seed(0)
    model = ResNet50(weights=None)

    def classify(body: bytes) -> int:
        image = Image.open(io.BytesIO(body)).convert("RGB").resize((224, 224))
        x = preprocess_input(np.expand_dims(keras.utils.img_to_array(image), 0))
        return int(model.predict(x, verbose=0).argmax())

    for body in bodies[: args.warmup]:  # excluded: graph tracing, first-call allocations
        classify(body)
    done, rounds, latencies = 0, [], []
    for _ in range(args.rounds):  # the host's speed drifts: several windows, keep the best
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            t = time.perf_counter()
            classify(bodies[(args.warmup + done) % len(bodies)])
            latencies.append(time.perf_counter() - t)
            done += 1
            n += 1
        elapsed = time.perf_counter() - started
        rounds.append({"images": n, "seconds": round(elapsed, 3), "ips": n / elapsed})
    best = max(rounds, key=lambda r: r["ips"])
    latencies.sort()
    print(
        json.dumps(
            {
                "images": best["images"],
                "seconds": best["seconds"],
                "ips": best["ips"],
                "rounds": rounds,
                "p50_ms": latencies[len(latencies) // 2] * 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
