"""``python -m perf.bench`` (``make bench``): the whole benchmark in one run, then its report.

1. models: ResNet50 with random weights, fp32 and int8, made once by the converter into
   ``perf/models/`` (skipped when present), and EfficientNet-Lite0 fp32 + int8 with real weights (the
   served model, ``make models``) when missing; photos: a pool of distinct photos from ``tests/data``
   (:mod:`perf.photos`);
2. the seed's way: Keras predict one image at a time (:mod:`perf.seed_baseline`);
3. int8 vs fp32 agreement on the same photos (:mod:`perf.agreement`);
4. the idle CPU of the shared RabbitMQ node and Redis (subtracted from their CPU per request below);
5. ResNet50, per model: the in-process ceiling (:mod:`perf.ceiling`) per layout and batch size; the
   pipeline end to end through HTTP (:mod:`perf.pipeline`): cache misses at saturation for 1 worker x
   2 threads and 2 workers x 1 thread, one client; then ``--rounds`` alternating rounds of the ceiling
   (best configuration) and the pipeline (the same layout); each side's best round makes the ratio;
6. EfficientNet-Lite0 fp32 and int8: ``--rounds`` alternating rounds at one fixed layout, the ceiling
   at 2 processes x 1 thread, batch 8, the pipeline with 2 workers (ORT_THREADS=1, MAX_BATCH=8) and 16
   clients; each side's best round makes the ratio. Every pipeline round (ResNet50's too) records the
   CPU per answered request of the workers, the gateway, RabbitMQ, Redis and the load generator;
7. the bare broker round trip of one job (:mod:`perf.broker_rtt`), the floor under one client's latency;
8. cache hits through one gateway process and through two on one port (GATEWAY_PROCESSES=2),
   alternating ``--hit-rounds`` rounds, driven by wrk (:mod:`perf.wrk`; perf.loadgen where wrk is not
   on PATH, as the log and the report say);
9. stress points with locust (:mod:`perf.stress`), unless ``--no-stress``;
10. py-spy profiles of the gateway and a worker under Lite0 fp32 cache misses (:mod:`perf.profile`),
    unless ``--no-profile``;
11. scale-out (:mod:`perf.scale_out`, in a process of its own): cache misses with 1, 2, 3 EfficientNet-Lite0
    workers, and the CPU per job of the RabbitMQ node and of the gateway (``--scale-out-rounds 0``: skip).

Writes ``perf/results/<timestamp>.json``, ``perf/REPORT.md`` (with each part's seconds) and
``perf/plots/*.png``, and prints the bars with PASS/MISS. ``--only PART ...`` (seed, agreement,
resnet50, lite0, broker-rtt, hits, stress, profile, scale-out) runs only those parts: a partial run,
for trying them out, whose results and report go to ``perf/.run/bench-<stamp>/`` instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import MISSING, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import psutil

from common.cpu import VNNI_FLAGS, this_cpu
from common.model_file import model_version
from common.settings import Settings
from perf import photos, pipeline, plots, profile, report, results, stress, wrk
from perf.ceiling import run_layout
from perf.paths import (
    FP32_MODEL,
    INT8_MODEL,
    MODELS_DIR,
    PLOTS_DIR,
    REPO_ROOT,
    REPORT_PATH,
    RESULTS_DIR,
    RUN_DIR,
)
from perf.pipeline import Layout
from perf.results import (
    Agreement,
    Args,
    BestConfig,
    BrokerRtt,
    Ceiling,
    CeilingRound,
    CeilingRun,
    LoadRun,
    Machine,
    ModelFile,
    OneClient,
    PipelineRound,
    Profile,
    Results,
    Rounds,
    ScaleOut,
    Seed,
    from_dict,
)
from perf.services import Stack
from perf.stats import cpu_ms_per_request, machine_busy_cores

LAYOUTS = (Layout(1, 2), Layout(2, 1))
# Distinct photos: a saturation run must not wrap its share (Lite0 int8 answers ~150-200 a second for
# warm-up + window), or repeated photos would be cache hits.
POOL_SIZE = 2400
HIT_PHOTOS = 16  # the small pool for cache hits (the pool's last photos)
ONE_CLIENT_FIRST = (
    POOL_SIZE - 300
)  # the pool's last 300 photos: the one-client runs, never seen at saturation
LITE0 = (
    REPO_ROOT / "models" / "efficientnet-lite0.onnx",
    REPO_ROOT / "models" / "efficientnet-lite0-int8.onnx",
)
# The served model (what `make models` builds, real weights), at one fixed layout: its ratio's two sides
# are 2 processes x 1 onnxruntime thread at batch 8 (workers with ORT_THREADS=1, MAX_BATCH=8), and the
# pipeline's load is 16 closed-loop clients posting photos the cache has not seen.
LITE0_MODELS = {"lite0-fp32": LITE0[0], "lite0-int8": LITE0[1]}
LITE0_LAYOUT, LITE0_BATCH, LITE0_CLIENTS = Layout(2, 1), 8, 16

T = TypeVar("T")


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def measure(cls: type[T], module: str, timeout: float, *flags: str, **options: object) -> T:
    """Run ``python -m module --option value ... --flag`` in a process of its own and read the JSON line
    it prints last as ``cls`` (a results dataclass, or ``dict``)."""
    cmd = [
        sys.executable,
        "-m",
        module,
        *(a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))),
    ]
    out = subprocess.run([*cmd, *flags], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data if cls is dict else from_dict(cls, data)  # type: ignore[no-any-return]


def ensure_models_and_photos(resnet50: bool = True) -> tuple[dict[str, ModelFile], list[Path]]:
    """Make the random-weight ResNet50 fp32 + int8 once (the converter peaks at ~8 GB: one
    conversion at a time on the machine), and the photo pool meanwhile (nothing is measured yet);
    then EfficientNet-Lite0 fp32 + int8 (real weights) if ``make models`` has not."""
    converting: subprocess.Popen[bytes] | None = None
    if resnet50 and not (FP32_MODEL.exists() and INT8_MODEL.exists()):
        busy = [
            p.info["pid"]
            for p in psutil.process_iter(["pid", "cmdline"])
            if "converter" in " ".join(p.info["cmdline"] or []) and p.info["pid"] != os.getpid()
        ]
        if busy:
            log(f"another converter is running (pids {busy}); waiting for it before converting")
            psutil.wait_procs([psutil.Process(p) for p in busy if psutil.pid_exists(p)], timeout=900)
        log("making ResNet50 (random weights) fp32 + int8 with the converter (a few minutes, once)")
        # Fewer calibration and agreement inputs than the converter's defaults: random weights make
        # the int8 model's accuracy meaningless, and its speed does not depend on them (saves ~25 s).
        resnet50 = "resnet50 --weights random --int8 --calibration-count 100 --agreement-count 128 --out-dir"
        converting = subprocess.Popen(
            [sys.executable, "-m", "converter", *resnet50.split(), str(MODELS_DIR)], cwd=REPO_ROOT
        )
    t = time.monotonic()
    pool = photos.make_pool(POOL_SIZE)
    if converting is not None:
        if converting.wait() != 0:
            raise SystemExit(f"the converter failed ({converting.returncode})")
        log(f"models made in {time.monotonic() - t:.0f} s")
    if not all(p.exists() for p in LITE0):
        # The served offline model (real ImageNet weights, what `make models` builds): timed next to
        # ResNet50, and the meaningful int8 agreement check on these photos.
        log("making EfficientNet-Lite0 fp32 + int8 (real weights)")
        t = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "converter", "efficientnet-lite0", "--int8"], cwd=REPO_ROOT, check=True
        )
        log(f"EfficientNet-Lite0 made in {time.monotonic() - t:.0f} s")
    return _model_facts(), pool


def _model_facts() -> dict[str, ModelFile]:
    """ResNet50 ("fp32", "int8") where made, and EfficientNet-Lite0 ("lite0-fp32", "lite0-int8")."""
    return {
        name: ModelFile(
            path=str(path.relative_to(REPO_ROOT)),
            version=model_version(path),
            size_mb=round(path.stat().st_size / 1e6, 1),
        )
        for name, path in (("fp32", FP32_MODEL), ("int8", INT8_MODEL), *LITE0_MODELS.items())
        if path.exists()
    }


def machine() -> Machine:
    cpu = this_cpu()  # the int8 speed-up depends on the CPU's int8 instructions (VNNI or not)
    return Machine(
        host=platform.node(),
        cpu=cpu.model,
        cpu_flags=sorted(cpu.flags & (VNNI_FLAGS | {"avx2", "avx512f"})),
        vnni=cpu.vnni,
        cores=psutil.cpu_count() or 0,
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        python=platform.python_version(),
        onnxruntime=_version("onnxruntime"),
        load_avg_before=[round(x, 2) for x in os.getloadavg()],
        busy_cores_before=round(machine_busy_cores(2.0), 2),
        heavy_processes_before=_heavy_processes(),
    )


def wait_quiet(limit_s: float, busy_below: float = 0.3, calm_checks: int = 3) -> float:
    """Wait until the machine's busy cores stay under ``busy_below`` for ``calm_checks`` 2-second
    checks in a row (other engineers share it), at most ``limit_s``; returns the seconds waited."""
    t0, calm = time.monotonic(), 0
    while time.monotonic() - t0 < limit_s and calm < calm_checks:
        busy = machine_busy_cores(2.0)
        calm = calm + 1 if busy < busy_below else 0
    waited = time.monotonic() - t0
    log(f"waited {waited:.0f} s for a quiet machine ({'found' if calm >= calm_checks else 'gave up'})")
    return round(waited, 1)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _heavy_processes(threshold: float = 20.0) -> list[str]:
    """Processes using over ``threshold``% of a core over one second (someone else's work)."""
    procs = list(psutil.process_iter(["pid", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    heavy = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu >= threshold and p.pid != os.getpid():
            heavy.append(f"{cpu:.0f}% {' '.join(p.info['cmdline'] or [])[:100]}")
    return heavy


@dataclass
class Bench:
    """What every part of one run shares: its options, its photos, the services and each part's time."""

    args: Args
    photo_dir: Path
    run_dir: Path
    stack: Stack
    phases: dict[str, float] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)  # RabbitMQ's and Redis's CPU before our load

    def wants(self, part: str) -> bool:
        """Whether this run measures ``part`` (``--only``; every part by default)."""
        return not self.args.only or part in self.args.only

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one part of the run (the budget is 10 minutes in all)."""
        t = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - t, 1)

    def ceiling_runs(
        self, model: Path, layout: Layout, batches: list[int], seconds: float
    ) -> list[CeilingRun]:
        return run_layout(model, self.photo_dir, processes=layout.workers, threads=layout.threads,
                          batches=batches, seconds=seconds, count=400)  # fmt: skip

    def saturation(
        self, model: Path, layout: Layout, batch: int, seconds: float, clients: int | None = None
    ) -> LoadRun:
        """Cache misses at saturation, on the photos the one-client runs never see."""
        r = pipeline.saturation(self.stack, model, layout, max_batch=batch, photo_dir=self.photo_dir, first=0,
                                count=ONE_CLIENT_FIRST, seconds=seconds, warmup=self.args.warmup, concurrency=clients)  # fmt: skip
        if r.wrapped:
            log(f"warning: the load generator wrapped its {ONE_CLIENT_FIRST} photos: some requests were hits")
        return r


def ceiling(b: Bench, name: str, path: Path) -> Ceiling:
    """The in-process ceiling of one model: every layout and batch size, plus ORT batch-1 latency."""
    lat = measure(dict, "perf.ceiling", 300, "--latency", model=path, photo_dir=b.photo_dir, threads=2)
    # 1x2 at batch 1 is never the best (its batch-1 latency is measured above); 2x1 at batch 1 has been.
    configs = [
        run
        for layout, batches in ((Layout(1, 2), [8, 16]), (Layout(2, 1), [1, 8]))
        for run in b.ceiling_runs(path, layout, batches, b.args.ceiling_seconds)
    ]
    best = max(configs, key=lambda c: c.ips)
    # The workers' MAX_BATCH per layout: the ceiling's best among the micro-batch sizes (>= 8); a batch
    # of 1 in the worker pays its per-batch costs (thread hops, publish, Redis, ack) once per image.
    best_batch = {
        lay.name: max(
            (c for c in configs if c.layout == lay.name and c.batch >= 8), key=lambda c: c.ips
        ).batch
        for lay in LAYOUTS
    }
    log(
        f"ceiling {name}: best {best.ips:.1f} img/s ({best.layout}, batch {best.batch}); "
        f"ORT batch-1 p50 {lat['ort_batch1_ms']['p50']:.1f} ms; decode {lat['decode_ms']:.1f} ms"
    )
    return Ceiling(configs, best, best_batch, ort_batch1_ms=lat["ort_batch1_ms"], decode_ms=lat["decode_ms"])


def agreements(photo_dir: Path) -> dict[str, Agreement]:
    """int8 vs fp32 top-1 on the bench's photos: the timed random-weight ResNet50 (128 photos; it
    puts nearly all in one class) and EfficientNet-Lite0 with real weights (256 photos)."""
    out: dict[str, Agreement] = {}
    for name, (a, b), count in (
        ("resnet50-random", (FP32_MODEL, INT8_MODEL), 128),
        ("efficientnet-lite0", LITE0, 256),
    ):
        out[name] = r = measure(
            Agreement, "perf.agreement", 300, fp32=a, int8=b, photo_dir=photo_dir, count=count
        )
        log(
            f"agreement {name}: top-1 {r.agreement:.4f} on {r.photos} photos, {r.agreement_decisive:.4f} on the "
            f"{r.decisive} decisive ones ({r.fp32_distinct_top1} distinct fp32 classes)"
        )
    return out


def seed_baseline(photo_dir: Path, seconds: float, rounds: int) -> Seed:
    result = measure(Seed, "perf.seed_baseline", 600, photo_dir=photo_dir, seconds=seconds, rounds=rounds)
    rounds_text = ", ".join(f"{r.ips:.2f}" for r in result.rounds)
    log(
        f"seed's way (Keras predict, one image at a time): best of {rounds} rounds {result.ips:.2f} img/s ({rounds_text})"
    )
    return result


def end_to_end(b: Bench, name: str, path: Path, ceiling: Ceiling) -> tuple[dict[str, LoadRun], OneClient]:
    """Saturation for each layout, then one client (1x2), for one model."""
    e2e: dict[str, LoadRun] = {}
    for layout in LAYOUTS:
        batch = ceiling.best_batch[layout.name]
        e2e[layout.name] = r = b.saturation(path, layout, batch, b.args.sweep_seconds)
        log(
            f"e2e {name} {layout.name} batch {batch}: {r.rps:.1f} req/s, p50 {r.latency_ms.p50:.0f} ms, "
            f"statuses {r.statuses}, cpu {r.cpu_cores}"
        )
    batch = ceiling.best_batch["1x2"]
    b.stack.flush_redis()
    b.stack.start_workers(path, 1, 2, batch, 2 * batch)
    try:
        one = pipeline.one_client(
            b.stack, b.photo_dir, first=ONE_CLIENT_FIRST, count=300, seconds=b.args.one_client_seconds
        )
    finally:
        b.stack.stop_workers()
    m, parts = one.miss.latency_ms, ", ".join(f"{k} {v:.1f}" for k, v in one.breakdown_ms.items())
    log(f"one client {name}: p50 {m.p50:.1f} ms, p95 {m.p95:.1f} ms; breakdown {parts}")
    return e2e, one


def resnet_rounds(b: Bench, name: str, path: Path, ceiling: Ceiling) -> Rounds:
    """ResNet50's ratio: both sides at the ceiling's best configuration (its layout; the workers'
    MAX_BATCH is that layout's best micro-batch)."""
    cfg = ceiling.best
    # Like with like: the pipeline's workers run the ceiling's best layout, so the ratio is the cost of
    # serving alone. (The 5 s layout sweep cannot tell layouts within a few % apart: it once picked
    # 1x2 over 2x1 by 59.4 to 59.3 req/s for int8, where 2x1 led by 8-9 % in the other runs.)
    layout = next(lay for lay in LAYOUTS if lay.name == cfg.layout)
    return drift_rounds(b, name, path, layout, cfg.batch, ceiling.best_batch[layout.name])


def drift_rounds(
    b: Bench,
    name: str,
    path: Path,
    layout: Layout,
    ceiling_batch: int,
    e2e_batch: int,
    clients: int | None = None,
) -> Rounds:
    """The two sides of the ceiling ratio in alternating rounds (ceiling, pipeline, ceiling, ...), both
    on ``layout``: the ceiling at ``ceiling_batch``, the pipeline's workers at MAX_BATCH ``e2e_batch``
    with ``clients`` closed-loop clients (default 2 x workers x MAX_BATCH). The host's speed drifts from
    minute to minute, so each side keeps its best round (as ``converter/bench.py`` does) and every round
    is recorded, with the CPU each part of the serving path spent per answered request in its window."""
    ceilings: list[CeilingRound] = []
    e2e: list[PipelineRound] = []
    for i in range(1, b.args.rounds + 1):
        c = b.ceiling_runs(path, layout, [ceiling_batch], b.args.round_ceiling_seconds)[0]
        ceilings.append(CeilingRound(i, c.ips, others_cores=c.others_cores, late_start_s=c.late_start_s))
        r = b.saturation(path, layout, e2e_batch, b.args.seconds, clients)
        cpu, lat = r.cpu_cores, r.latency_ms
        per_request = cpu_ms_per_request(cpu, r.rps_window or 0.0, report.CPU_PARTS, b.idle)
        e2e.append(
            PipelineRound(
                i,
                r.rps,
                lat.p50,
                lat.p95 or math.nan,
                r.statuses or {},
                cpu.get("others"),
                cpu.get("workers"),
                rps_window=r.rps_window,
                cpu_cores=cpu,
                cpu_ms_per_request=per_request,
            )
        )
        log(
            f"round {i} {name}: ceiling {c.ips:.1f} img/s ({layout.name}, batch {ceiling_batch}), "
            f"e2e {r.rps:.1f} req/s ({layout.name}, batch {e2e_batch}, {r.concurrency} clients); "
            f"CPU ms/request {per_request}; others {cpu.get('others')} cores"
        )
    out = Rounds(
        rule="best", ceiling_config=BestConfig(layout.name, ceiling_batch), e2e_layout=layout.name,
        e2e_max_batch=e2e_batch, ceiling_seconds=b.args.round_ceiling_seconds, e2e_seconds=b.args.seconds,
        ceiling=ceilings, e2e=e2e, ceiling_best=max(x.ips for x in ceilings), e2e_best=max(x.rps for x in e2e),
        model=str(path.relative_to(REPO_ROOT)), clients=r.concurrency,
    )  # fmt: skip
    log(
        f"rounds {name}: best e2e {out.e2e_best:.1f} / best ceiling {out.ceiling_best:.1f} = {out.e2e_best / out.ceiling_best:.3f}"
    )
    return out


def _note_others(machine: Machine, when: str) -> None:
    machine.heavy_processes[when] = heavy = _heavy_processes()
    if heavy:
        log(f"other heavy processes {when}: {heavy}")


def hits(b: Bench, pool: list[Path]) -> list[LoadRun]:
    """Cache hits through one gateway process and through two on one port (GATEWAY_PROCESSES=2), in
    alternating rounds (1, 2, 2, 1, ...); the same photos, primed once through a Lite0 int8 worker."""
    stack, photo_paths = b.stack, pool[-HIT_PHOTOS:]
    use_wrk = wrk.available()
    if use_wrk:
        log(f"cache hits: driven by {wrk.TOOL} (perf.wrk)")
    else:
        log("cache hits: wrk is not on PATH (scripts/ensure_system_packages.sh installs it): falling back to "
            "perf.loadgen, whose own CPU caps what the gateways show on these cores")  # fmt: skip
    stack.flush_redis()
    stack.start_workers(LITE0[1], 1, 1, 8, 16)  # primes the cache, then idles (its model stays announced)
    runs: list[LoadRun] = []
    try:
        pipeline.prime_cache(stack, photo_paths)
        counts = [n for i in range(b.args.hit_rounds or 1) for n in ((1, 2) if i % 2 == 0 else (2, 1))]
        for processes, group in itertools.groupby(counts):
            with stack.gateway_processes(processes) if processes > 1 else nullcontext():
                for _ in group:
                    r = pipeline.cache_hits(stack, photo_paths, connections=b.args.hit_connections,
                                            seconds=b.args.hit_seconds, use_wrk=use_wrk)  # fmt: skip
                    if not use_wrk:  # "perf.loadgen (aiohttp on uvloop, 1 process; wrk not on PATH)"
                        tool = r.tool or "perf.loadgen"
                        r.tool = (
                            f"{tool[:-1]}; wrk not on PATH)"
                            if tool.endswith(")")
                            else f"{tool} (wrk not on PATH)"
                        )
                    r.cpu_ms_per_request = cpu_ms_per_request(
                        r.cpu_cores, r.rps_window or 0.0, ("gateway", "redis", "loadgen"), b.idle
                    )
                    runs.append(r)
                    log(
                        f"cache hits, {processes} gateway process(es): {r.rps:.0f} req/s, p50 "
                        f"{r.latency_ms.p50:.2f} ms, hit ratio {r.hit_ratio:.3f}, statuses {r.statuses}; "
                        f"cores {r.cpu_cores}"
                    )
    finally:
        stack.stop_workers()
    return runs


def best_hits(runs: list[LoadRun], processes: int) -> LoadRun | None:
    """The best round (requests/s) with ``processes`` gateway processes."""
    return max((r for r in runs if r.gateway_processes == processes), key=lambda r: r.rps, default=None)


def profiles(b: Bench) -> dict[str, Profile] | None:
    """Profile the gateway and a worker during EfficientNet-Lite0 fp32 cache misses at saturation,
    on the layout of its rounds (2 workers x 1 thread, MAX_BATCH 8, 16 clients)."""
    if not profile.available():
        log("py-spy is not installed (requirements/perf.txt): no profiles")
        return None
    stack = b.stack
    stack.flush_redis()
    lay = LITE0_LAYOUT
    stack.start_workers(LITE0[0], lay.workers, lay.threads, LITE0_BATCH, 2 * LITE0_BATCH)
    load = (
        f"EfficientNet-Lite0 fp32 cache misses at saturation: {lay.workers} workers x {lay.threads} thread, "
        f"MAX_BATCH {LITE0_BATCH}, {LITE0_CLIENTS} clients"
    )
    try:
        cmd = pipeline.loadgen_cmd(
            stack.base_url + "/predict", b.photo_dir, 0, ONE_CLIENT_FIRST, LITE0_CLIENTS, 9, 1
        )
        gen = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert stack.gateway is not None
        pids = {"gateway-misses": stack.gateway.pid, "worker-misses": stack.workers[0].pid}
        files = profile.record(pids, 7, b.run_dir / "profiles")
        gen.communicate(timeout=60)
        return {name: dataclasses.replace(profile.top(path), load=load) for name, path in files.items()}
    finally:
        stack.stop_workers()


def scale_out(b: Bench) -> ScaleOut | None:
    """1, 2, 3 workers on cache misses, and the broker's and the gateway's CPU per job."""
    rounds = b.args.scale_out_rounds
    if not rounds:
        return None
    seconds = b.args.scale_out_seconds or 5.0
    log(f"scale-out: 1, 2, 3 Lite0 workers x 1 thread, {rounds} round(s) of {seconds:g} s per point")
    r = measure(ScaleOut, "perf.scale_out", 600, photo_dir=b.photo_dir, rounds=rounds, seconds=seconds,
                warmup=b.args.warmup)  # fmt: skip
    log(report.scale_out_text(r))
    return r


def parse_args() -> Args:
    """The command line, one option per field of :class:`~perf.results.Args`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(Args):
        default = f.metadata.get("cli_default")
        if default is None:
            default = f.default if f.default is not MISSING else f.default_factory()
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(default, list):
            choices = f.metadata.get("choices")
            parser.add_argument(flag, type=f.metadata.get("item", int), nargs="+", default=default, choices=choices,
                                metavar="PART" if choices else None, help=help_text)  # fmt: skip
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)
    args = Args(**vars(parser.parse_args()))
    args.only = args.only or None  # a full run records no --only
    return args


def main() -> None:
    args = parse_args()

    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RUN_DIR / f"bench-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}
    b = Bench(args, photo_dir=Path(), run_dir=run_dir, stack=Stack(run_dir), phases=phases)
    if args.only:
        log(
            f"a partial run: only {', '.join(args.only)} (results and report in {run_dir.relative_to(REPO_ROOT)})"
        )
    with b.phase("models and photos"):
        models, pool = ensure_models_and_photos(resnet50=b.wants("resnet50") or b.wants("agreement"))
    b.photo_dir = pool[0].parent
    waited = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    host = machine()
    heavy = f"; other heavy processes: {host.heavy_processes_before}" if host.heavy_processes_before else ""
    log(
        f"{host.cpu} ({', '.join(host.cpu_flags or [])}); load average {host.load_avg_before}, busy cores {host.busy_cores_before}{heavy}"
    )
    seed = None
    if b.wants("seed"):
        with b.phase("seed's way"):
            seed = seed_baseline(b.photo_dir, args.seed_seconds, args.seed_rounds or 1)
    agreement: dict[str, Agreement] = {}
    if b.wants("agreement"):
        with b.phase("agreement"):
            agreement = agreements(b.photo_dir)

    ceilings: dict[str, Ceiling] = {}
    e2e: dict[str, dict[str, LoadRun]] = {}
    one_client: dict[str, OneClient] = {}
    rounds: dict[str, Rounds] = {}
    rtt = points = shed_at = shed_at_most = profiled = None
    hit_runs: list[LoadRun] = []
    stack = b.stack
    try:
        stack.flush_redis()
        stack.start_gateway()
        with b.phase("idle services"):  # what the shared RabbitMQ node and Redis use with no load of ours
            b.idle = pipeline.idle_cores(3.0)
        log(f"idle with no load of ours (cores): {b.idle}")
        # Per model, the ceiling right before the pipeline: the two sides of a ratio minutes apart at most.
        for name, path in (("fp32", FP32_MODEL), ("int8", INT8_MODEL)) if b.wants("resnet50") else ():
            _note_others(host, f"before {name}")
            with b.phase(f"{name}: ceiling"):
                ceilings[name] = ceiling(b, name, path)
            with b.phase(f"{name}: pipeline sweep and one client"):
                e2e[name], one_client[name] = end_to_end(b, name, path, ceilings[name])
            with b.phase(f"{name}: alternating rounds"):
                rounds[name] = resnet_rounds(b, name, path, ceilings[name])
        if b.wants("lite0"):
            for name, path in LITE0_MODELS.items():
                _note_others(host, f"before {name}")
                with b.phase(f"{name}: alternating rounds"):
                    rounds[name] = drift_rounds(
                        b, name, path, LITE0_LAYOUT, LITE0_BATCH, LITE0_BATCH, LITE0_CLIENTS
                    )
        if b.wants("broker-rtt"):
            with b.phase("broker round trip"):
                rtt = measure(BrokerRtt, "perf.broker_rtt", 120, photo_dir=b.photo_dir)
                log(
                    f"bare broker round trip ({rtt.queue_type} queue, {rtt.body_kib} KiB photos): p50 {rtt.rtt_ms['p50']:.1f} ms"
                )
        if b.wants("hits"):
            with b.phase("cache hits, 1 and 2 gateway processes"):
                hit_runs = hits(b, pool)
        if not args.no_stress and b.wants("stress"):
            log(f"stress: locust, {args.stress_seconds:g} s per point, int8, users {args.stress_users}")
            with b.phase("stress"):
                points = stress.stress(stack, INT8_MODEL, list(LAYOUTS), args.stress_users, seconds=args.stress_seconds,
                                       photo_dir=b.photo_dir, max_batch=8, out_dir=run_dir / "stress")  # fmt: skip
            shed = {lay.name: stress.shed_point(Settings.from_env(), lay, 8) for lay in LAYOUTS}
            shed_at = {name: least for name, (least, _) in shed.items()}
            shed_at_most = {name: most for name, (_, most) in shed.items()}
        if not args.no_profile and b.wants("profile"):
            log("profiling the gateway and a worker (py-spy) under Lite0 fp32 cache misses")
            with b.phase("profiles"):
                profiled = profiles(b)
    finally:
        stack.close()
    scaled = None
    if b.wants("scale-out"):
        with b.phase("scale-out"):  # its own gateway and queue: after this run's stack is gone
            scaled = scale_out(b)

    sizes = [p.stat().st_size for p in pool]
    host.load_avg_after = [round(x, 2) for x in os.getloadavg()]
    settings = Settings.from_env()
    run = Results(
        timestamp=stamp,
        args=args,
        models=models,
        machine=host,
        photos=results.Photos(
            len(pool), round(sum(sizes) / len(sizes) / 1024, 1), str(b.photo_dir.relative_to(REPO_ROOT))
        ),
        settings={f.name: str(getattr(settings, f.name)) for f in fields(settings) if "url" not in f.name},
        seed=seed,
        agreement=agreement,
        ceiling=ceilings,
        e2e=e2e,
        one_client=one_client,
        rounds=rounds,
        cache_hits=best_hits(hit_runs, 1),
        cache_hits_2p=best_hits(hit_runs, 2),
        cache_hit_rounds=hit_runs or None,
        idle_cores=b.idle or None,
        phases_s=phases,
        waited_for_quiet_s=waited,
        broker_rtt=rtt,
        stress=points,
        shed_at=shed_at,
        shed_at_most=shed_at_most,
        profile=profiled,
        scale_out=scaled,
        # The benchmark's own time; the optional wait for a quiet machine is reported apart.
        duration_s=round(time.monotonic() - started - (waited or 0.0), 1),
    )
    run.ratios = report.ratios(run)
    if args.only:  # a partial run: beside its logs, not among the committed results
        out, report_path = run_dir / f"{stamp}.json", run_dir / "REPORT.md"
        made = []
    else:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out, report_path = RESULTS_DIR / f"{stamp}.json", REPORT_PATH
        made = plots.make_all(run, PLOTS_DIR)
    results.dump(run, out)
    report_path.write_text(report.markdown(run, out))
    print()
    print(report.table(run))
    log(
        f"wrote {out.relative_to(REPO_ROOT)}, {report_path.relative_to(REPO_ROOT)}"
        + (f", {len(made)} plots in {PLOTS_DIR.relative_to(REPO_ROOT)}" if made else "")
        + f"; took {run.duration_s:.0f} s"
    )


if __name__ == "__main__":
    main()
