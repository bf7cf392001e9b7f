"""One benchmark run's results as dataclasses: what ``perf/results/<stamp>.json`` holds.

:func:`load` reads a results file (dacite, strict: an unknown key is an error, not a loss) and
:func:`dump` writes the same JSON back; fields a run did not measure are ``None`` and left out.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dacite

Cores = dict[str, float]  # CPU cores used over a window, per process group (and "others")


@dataclass
class Latency:
    """Latency percentiles in ms (``perf.stats.summary_ms``); p90 only where the generator gave it."""

    p50: float
    p99: float
    mean: float
    p95: float | None = None
    p90: float | None = None
    n: int | None = None


@dataclass
class WorkerStats:
    """Means over a window from the workers' own histograms."""

    batch_size_mean: float
    decode_ms: float
    inference_ms_per_batch: float
    batch_wait_ms: float


@dataclass
class LoadRun:
    """One ``perf.loadgen`` run (or, for cache hits, one wrk run: ``perf.wrk``), with the CPU and metrics
    deltas ``perf.pipeline.drive`` (``drive_wrk``) adds."""

    concurrency: int
    rps: float
    latency_ms: Latency
    loadgen_cpu_cores: float
    duration_s: float | None = None
    rps_window: float | None = None
    statuses: dict[str, int] | None = None
    sent: int | None = None
    wrapped: bool | None = None
    cpu_cores: Cores = field(default_factory=dict)
    worker: WorkerStats | None = None
    gateway_ms: float | None = None
    layout: str | None = None
    max_batch: int | None = None
    tool: str | None = None  # cache hits: which generator drove them ("wrk 1 thread", or perf.loadgen's)
    errors: int | None = None
    hit_ratio: float | None = None
    # answers marked "cached" among the window's 200s (perf.loadgen); with wrk, which reads no answers, the
    # gateway processes' gateway_cache_hits_total over the run (perf.pipeline.drive_wrk)
    cached: int | None = None
    gateway_processes: int | None = None  # cache hits: GATEWAY_PROCESSES on the port it drove
    cpu_ms_per_request: dict[str, float] | None = None  # cache misses: each part's CPU / answered


@dataclass
class OneClient:
    miss: LoadRun
    hit: LoadRun
    redis_rtt_ms: float
    breakdown_ms: dict[str, float]


@dataclass
class CeilingRun:
    """One layout and batch size of the in-process ceiling (``perf.ceiling.run_layout``)."""

    layout: str
    batch: int
    ips: float
    late_start_s: float
    others_cores: float


@dataclass
class Ceiling:
    configs: list[CeilingRun]
    best: CeilingRun
    best_batch: dict[str, int]  # layout -> the workers' MAX_BATCH
    ort_batch1_ms: dict[str, float]  # p50, p95
    decode_ms: float


@dataclass
class CeilingRound:
    round: int
    ips: float
    others_cores: float
    late_start_s: float


@dataclass
class PipelineRound:
    round: int
    rps: float
    p50_ms: float
    p95_ms: float
    statuses: dict[str, int]
    others_cores: float | None = None
    workers_cores: float | None = None
    rps_window: float | None = None  # answers counted within the window (the CPU's window)
    cpu_cores: Cores | None = None  # workers, gateway, rabbitmq, redis, loadgen, others
    # CPU ms per answered request of each part (perf.stats.cpu_ms_per_request: cpu_cores / rps_window;
    # RabbitMQ's and Redis's idle CPU, Results.idle_cores, subtracted)
    cpu_ms_per_request: dict[str, float] | None = None


@dataclass
class BestConfig:
    layout: str
    batch: int


@dataclass
class Rounds:
    """The ratio's two sides in alternating rounds; each keeps its best."""

    rule: str
    ceiling_config: BestConfig
    e2e_layout: str
    e2e_max_batch: int
    ceiling_seconds: float
    e2e_seconds: float
    ceiling: list[CeilingRound]
    e2e: list[PipelineRound]
    ceiling_best: float
    e2e_best: float
    model: str | None = None  # the model file (older runs: ResNet50, named by the key)
    clients: int | None = None  # the pipeline's closed-loop clients


@dataclass
class SeedRound:
    images: int
    seconds: float
    ips: float


@dataclass
class Seed:
    """Keras ``predict``, one image at a time (``perf.seed_baseline``): the best round."""

    images: int
    seconds: float
    ips: float
    p50_ms: float
    rounds: list[SeedRound] = field(default_factory=list)


