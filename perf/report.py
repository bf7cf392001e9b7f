"""From one run's :class:`~perf.results.Results`: the bars (PASS/MISS), the printed table and ``perf/REPORT.md``.

Pure functions of the results (no measuring here), so the report can be rebuilt from a
results file: ``python -m perf.report perf/results/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import jinja2

from perf.paths import PERF_DIR, PLOTS_DIR, REPO_ROOT, REPORT_PATH
from perf.results import Bar, LoadRun, Machine, Results, Rounds, ScaleOut, load

FINDINGS = PERF_DIR / "FINDINGS.md"  # hand-written: profile findings and fixes, appended to the report
MODELS = ("fp32", "int8")  # ResNet50 (random weights)
CPU_PARTS = ("workers", "gateway", "rabbitmq", "redis", "loadgen")  # CPU per request, in this order
NAN = math.nan
# Why every int8 / fp32 figure names its CPU (common.cpu): onnxruntime's int8 kernels use VNNI where it exists.
INT8_BY_CPU = (
    "the int8 speed-up differs by CPU: about 2.4-3x over fp32 where the CPU has VNNI (AVX512-VNNI, "
    "AVX-VNNI, AMX), about 1.6x on AVX2 without it; the int8 figures here hold for this CPU only"
)


def cpu_text(m: Machine) -> str:
    """The CPU's name and its int8-relevant flags (``common.cpu``); older runs recorded the name only."""
    if m.cpu_flags is None:
        return f"{m.cpu}; flags not recorded: the run predates common.cpu"
    flags = ", ".join(m.cpu_flags) or "no avx2/avx512/vnni"
    return f"{m.cpu}; {flags}: {'VNNI' if m.vnni else 'no VNNI'}"


