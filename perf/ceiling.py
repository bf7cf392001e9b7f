"""The in-process ceiling: decode + resize + onnxruntime, no network, with the serving code.

It uses the classifier's own :class:`~classifier.preprocess.Preprocessor` and
:class:`~classifier.model.Model` (same session options as a worker), so it
measures the code that serves, minus RabbitMQ, Redis and HTTP. Decoding runs in
a thread pool and overlaps the previous batch's inference, as in the worker.

A layout ``PxT`` is P processes of T onnxruntime threads each; the harness
runs the P processes at once and adds their rates: each loads its model and warms up, says
``ready`` on stdout, and starts when the harness writes the common start time on its stdin
(``--sync``; ``--start-at`` gives a fixed one instead).

``python -m perf.ceiling --model M --threads T --batch B --seconds S`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from classifier.model import Model
from classifier.preprocess import Preprocessor, configure_pillow
from common.settings import Settings
from perf import photos
from perf.paths import REPO_ROOT
from perf.results import CeilingRun
from perf.stats import machine_busy_seconds, percentile


def _preprocessor(model: Model) -> Preprocessor:
    max_pixels = Settings().max_pixels
    configure_pillow(max_pixels)
    return Preprocessor(model.input_size, model.metadata.resize, max_pixels)


def throughput(
    model: Model,
    bodies: list[bytes],
    *,
    batch: int,
    decode_threads: int,
    seconds: float,
    start_at: float | Callable[[], float] | None = None,
) -> dict[str, float]:
    """Images per second through decode + resize + predict, decode overlapping inference; from
    ``start_at`` (unix time; a callable is asked for it after the warm-up) when given."""
    pre = _preprocessor(model)
    pool = ThreadPoolExecutor(decode_threads)
    cursor = 0

    def submit() -> list[Future[np.ndarray]]:
        nonlocal cursor
        futures = [pool.submit(pre, bodies[(cursor + i) % len(bodies)]) for i in range(batch)]
        cursor += batch
        return futures

    # Warm-up (excluded): two batches through the whole path.
    for _ in range(2):
        model.predict(np.stack([f.result() for f in submit()]))
    late = 0.0
    if callable(start_at):  # asked once warmed up
        start_at = start_at()
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
        late = max(0.0, time.time() - start_at)  # > 0: warm-up overran the common start
    done = 0
    pending = submit()
    started = time.perf_counter()
    while True:
        images = np.stack([f.result() for f in pending])
        pending = submit()  # the next batch decodes while this one is inferred
        model.predict(images)
        done += len(images)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    pool.shutdown(wait=True, cancel_futures=True)
    out = {"images": done, "seconds": elapsed, "ips": done / elapsed, "late_s": late}
    if start_at is not None:
        out["start_at"] = start_at
    return out


def ort_latency_ms(model: Model, bodies: list[bytes], runs: int = 30) -> dict[str, float]:
    """onnxruntime alone at batch 1 (decoded inputs ready): p50/p95 of session.run, in ms."""
    pre = _preprocessor(model)
    inputs = [pre(b)[None] for b in bodies[:runs]]
    model.predict(inputs[0])
    times = []
    for x in inputs:
        t = time.perf_counter()
        model.predict(x)
        times.append(time.perf_counter() - t)
    return {"p50": percentile(times, 50) * 1000, "p95": percentile(times, 95) * 1000}


def decode_ms(model: Model, bodies: list[bytes], count: int = 60) -> float:
    """Mean decode + resize time of one photo, one thread, in ms."""
    pre = _preprocessor(model)
    pre(bodies[0])
    t = time.perf_counter()
    for b in bodies[:count]:
        pre(b)
    return (time.perf_counter() - t) / min(count, len(bodies)) * 1000


SLACK_S = 3.0  # per batch size: warm-up of the next configuration before its common start
SYNC_LEAD_S = 0.3  # from the last process ready to the common start


def _wait_for_start() -> float:
    """``--sync``: say ready (model loaded, warmed up), then read the common start time from stdin."""
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("no start time on stdin")
    return float(line)


def run_layout(
    model_path: Path,
    photo_dir: Path,
    *,
    processes: int,
    threads: int,
    batches: list[int],
    seconds: float,
    count: int,
) -> list[CeilingRun]:
    """Run ``processes`` copies of this module at once, each trying every batch size in turn
    (in step, from common start times); the summed images/s per batch size. The first start is when
    the last of them is ready (model loaded, warmed up), the later ones follow at fixed intervals."""
    cmd = [
        sys.executable,
        "-m",
        "perf.ceiling",
        "--model",
        str(model_path),
        "--photo-dir",
        str(photo_dir),
        "--count",
        str(count),
        "--threads",
        str(threads),
        "--seconds",
        str(seconds),
        "--sync",
        "--batches",
        *map(str, batches),
    ]
    busy0, t0 = machine_busy_seconds(), time.monotonic()
    procs = [
        subprocess.Popen(
            [*cmd, "--offset", str(i * count // processes)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for p in procs:  # each loads its model and warms up; the last one ready sets the start
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"ceiling subprocess failed before its start ({p.wait()})")
    start_at = time.time() + SYNC_LEAD_S
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{start_at}\n")
        p.stdin.close()
    outputs, own_cpu = [], 0.0
    for p in procs:
        assert p.stdout is not None
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"ceiling subprocess failed ({p.returncode})")
        own_cpu += usage.ru_utime + usage.ru_stime
        outputs.append(json.loads(out.strip().splitlines()[-1])["runs"])
    elapsed = time.monotonic() - t0
    others = max(0.0, (machine_busy_seconds() - busy0 - own_cpu) / elapsed)
    return [
        CeilingRun(
            layout=f"{processes}x{threads}",
            batch=batch,
            ips=sum(o[i]["ips"] for o in outputs),
            late_start_s=max(o[i]["late_s"] for o in outputs),
            others_cores=round(others, 3),  # other processes' CPU during this layout's runs
        )
        for i, batch in enumerate(batches)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--photo-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[8])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--start-at", type=float, default=None, help="unix time to start the first batch size"
    )
    parser.add_argument(
        "--sync", action="store_true", help="say 'ready' after the warm-up, read the start time on stdin"
    )
    parser.add_argument("--latency", action="store_true", help="only ORT batch-1 latency and decode time")
    args = parser.parse_args()
    paths = sorted(args.photo_dir.glob("*.jpg"))[: args.count]
    paths = paths[args.offset :] + paths[: args.offset]
    bodies = photos.load(paths)
    model = Model(args.model, threads=args.threads)
    if args.latency:
        print(
            json.dumps(
                {"ort_batch1_ms": ort_latency_ms(model, bodies), "decode_ms": decode_ms(model, bodies)}
            )
        )
        return
    runs: list[dict[str, float]] = []
    for i, batch in enumerate(args.batches):
        start_at: float | Callable[[], float] | None
        if i == 0:
            start_at = _wait_for_start if args.sync else args.start_at
        else:  # the later batch sizes follow the first one's start at fixed intervals, in step
            first = runs[0].get("start_at")
            start_at = None if first is None else first + i * (args.seconds + SLACK_S)
        runs.append(
            throughput(
                model,
                bodies,
                batch=batch,
                decode_threads=args.threads,
                seconds=args.seconds,
                start_at=start_at,
            )
        )
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
