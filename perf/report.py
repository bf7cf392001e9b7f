"""From one run's :class:`~perf.results.Results`: the bars (PASS/MISS), the printed table and ``perf/REPORT.md``.

Pure functions of the results (no measuring here), so the report can be rebuilt from a
results file: ``python -m perf.report perf/results/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from perf.paths import PERF_DIR, PLOTS_DIR, REPO_ROOT, REPORT_PATH
from perf.results import Bar, Machine, Results, load

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


def _cpu_cells(cpu: dict[str, float]) -> str:
    order = ("workers", "gateway", "rabbitmq", "redis", "loadgen")
    ours = " / ".join(f"{cpu.get(k, NAN):.2f}" for k in order) + f" = {sum(cpu.get(k, 0) for k in order):.2f}"
    return f"{ours} (others {cpu.get('others', NAN):.2f})"


def _header(r: Results, json_path: Path) -> list[str]:
    m, p, fp32, int8 = r.machine, r.photos, r.models["fp32"], r.models["int8"]
    waited = (
        f" (after waiting {r.waited_for_quiet_s:.0f} s for a quiet machine)" if r.waited_for_quiet_s else ""
    )
    out = [
        "# Performance report: image classification serving\n",
        f"Generated by `make bench` (`python -m perf.bench`) at {r.timestamp}, in {r.duration_s:.0f} s{waited}; "
        f"raw numbers in `{json_path.relative_to(REPO_ROOT)}`. Every figure below comes from this one run, "
        "on the same photos.\n",
    ]
    if r.phases_s:
        out.append(
            "**Time per part** (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r.phases_s.items()) + ".\n"
        )
    heavy = (
        f"Other heavy processes before the run: {'; '.join(m.heavy_processes_before)}. "
        if m.heavy_processes_before
        else "No other heavy process before the run. "
    )
    heavy += "".join(
        f"Other heavy processes {when}: {'; '.join(ps)}. " for when, ps in m.heavy_processes.items() if ps
    )
    out.append(
        f"**Machine**: {m.cores} cores ({cpu_text(m)}), {m.memory_gb} GB, Python {m.python}, "
        f"onnxruntime {m.onnxruntime}; {INT8_BY_CPU}. "
        f"**Load average** before the run {m.load_avg_before}, after {m.load_avg_after}; cores busy before it: "
        f"{m.busy_cores_before}. {heavy}The machine is shared with other engineers: every service, the load "
        "generator and RabbitMQ/Redis share these cores, and the tables give the CPU the rest of the machine "
        "used during each window.\n"
    )
    out.append(
        f"**Photos**: {p.count} distinct JPEGs (crops, mirrors, brightness changes and re-encodings of "
        f"`tests/data`'s three photos, 640-1024 px long side, mean {p.mean_kib} KiB). **Models**: "
        f"ResNet50 with random weights (seed 0), fp32 `{fp32.path}` ({fp32.size_mb} MB, version {fp32.version}) "
        f"and static int8 QDQ `{int8.path}` ({int8.size_mb} MB, version {int8.version}).\n"
    )
    out += ["## The bars\n", "| bar | value | needs | result | from |", "|---|---:|---:|:---:|---|"]
    out += [
        f"| {b.name} | {_fmt(b.value)} | {b.op} {_fmt(b.bar)} | {'PASS' if b.passed else '**MISS**'} | {b.detail} |"
        for b in r.ratios
    ]
    return [*out, ""]


def _throughput(r: Results) -> list[str]:
    out = [
        "## Throughput\n",
        "![throughput](plots/throughput.png)\n",
        "### 1. In-process ceiling (decode + resize + onnxruntime, no network)\n",
        "The classifier's own `Preprocessor` and `Model` (the worker's session options), decoding in a thread "
        "pool that overlaps the previous batch's inference, as the worker does. `PxT` = P processes of T "
        f"onnxruntime threads, run at once and added up. This sweep ({r.args.ceiling_seconds:g} s per "
        "configuration) picks the best configuration (the layout the rounds in 3b run on both sides) and each "
        "layout's MAX_BATCH (its best batch of 8 or more); the ratio's ceiling comes from the rounds in 3b.\n",
        "| model | layout | batch | images/s | other processes' CPU meanwhile (cores) |",
        "|---|---|---:|---:|---:|",
    ]
    for model in MODELS:
        c = r.ceiling[model]
        for cfg in c.configs:
            star = " **best**" if (cfg.layout, cfg.batch) == (c.best.layout, c.best.batch) else ""
            out.append(
                f"| {model} | {cfg.layout} | {cfg.batch} | {cfg.ips:.1f}{star} | {cfg.others_cores:.2f} |"
            )
    out.append("")
    for model in MODELS:
        c = r.ceiling[model]
        out.append(
            f"- {model}: onnxruntime alone at batch 1, 2 threads: p50 {c.ort_batch1_ms['p50']:.1f} ms, "
            f"p95 {c.ort_batch1_ms['p95']:.1f} ms; decode + resize of one photo (one thread): {c.decode_ms:.1f} ms."
        )
    out.append(
        f"- int8 / fp32 on this CPU ({cpu_text(r.machine)}): {r.ceiling['int8'].best.ips:.1f} / "
        f"{r.ceiling['fp32'].best.ips:.1f} img/s = {r.ceiling['int8'].best.ips / r.ceiling['fp32'].best.ips:.2f}x "
        "at the sweep's best configurations; on another CPU it differs (VNNI or not, see the machine line)."
    )
    s = r.seed
    rounds = (
        f"; the best of {len(s.rounds)} back-to-back rounds in one process: "
        + ", ".join(f"{x.ips:.2f}" for x in s.rounds)
        + " images/s"
        if s.rounds
        else ""
    )
    out.append(
        "\n### 2. The seed's way\n\nKeras `predict` on one image at a time (ResNet50, random weights, Pillow "
        f"decode and resize, `preprocess_input`), in its own process: **{s.ips:.2f} images/s** "
        f"(p50 {s.p50_ms:.0f} ms per image, {s.images} images in {s.seconds:.1f} s after 3 warm-up images{rounds}).\n"
    )
    out += [
        "### 3. End to end through HTTP, cache misses, at saturation\n",
        "Real gateway and worker subprocesses on a bench-unique queue and a Redis db of their own (flushed before "
        "each layout); the load generator is `perf.loadgen` (aiohttp, closed loop, its own process), every request "
        f"a photo the cache has not seen. Warm-up {r.args.warmup:g} s excluded, then a {r.args.sweep_seconds:g} s "
        "window (both layouts; the rounds in 3b run the ceiling's best layout). MAX_BATCH is the ceiling's best "
        "batch for the layout, PREFETCH = 2 x MAX_BATCH. CPU columns: cores used over the window by workers / "
        "gateway / RabbitMQ / Redis / load generator, and (others) by the rest of the machine meanwhile (other "
        "engineers' work).\n",
        "| model | layout | clients | req/s | p50 ms | p95 ms | mean batch | decode ms | inference ms/batch "
        "| statuses | CPU cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for model in MODELS:
        for layout, run in r.e2e[model].items():
            wk, lat = run.worker, run.latency_ms
            assert wk is not None, "a saturation run carries the workers' histograms"
            out.append(
                f"| {model} | {layout} | {run.concurrency} | {run.rps:.1f} | {lat.p50:.0f} | {lat.p95 or NAN:.0f} | "
                f"{wk.batch_size_mean:.1f} | {wk.decode_ms:.1f} | {wk.inference_ms_per_batch:.0f} | {run.statuses} | "
                f"{_cpu_cells(run.cpu_cores)} |"
            )
    return [*out, "", *_rounds(r)]


def _rounds(r: Results) -> list[str]:
    first = r.rounds["fp32"]
    out = [
        "### 3b. The ratio's two sides in alternating rounds (drift control)\n",
        "The host's CPU speed drifts from minute to minute on this shared VM, so the ratio end to end / ceiling "
        f"is not taken from the sweeps above. Per model, after the sweeps, {len(first.ceiling)} rounds alternate "
        f"the in-process ceiling at its best configuration ({first.ceiling_seconds:g} s window) and the pipeline "
        f"with the same layout (warm-up {r.args.warmup:g} s, then a {first.e2e_seconds:g} s window); "
        "**each side keeps its best round** (the same rule for both, as `converter/bench.py` does): a slow "
        "host phase can only pull a round down, never up. Every round is listed; the spread is the drift.\n",
        "| model | side | configuration | round 1 | round 2 | round 3 | best (used) | median (for reference) "
        "| spread (max/min) | others' CPU per round (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model in MODELS:
        rd = r.rounds[model]
        sides = (
            ("ceiling img/s", f"{rd.ceiling_config.layout}, batch {rd.ceiling_config.batch}",
             [x.ips for x in rd.ceiling], [x.others_cores for x in rd.ceiling]),
            ("end to end req/s", f"{rd.e2e_layout}, MAX_BATCH {rd.e2e_max_batch}",
             [x.rps for x in rd.e2e], [x.others_cores for x in rd.e2e]),
        )  # fmt: skip
        for side, cfg, vals, others in sides:
            cells = " | ".join(f"{v:.1f}" for v in vals[:3]) + " |" * max(0, 3 - len(vals))
            out.append(
                f"| {model} | {side} | {cfg} | {cells} | **{max(vals):.1f}** | {statistics.median(vals):.1f} | "
                f"{max(vals) / min(vals):.2f} | {', '.join(f'{o or 0:.2f}' for o in others)} |"
            )
        med = statistics.median(x.rps for x in rd.e2e) / statistics.median(x.ips for x in rd.ceiling)
        per_round = " | ".join(f"{e.rps / c.ips:.3f}" for e, c in zip(rd.e2e, rd.ceiling, strict=False))
        out.append(
            f"| {model} | ratio e2e / ceiling | per round: e2e round i / ceiling round i | {per_round} | "
            f"**{rd.e2e_best / rd.ceiling_best:.3f}** | {med:.3f} | | |"
        )
    return [*out, ""]


def _latency(r: Results) -> list[str]:
    out = [
        "## Latency\n",
        "![latency](plots/latency.png)\n",
        "### 4. One client\n",
        "| model | p50 ms | p95 ms | ORT batch-1 p50 ms | p50 - ORT | cache-hit p50 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        o, ort = r.one_client[model], r.ceiling[model].ort_batch1_ms["p50"]
        miss = o.miss.latency_ms
        out.append(
            f"| {model} | {miss.p50:.1f} | {miss.p95 or NAN:.1f} | {ort:.1f} | {miss.p50 - ort:.1f} | "
            f"{o.hit.latency_ms.p50:.2f} |"
        )
    parts = list(r.one_client["fp32"].breakdown_ms)
    out += [
        "\n**Where the time of one request goes** (means at one client, ms):\n",
        "![breakdown](plots/breakdown.png)\n",
        "| part | " + " | ".join(parts) + " |",
        "|---|" + "---:|" * len(parts),
    ]
    for model in MODELS:
        b = r.one_client[model].breakdown_ms
        out.append(f"| {model} | " + " | ".join(f"{b[k]:.2f}" for k in parts) + " |")
    out.append(
        "\nHow each part is measured: *upload/hash* = mean latency of the same photos once cached (HTTP, multipart "
        "read, SHA-256, upload store, JSON) minus one Redis round trip; *cache lookup* = one Redis GET round trip; "
        "*decode* and *inference* = the worker's own histograms; *queue wait* = the worker's wait from delivery to "
        "inference beyond the decode it overlaps (the micro-batch window); *broker + reply* = the rest: publish with "
        "confirm into the quorum queue, delivery, the reply's publish, Redis SET, the reply's delivery and the answer.\n"
    )
    if (b := r.broker_rtt) is not None:
        out.append(
            "**The floor.** The bare broker round trip of one job (`perf.broker_rtt`: publish with confirm into a "
            f"{b.queue_type} queue declared with the request queue's own arguments, a consumer that answers at "
            f"once, the reply; {b.body_kib} KiB photos, one at a time, {b.jobs} jobs): p50 "
            f"{b.rtt_ms['p50']:.1f} ms, p95 {b.rtt_ms['p95']:.1f} ms. With the photo's decode and the upload, "
            "that is what one request adds to inference before any of our Python runs; the bars' table gives the sum.\n"
        )
    h = r.cache_hits
    out += [
        "### 5. Cache hits\n",
        "The same 16 photos over and over (primed once through a worker), answered from Redis. "
        f"Driven by {h.tool} with {h.concurrency} connections for {r.args.hit_seconds:g} s: "
        f"**{h.rps:.0f} requests/s**, p50 {h.latency_ms.p50:.2f} ms, p90 {_p90(r):.2f} ms, "
        f"p99 {h.latency_ms.p99:.2f} ms, hit ratio {h.hit_ratio if h.hit_ratio is not None else NAN:.3f}. "
        f"CPU (cores): gateway {h.cpu_cores['gateway']:.2f}, Redis {h.cpu_cores['redis']:.2f}, "
        f"load generator **{h.loadgen_cpu_cores:.2f}** (it shares the 2 cores).\n",
    ]
    return out


def _agreement(r: Results) -> list[str]:
    margin = next(iter(r.agreement.values())).margin
    out = [
        "## Agreement (int8 vs fp32, same photos, through the serving preprocessing)\n",
        f"| models | photos | top-1 agreement | decisive photos (fp32 margin >= {margin:g}) | agreement there | "
        "top-5 overlap | distinct fp32 top-1 | max abs prob diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {name} | {a.photos} | {a.agreement:.4f} | {a.decisive} | {a.agreement_decisive:.4f} | "
        f"{a.top5_overlap:.3f} | {a.fp32_distinct_top1} | {a.max_abs_prob_diff:.4f} |"
        for name, a in r.agreement.items()
    ]
    out.append(
        "\nWith random weights ResNet50 puts (almost) every photo in the same class, so its top-1 agreement says "
        "little about quantisation error; the top-5 overlap and probability difference say more, and the "
        "EfficientNet-Lite0 row (real ImageNet weights; the bench builds it as `make models` does) is the "
        "meaningful check. Its gate is the converter's: agreement on the photos where fp32's top-1 leads its "
        "runner-up by the margin above; on near-ties top-1 flips under any small change of the input (see "
        "finding 3 for the decode's own effect), so the all-photos figure is shown but not gated.\n"
    )
    return out


def _stress(r: Results) -> list[str]:
    if r.stress is None:
        return []
    out = [
        "## Stress (locust)\n",
        f"locust {r.args.stress_seconds:g} s per point (headless, its own process, every user spawned at once, "
        "stats reset after the spawn), int8 model, cache misses (Redis flushed per point), users with no think "
        "time that honour `Retry-After`. 3 of 4 users are API clients (`POST /predict`), 1 of 4 a page visitor "
        "(`GET /`, `POST /` form upload, sometimes `POST /feedback`). Latency is `POST /predict`'s; "
        "*failures* counts every non-2xx (503 included) over all requests.\n",
        "![stress](plots/throughput_vs_clients.png)\n",
        "| layout | users | predictions/s | requests/s | p50 ms | p95 ms | failure rate | 503s | max queue depth "
        "| CPU cores: workers / gateway / RabbitMQ / locust (others) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for pt in r.stress:
        c = pt.cpu_cores
        cpu = " / ".join(f"{c.get(k, NAN):.2f}" for k in ("workers", "gateway", "rabbitmq", "locust"))
        out.append(
            f"| {pt.layout} | {pt.users} | {pt.predictions_per_s:.1f} | {pt.requests_per_s:.1f} | {pt.p50_ms:.0f} | "
            f"{pt.p95_ms:.0f} | {pt.failure_rate * 100:.1f}% | {pt.status_503} | {pt.queue_depth_max} | "
            f"{cpu} ({c.get('others', NAN):.2f}) |"
        )
    shed = ", ".join(f"{n} requests ({lay})" for lay, n in (r.shed_at or {}).items())
    out += [
        "\nlocust's percentiles include the failed requests: a fast 503 pulls p50 down at the shedding point.\n",
        "\n**Where 503 starts.** The gateway never queues forever: a publish into the full queue "
        f"(`QUEUE_MAX_LENGTH` = {r.settings.get('queue_max_length')}, `x-overflow: reject-publish`) is "
        "nacked by the broker and answered 503 with `Retry-After` at once, and beyond "
        f"`MAX_IN_FLIGHT` = {r.settings.get('max_in_flight')} requests the gateway answers 503 before "
        f"reading the upload. With the workers holding PREFETCH jobs each, the system holds {shed} before the "
        "first 503; the table shows none up to 128 users and 503s beyond the bound.\n",
    ]
    return out


def _profiles(r: Results) -> list[str]:
    if not r.profile:
        return []
    out = [
        "## Profiles (py-spy, int8 cache misses at saturation, 1 worker x 2 threads)\n",
        "Share of the busy samples of each process (py-spy records running threads only).\n",
    ]
    for name, prof in r.profile.items():
        threads = ", ".join(f"{t} {s}%" for t, s in prof.threads)
        out += [
            f"**{name}** ({prof.samples} samples; threads: {threads})\n",
            "| self | % | inclusive | % |",
            "|---|---:|---|---:|",
        ]
        out += [
            f"| `{fs}` | {ss} | `{fi}` | {si} |"
            for (fs, ss), (fi, si) in zip(prof.self[:10], prof.inclusive[:10], strict=False)
        ]
        out.append("")
    return out


def markdown(r: Results, json_path: Path) -> str:
    """The whole REPORT.md."""
    sections = [_header(r, json_path), _throughput(r), _latency(r), _agreement(r), _stress(r), _profiles(r)]
    out = [line for section in sections for line in section]
    if FINDINGS.exists():
        out.append(FINDINGS.read_text())
    return "\n".join(out) + "\n"


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