def _spread(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _reach(bound: float, limit: float, what: str) -> str:
    """The best the pipeline could reach on this bar in this run: serving adds work to the in-process
    ceiling, so end-to-end throughput cannot beat it (beyond the host's drift between rounds)."""
    verdict = "out of reach in this run" if bound < limit else "reachable"
    return f"bound {what} = {bound:.2f} ({verdict})"


def _latency_floor(r: Results, model: str) -> str:
    """What one request adds to inference with no Python of ours: decoding its photo (nothing to
    overlap with at one client), the bare broker round trip, and the upload."""
    if r.broker_rtt is None:
        return ""
    decode = r.ceiling[model].decode_ms
    broker = r.broker_rtt.rtt_ms["p50"]
    upload = r.one_client[model].breakdown_ms["upload/hash"]
    floor = decode + broker + upload
    verdict = "out of reach in this run" if floor > 8.0 else "reachable"
    return (
        f"; floor: decode {decode:.1f} + bare broker round trip {broker:.1f} + upload/hash {upload:.1f} "
        f"= {floor:.1f} ms ({verdict})"
    )


def evaluate(name: str, value: float, op: str, limit: float, detail: str) -> Bar:
    """One bar: PASS when ``value op limit`` holds (``>=`` or ``<=``); a NaN value never passes."""
    if op not in (">=", "<="):
        raise ValueError(f"unknown comparison {op!r}")
    ok = value >= limit if op == ">=" else value <= limit
    return Bar(name, value, op, limit, bool(ok) and not math.isnan(value), detail)


def median_cpu_ms(rounds: Rounds) -> dict[str, float]:
    """Each part's CPU ms per answered request, the median over the pipeline's rounds (NaN where the
    rounds did not measure it): one slow or fast round moves it no more than the host does."""
    seen = {k for x in rounds.e2e for k in (x.cpu_ms_per_request or {})}
    out = {}
    for part in [p for p in CPU_PARTS if p in seen] + sorted(seen - set(CPU_PARTS)):
        values = [v for x in rounds.e2e if not math.isnan(v := (x.cpu_ms_per_request or {}).get(part, NAN))]
        out[part] = statistics.median(values) if values else NAN
    return out


def _rounds_detail(rd: Rounds, rounds: str = "best") -> str:
    return (
        f"{rounds} of {len(rd.e2e)} alternating rounds each: e2e {rd.e2e_best:.1f} req/s ({rd.e2e_layout}, "
        f"MAX_BATCH {rd.e2e_max_batch}{f', {rd.clients} clients' if rd.clients else ''}; rounds "
        f"{_spread([x.rps for x in rd.e2e])}) / ceiling {rd.ceiling_best:.1f} img/s ({rd.ceiling_config.layout}, "
        f"batch {rd.ceiling_config.batch}; rounds {_spread([x.ips for x in rd.ceiling])})"
    )


# The bars of the issue: ResNet50's (random weights) e2e / ceiling, and the served model's (Lite0).
E2E_CEILING_BARS = (
    ("fp32", "ResNet50 fp32", 0.95),
    ("int8", "ResNet50 int8", 0.90),
    ("lite0-fp32", "Lite0 fp32", 0.90),
)
# Bars stored under another name by older runs (before Lite0 had bars of its own).
RENAMED_BARS = {
    "fp32 end to end / in-process ceiling": "ResNet50 fp32 end to end / in-process ceiling",
    "int8 end to end / in-process ceiling": "ResNet50 int8 end to end / in-process ceiling",
}
# The serving path's CPU per cache miss (Lite0 fp32, median of its rounds), ms.
CPU_BARS = (("gateway", "gateway", 1.5), ("rabbitmq", "RabbitMQ", 0.5))
HITS_RPS, HITS_P50_MS = 2500.0, 5.0


def ratios(r: Results) -> list[Bar]:
    """Every bar of the issue that the run measured. A ratio's two sides are each side's best
    alternating round; CPU per request is the median of the rounds."""
    bars: list[Bar] = []

    def bar(name: str, value: float, op: str, limit: float, detail: str) -> None:
        bars.append(evaluate(name, value, op, limit, detail))

    for key, label, limit in E2E_CEILING_BARS:
        if key in r.rounds:
            rd = r.rounds[key]
            bar(f"{label} end to end / in-process ceiling", rd.e2e_best / rd.ceiling_best, ">=", limit,
                ("random weights, " if key in MODELS else "real weights, ") + _rounds_detail(rd))  # fmt: skip
    resnet = all(m in r.rounds for m in MODELS)
    ceiling = {m: r.rounds[m].ceiling_best for m in MODELS if m in r.rounds}
    e2e = {m: r.rounds[m].e2e_best for m in MODELS if m in r.rounds}
    if r.seed is not None and resnet:
        seed = r.seed.ips
        seed_rounds = (
            "; best of rounds " + ", ".join(f"{x.ips:.2f}" for x in r.seed.rounds) if r.seed.rounds else ""
        )
        for model, limit in (("fp32", 4.0), ("int8", 12.0)):
            bar(
                f"{model} end to end / seed's way",
                e2e[model] / seed,
                ">=",
                limit,
                f"{e2e[model]:.1f} req/s / {seed:.2f} img/s (Keras predict, one image at a time{seed_rounds}); "
                + _reach(ceiling[model] / seed, limit, f"in-process ceiling {ceiling[model]:.1f} / seed"),
            )
    if resnet:
        bar(
            "int8 / fp32 end to end",
            e2e["int8"] / e2e["fp32"],
            ">=",
            2.5,
            f"{e2e['int8']:.1f} / {e2e['fp32']:.1f} req/s; "
            + _reach(
                ceiling["int8"] / ceiling["fp32"],
                2.5,
                f"ceilings {ceiling['int8']:.1f} / {ceiling['fp32']:.1f}",
            )
            + f"; CPU {cpu_text(r.machine)} (the speed-up differs by CPU)",
        )
    agree = r.agreement.get("resnet50-random")
    if agree is not None:
        bar(
            "int8 top-1 agreement with fp32 (same photos)",
            agree.agreement,
            ">=",
            0.99,
            f"{round(agree.agreement * agree.photos)}/{agree.photos} photos; fp32 predicts "
            f"{agree.fp32_distinct_top1} distinct class(es) (random weights)",
        )
    lite0 = r.agreement.get("efficientnet-lite0")
    if lite0 is not None:  # real weights: the converter's gate, on the photos where fp32 is decisive
        bar(
            "int8 top-1 agreement, EfficientNet-Lite0 (real weights)",
            lite0.agreement_decisive,
            ">=",
            0.99,
            f"{round(lite0.agreement_decisive * lite0.decisive)}/{lite0.decisive} photos where fp32's "
            f"top-1 leads by >= {lite0.margin:g} (the converter's gate); all {lite0.photos} photos: "
            f"{lite0.agreement:.4f}, top-5 overlap {lite0.top5_overlap:.3f}",
        )
    for model in MODELS if r.one_client and r.ceiling else ():
        one = r.one_client[model].miss.latency_ms
        ort = r.ceiling[model].ort_batch1_ms["p50"]
        bar(
            f"{model} p50 at 1 client - ORT batch-1 p50 (ms)",
            one.p50 - ort,
            "<=",
            8.0,
            f"p50 {one.p50:.1f} ms (p95 {one.p95 or NAN:.1f}) vs ORT batch 1 {ort:.1f} ms"
            + _latency_floor(r, model),
        )
    lite0_fp32 = r.rounds.get("lite0-fp32")
    if lite0_fp32 is not None and any(x.cpu_ms_per_request for x in lite0_fp32.e2e):
        median = median_cpu_ms(lite0_fp32)
        for part, label, limit in CPU_BARS:
            per_round = _spread([(x.cpu_ms_per_request or {}).get(part, NAN) for x in lite0_fp32.e2e])
            idle = (r.idle_cores or {}).get(part)
            bar(
                f"Lite0 fp32 {label} CPU per cache miss (ms)",
                median.get(part, NAN),
                "<=",
                limit,
                f"median of {len(lite0_fp32.e2e)} rounds (rounds {per_round} ms; psutil CPU time over each "
                f"window / requests answered in it"
                + (f", its idle {idle:.3f} cores subtracted" if idle is not None else "")
                + f"); all parts in the rounds' table; {_cpu_summary(median)}",
            )
    two, one = r.cache_hits_2p, r.cache_hits
    if two is not None or one is not None:
        h = two if two is not None else one
        assert h is not None
        which = (
            "2 gateway processes on one port (GATEWAY_PROCESSES=2)"
            if two is not None
            else "1 gateway process: the run predates the 2-process measurement"
        )
        bar("cache hits: requests/s", h.rps, ">=", HITS_RPS, f"{which}; {_hits_detail(r, h)}")
        bar(
            "cache hits: p50 (ms)",
            h.latency_ms.p50,
            "<=",
            HITS_P50_MS,
            f"{which}; p90 {h.latency_ms.p90 if h.latency_ms.p90 is not None else NAN:.2f} ms, "
            f"p99 {h.latency_ms.p99:.2f} ms",
        )
    return bars


def _cpu_summary(ms: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in ms.items())


def hits_bound(h: LoadRun, cores: int) -> float:
    """Cache hits/s the machine's cores could carry at this run's CPU per hit of the gateway, Redis and
    the load generator (all on these cores): what the bar can reach here, whatever the gateway's count."""
    per_hit = sum(v for k, v in (h.cpu_ms_per_request or {}).items() if not math.isnan(v))
    return cores * 1000 / per_hit if per_hit > 0 else NAN


def _hits_detail(r: Results, h: LoadRun) -> str:
    others = [x for x in (r.cache_hit_rounds or [h]) if x.gateway_processes == h.gateway_processes]
    text = (
        f"best of {len(others)} round(s) ({_spread([x.rps for x in others])} req/s), {h.tool}, "
        f"{h.concurrency} connections; cores: gateway {h.cpu_cores.get('gateway', NAN):.2f}, "
        f"load generator {h.cpu_cores.get('loadgen', h.loadgen_cpu_cores):.2f}, Redis {h.cpu_cores.get('redis', NAN):.2f}"
    )
    if h.cpu_ms_per_request:
        bound = hits_bound(h, r.machine.cores)
        text += (
            f"; CPU ms per hit {_cpu_summary(h.cpu_ms_per_request)}: {r.machine.cores} cores carry "
            f"{bound:,.0f} req/s at most ({'out of reach' if bound < HITS_RPS else 'reachable'} here)"
        )
    if h.errors:  # wrk: responses of 400 and above, and socket errors
        text += f"; {h.errors} errors ({', '.join(f'{k} {v}' for k, v in (h.statuses or {}).items())})"
    one = r.cache_hits
    if h is not one and one is not None:
        text += f"; 1 process: {one.rps:.0f} req/s, p50 {one.latency_ms.p50:.2f} ms"
    return text


def scale_out_text(r: ScaleOut) -> str:
    """What the scale-out figures say: throughput per worker count, and how far one broker node and
    one gateway process carry (jobs per second per core of their CPU)."""
    best = ", ".join(f"{n} worker(s) {rps:.1f}" for n, rps in r.best_rps.items())
    return (
        f"Cache misses, req/s (best round): {best}. One RabbitMQ node takes ~{r.rabbitmq_jobs_per_core:,.0f} "
        f"jobs/s per core here ({r.rabbitmq_ms_per_job:.2f} ms of broker CPU per job, {r.queue_type} queue, "
        f"idle CPU subtracted); one gateway process takes ~{r.gateway_misses_per_core:,.0f} misses/s per core "
        f"({r.gateway_ms_per_miss:.2f} ms of CPU per miss, and one process is one core at most)."
    )


def model_name(key: str) -> str:
    """A rounds key as the report names it: ``fp32`` -> ResNet50 fp32, ``lite0-int8`` -> Lite0 int8."""
    return key.replace("lite0-", "Lite0 ") if key.startswith("lite0-") else f"ResNet50 {key}"


def outside_workers(ms: dict[str, float] | None) -> float:
    """CPU per request of the serving path beyond the workers: gateway, RabbitMQ, Redis, load generator."""
    return sum((ms or {}).get(part, NAN) for part in CPU_PARTS if part != "workers")


def best_hit(r: Results, run: LoadRun) -> bool:
    """Whether a cache-hit round is its gateway process count's best (the one the report uses)."""
    best = {1: r.cache_hits, 2: r.cache_hits_2p}.get(run.gateway_processes or 0)
    return best is not None and (best.rps, best.concurrency) == (run.rps, run.concurrency)


def cpu_measured(r: Results) -> list[tuple[str, Rounds]]:
    """The rounds whose pipeline windows recorded CPU per request (older runs did not)."""
    return [(k, rd) for k, rd in r.rounds.items() if any(x.cpu_ms_per_request for x in rd.e2e)]


def table(r: Results) -> str:
    """The bars as printed at the end of a run."""
    width = max((len(b.name) for b in r.ratios), default=3)
    lines = [f"{'bar':<{width}}  {'value':>8}  {'needs':>9}  result  from"]
    for b in r.ratios:
        lines.append(
            f"{b.name:<{width}}  {_fmt(b.value):>8}  {b.op} {_fmt(b.bar):>6}  "
            f"{'PASS' if b.passed else 'MISS':<6}  {b.detail}"
        )
    return "\n".join(lines)


def _fmt_value(value: float | None, spec: str) -> str:
    return format(math.nan if value is None else value, spec)


def _cpu_cells(cpu: dict[str, float], order: tuple[str, ...]) -> str:
    """Cores per process group, their sum, and what the rest of the machine used meanwhile."""
    total = sum(cpu.get(k, 0) for k in order)
    return f"{_cpu_list(cpu, order)} = {total:.2f} (others {cpu.get('others', NAN):.2f})"


def _cpu_list(cpu: dict[str, float], order: tuple[str, ...]) -> str:
    return " / ".join(f"{cpu.get(k, NAN):.2f}" for k in order)


TEMPLATE = jinja2.Environment(
    loader=jinja2.FileSystemLoader(PERF_DIR),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # Markdown, not HTML
)
TEMPLATE.filters.update(fmt=_fmt_value, cpu_list=_cpu_list)
TEMPLATE.globals.update(
    MODELS=MODELS, INT8_BY_CPU=INT8_BY_CPU, cpu_text=cpu_text, num=_fmt, cpu_cells=_cpu_cells,
    median=statistics.median, zip=zip, scale_out_text=scale_out_text, model_name=model_name,
    CPU_PARTS=CPU_PARTS, outside=outside_workers, median_cpu_ms=median_cpu_ms, cpu_measured=cpu_measured,
    hits_bound=hits_bound, best_hit=best_hit,
)  # fmt: skip


def markdown(r: Results, json_path: Path) -> str:
    """The whole REPORT.md: ``perf/report.md.j2`` filled from the results, then ``FINDINGS.md``."""
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    return TEMPLATE.get_template("report.md.j2").render(
        r=r, json_path=json_path.relative_to(REPO_ROOT), findings=findings
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Rebuild perf/REPORT.md and the plots from a results JSON (a partial run's: its REPORT.md beside it)."
    )
    parser.add_argument("results", type=Path)
    parser.add_argument("--no-plots", action="store_true", help="the report only (no matplotlib needed)")
    args = parser.parse_args()
    results = load(args.results)
    results.ratios = ratios(results)
    partial = bool(results.args.only)  # a partial run's report stays beside its results, with no plots
    if not args.no_plots and not partial:
        from perf import plots

        plots.make_all(results, PLOTS_DIR)
    out = args.results.resolve().parent / "REPORT.md" if partial else REPORT_PATH
    out.write_text(markdown(results, args.results.resolve()))
    print(table(results))


if __name__ == "__main__":
    main()