@dataclass
class Agreement:
    photos: int
    agreement: float
    decisive: int
    agreement_decisive: float
    margin: float
    top5_overlap: float
    fp32_distinct_top1: int
    max_abs_prob_diff: float


@dataclass
class BrokerRtt:
    queue_type: str
    body_kib: float
    jobs: int
    rtt_ms: dict[str, float]  # p50, p95, mean


@dataclass
class StressPoint:
    """One locust run (``perf.stress.run_point``)."""

    users: int
    seconds: float
    predictions_per_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    failure_rate: float
    predictions: int
    failures: dict[str, int]
    status_503: int
    queue_depth_max: int
    queue_depth_p50: float
    locust_cpu_cores: float
    cpu_cores: Cores
    layout: str = ""


@dataclass
class ScalePoint:
    """One window of cache misses with ``workers`` workers (``perf.scale_out``): throughput, latency,
    and the CPU each part of the path spent on it."""

    round: int
    workers: int
    concurrency: int
    seconds: float
    requests: int  # answered 200 within the window
    rps: float
    p50_ms: float
    p95_ms: float
    statuses: dict[str, int]
    cpu_cores: Cores  # workers, gateway, rabbitmq, redis, loadgen, others
    cpu_ms_per_request: dict[str, float]  # the same processes' CPU over the window / requests
    load_avg: list[float]
    wrapped: bool = False


@dataclass
class ScaleOut:
    """Throughput against the number of workers on one host, and what one broker node and one gateway
    process cost per job (``python -m perf.scale_out``)."""

    timestamp: str
    model: str
    threads: int
    max_batch: int
    queue: str
    queue_type: str
    rabbitmq_node: str
    rabbitmq_processors: int  # the cores its Erlang VM sees
    idle_cores: Cores  # rabbitmq and redis with no load of ours, measured before the first point
    points: list[ScalePoint]
    best_rps: dict[str, float]  # workers -> best round
    rabbitmq_ms_per_job: float  # median over the points, idle CPU subtracted
    gateway_ms_per_miss: float  # median over the points
    rabbitmq_jobs_per_core: float  # 1000 / rabbitmq_ms_per_job
    gateway_misses_per_core: float  # 1000 / gateway_ms_per_miss (one process is one core at most)
    load_avg_before: list[float]
    load_avg_after: list[float]


@dataclass
class Profile:
    """py-spy's busy samples of one process: (name, % of samples) by thread, self and inclusive."""

    samples: int
    threads: list[tuple[str, float]]
    self: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]
    load: str | None = None  # what ran meanwhile (older runs: int8 ResNet50 cache misses, 1x2)


@dataclass
class Bar:
    """One bar of the issue: value, comparison, limit, PASS/MISS and what it came from."""

    name: str
    value: float
    op: str
    bar: float
    passed: bool
    detail: str


@dataclass
class ModelFile:
    path: str
    version: str
    size_mb: float


@dataclass
class Photos:
    count: int
    mean_kib: float
    dir: str


@dataclass
class Machine:
    """The host the run measured; ``cpu_flags`` (int8-relevant, ``common.cpu``) from 2026-12 on."""

    host: str
    cpu: str
    cores: int
    memory_gb: float
    python: str
    onnxruntime: str
    load_avg_before: list[float]
    busy_cores_before: float
    heavy_processes_before: list[str]
    heavy_processes: dict[str, list[str]] = field(default_factory=dict)
    load_avg_after: list[float] | None = None
    cpu_flags: list[str] | None = None
    vnni: bool | None = None


def _option(default: Any, help: str = "", cli_default: Any = None) -> Any:
    """A ``perf.bench`` option: its default and help (``cli_default``: the CLI's, where an older run
    lacks the field and loads as None)."""
    return field(default=default, metadata={"help": help, "cli_default": cli_default})


# The parts of a run that --only can pick (perf.bench).
PARTS = ("seed", "agreement", "resnet50", "lite0", "broker-rtt", "hits", "stress", "profile", "scale-out")


