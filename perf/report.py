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
from perf.results import Bar, Machine, Results, ScaleOut, load

FINDINGS = PERF_DIR / "FINDINGS.md"  # hand-written: profile findings and fixes, appended to the report
MODELS = ("fp32", "int8")
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


def ratios(r: Results) -> list[Bar]:
    """Every bar of the issue. The ratio's two sides are each side's best alternating round."""
    bars: list[Bar] = []

    def bar(name: str, value: float, op: str, limit: float, detail: str) -> None:
        ok = value >= limit if op == ">=" else value <= limit
        bars.append(Bar(name, value, op, limit, bool(ok) and not math.isnan(value), detail))

    ceiling = {m: r.rounds[m].ceiling_best for m in MODELS}
    e2e = {m: r.rounds[m].e2e_best for m in MODELS}
    for model, limit in (("fp32", 0.90), ("int8", 0.80)):
        rd = r.rounds[model]
        bar(
            f"{model} end to end / in-process ceiling",
            e2e[model] / ceiling[model],
            ">=",
            limit,
            f"best of {len(rd.e2e)} alternating rounds each: e2e {e2e[model]:.1f} req/s ({rd.e2e_layout}; "
            f"rounds {_spread([x.rps for x in rd.e2e])}) / ceiling {ceiling[model]:.1f} img/s "
            f"({rd.ceiling_config.layout}, batch {rd.ceiling_config.batch}; rounds {_spread([x.ips for x in rd.ceiling])})",
        )
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
    bar(
        "int8 / fp32 end to end",
        e2e["int8"] / e2e["fp32"],
        ">=",
        2.5,
        f"{e2e['int8']:.1f} / {e2e['fp32']:.1f} req/s; "
        + _reach(
            ceiling["int8"] / ceiling["fp32"], 2.5, f"ceilings {ceiling['int8']:.1f} / {ceiling['fp32']:.1f}"
        )
        + f"; CPU {cpu_text(r.machine)} (the speed-up differs by CPU)",
    )
    agree = r.agreement["resnet50-random"]
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
    for model in MODELS:
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
    h = r.cache_hits
    bar(
        "cache hits: requests/s",
        h.rps,
        ">=",
        1000.0,
        f"{h.tool}, {h.concurrency} connections, load generator "
        f"{h.loadgen_cpu_cores:.2f} cores, gateway {h.cpu_cores['gateway']:.2f} cores",
    )
    bar(
        "cache hits: p50 (ms)",
        h.latency_ms.p50,
        "<=",
        5.0,
        f"p90 {_p90(r):.2f} ms, p99 {h.latency_ms.p99:.2f} ms",
    )
    return bars


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


def _p90(r: Results) -> float:
    return r.cache_hits.latency_ms.p90 if r.cache_hits.latency_ms.p90 is not None else NAN


def table(r: Results) -> str:
    """The bars as printed at the end of a run."""
    width = max(len(b.name) for b in r.ratios)
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
    median=statistics.median, zip=zip, scale_out_text=scale_out_text,
)  # fmt: skip


def markdown(r: Results, json_path: Path) -> str:
    """The whole REPORT.md: ``perf/report.md.j2`` filled from the results, then ``FINDINGS.md``."""
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    return TEMPLATE.get_template("report.md.j2").render(
        r=r, json_path=json_path.relative_to(REPO_ROOT), findings=findings
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild perf/REPORT.md and the plots from a results JSON.")
    parser.add_argument("results", type=Path)
    parser.add_argument("--no-plots", action="store_true", help="the report only (no matplotlib needed)")
    args = parser.parse_args()
    results = load(args.results)
    results.ratios = ratios(results)
    if not args.no_plots:
        from perf import plots

        plots.make_all(results, PLOTS_DIR)
    REPORT_PATH.write_text(markdown(results, args.results.resolve()))
    print(table(results))


if __name__ == "__main__":
    main()