@dataclass
class Args:
    """``perf.bench``'s options (its command line is built from these fields), as the run used them."""

    seconds: float = _option(5.0, "measured window of each pipeline round")
    warmup: float = _option(2.0, "excluded warm-up before each window")
    ceiling_seconds: float = _option(2.5, "window per configuration in the ceiling's layout/batch sweep")
    rounds: int = _option(
        3, "alternating ceiling / pipeline rounds per model for the ratio (best of each side)"
    )
    round_ceiling_seconds: float = _option(5.0, "ceiling window per round")
    sweep_seconds: float = _option(
        4.0, "measured window of the pipeline's layout sweep (the rounds use --seconds)"
    )
    seed_seconds: float = _option(3.0, "per seed round")
    one_client_seconds: float = 4.0
    hit_seconds: float = _option(3.0, "window of each cache-hit run")
    hit_connections: int = _option(8, "connections of the cache-hit runs (1 and 2 gateway processes alike)")
    hit_rounds: int | None = _option(
        None, "alternating cache-hit rounds per gateway process count (1, 2, 2, 1, ...; best of each)", 2
    )
    stress_seconds: float = 4.0
    stress_users: list[int] = field(default_factory=lambda: [1, 8, 32, 128, 384])
    wait_quiet: float = _option(
        0.0, "first wait up to this many seconds for other processes to leave the cores idle"
    )
    no_stress: bool = False
    no_profile: bool = False
    seed_rounds: int | None = _option(
        None, "back-to-back rounds of the seed's way (its best counts: TensorFlow speeds up as it warms)", 3
    )
    scale_out_seconds: float | None = _option(
        None, "window per point of the scale-out part (perf.scale_out: 1, 2, ... workers)", 4.0
    )
    scale_out_rounds: int | None = _option(
        None, "alternating rounds of the scale-out part (0: leave it out)", 1
    )
    only: list[str] | None = field(
        default=None,
        metadata={
            "help": f"run only these parts ({', '.join(PARTS)}): a partial run, for trying them out; its "
            "results and report go to perf/.run/bench-<stamp>/, not perf/results/ nor perf/REPORT.md",
            "cli_default": [],
            "item": str,
            "choices": PARTS,
        },
    )


@dataclass
class Results:
    """Everything one ``perf.bench`` run measured; the report is a pure function of it."""

    timestamp: str
    args: Args
    models: dict[str, ModelFile]
    machine: Machine
    photos: Photos
    settings: dict[str, str]
    # A part a partial run (--only) left out is None or empty; a full run has them all.
    seed: Seed | None = None
    agreement: dict[str, Agreement] = field(default_factory=dict)
    ceiling: dict[str, Ceiling] = field(default_factory=dict)  # ResNet50: "fp32", "int8"
    e2e: dict[str, dict[str, LoadRun]] = field(default_factory=dict)  # model -> layout -> run
    one_client: dict[str, OneClient] = field(default_factory=dict)
    # ResNet50 "fp32", "int8" (their ceiling's best layout); EfficientNet-Lite0 "lite0-fp32", "lite0-int8"
    rounds: dict[str, Rounds] = field(default_factory=dict)
    cache_hits: LoadRun | None = None  # one gateway process: its best round
    cache_hits_2p: LoadRun | None = None  # two gateway processes on one port: their best round
    cache_hit_rounds: list[LoadRun] | None = None  # every cache-hit round, in the order run
    idle_cores: Cores | None = None  # RabbitMQ and Redis with no load of ours, before the pipeline runs
    duration_s: float = math.nan
    phases_s: dict[str, float] | None = None
    waited_for_quiet_s: float | None = None
    broker_rtt: BrokerRtt | None = None
    stress: list[StressPoint] | None = None
    shed_at: dict[str, int] | None = None  # requests held before the first 503, a job a message
    shed_at_most: dict[str, int] | None = None  # ... every message a full job batch
    profile: dict[str, Profile] | None = None
    scale_out: ScaleOut | None = None
    ratios: list[Bar] = field(default_factory=list)


_CONFIG = dacite.Config(strict=True, cast=[tuple])


def from_dict(cls: type[Any], data: dict[str, Any]) -> Any:
    """A dataclass from JSON data (lists become the tuples the types name)."""
    return dacite.from_dict(cls, data, config=_CONFIG)


def load(path: Path) -> Results:
    data = json.loads(path.read_text())
    for bar in data.get("ratios", []):
        bar["passed"] = bar.pop("pass")
    return from_dict(Results, data)  # type: ignore[no-any-return]


def to_dict(value: Any) -> Any:
    """A dataclass as plain JSON data; ``None`` fields (not measured) are left out."""
    return dataclasses.asdict(value, dict_factory=lambda items: {k: v for k, v in items if v is not None})


def dump(results: Results, path: Path) -> None:
    data = to_dict(results)
    for bar in data["ratios"]:
        bar["pass"] = bar.pop("passed")
    path.write_text(json.dumps(data, indent=1, default=str))
