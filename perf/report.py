"""From one run's results: the ratio bars (PASS/MISS), the printed table and ``perf/REPORT.md``.

Pure functions of the results dict (no measuring here), so the report can be
rebuilt from a results JSON: ``python -m perf.report perf/results/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from perf.paths import PERF_DIR, PLOTS_DIR, REPO_ROOT, REPORT_PATH

FINDINGS = PERF_DIR / "FINDINGS.md"  # hand-written: profile findings and fixes, appended to the report


def _best_e2e(results: dict[str, Any], model: str) -> tuple[float, str]:
    """The pipeline's best round (at the ceiling's best layout); the sweep alone in older results."""
    if "rounds" in results:
        r = results["rounds"][model]
        return r["e2e_best"], r["e2e_layout"]
    runs = results["e2e"][model]
    layout = max(runs, key=lambda k: runs[k]["rps"])
    return runs[layout]["rps"], layout


def _best_ceiling(results: dict[str, Any], model: str) -> dict[str, Any]:
    if "rounds" in results:
        r = results["rounds"][model]
        return {"ips": r["ceiling_best"], **r["ceiling_config"]}
    return results["ceiling"][model]["best"]


def _spread(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every bar of the issue: value, comparison, bar, PASS/MISS, and what it was computed from."""
    rows: list[dict[str, Any]] = []

    def bar(name: str, value: float, op: str, limit: float, detail: str) -> None:
        ok = (value >= limit) if op == ">=" else (value <= limit)
        rows.append({"name": name, "value": value, "op": op, "bar": limit,
                     "pass": bool(ok) and not math.isnan(value), "detail": detail})

    ceiling = {m: _best_ceiling(results, m) for m in ("fp32", "int8")}
    e2e = {m: _best_e2e(results, m) for m in ("fp32", "int8")}
    seed = results["seed"]["ips"]
    for model, limit in (("fp32", 0.90), ("int8", 0.80)):
        c = ceiling[model]
        detail = (f"{e2e[model][0]:.1f} req/s ({e2e[model][1]}) / {c['ips']:.1f} img/s ({c['layout']}, batch {c['batch']})")
        if "rounds" in results:
            r = results["rounds"][model]
            detail = (f"best of {len(r['e2e'])} alternating rounds each: e2e {e2e[model][0]:.1f} req/s ({e2e[model][1]}; "
                      f"rounds {_spread([x['rps'] for x in r['e2e']])}) / ceiling {c['ips']:.1f} img/s ({c['layout']}, "
                      f"batch {c['batch']}; rounds {_spread([x['ips'] for x in r['ceiling']])})")
        bar(f"{model} end to end / in-process ceiling", e2e[model][0] / c["ips"], ">=", limit, detail)
    seed_rounds = ""
    if "rounds" in results["seed"]:
        seed_rounds = "; best of rounds " + ", ".join(f"{r['ips']:.2f}" for r in results["seed"]["rounds"])
    for model, limit in (("fp32", 4.0), ("int8", 12.0)):
        bar(f"{model} end to end / seed's way", e2e[model][0] / seed, ">=", limit,
            f"{e2e[model][0]:.1f} req/s / {seed:.2f} img/s (Keras predict, one image at a time{seed_rounds}); "
            + _reach(ceiling[model]["ips"] / seed, limit, f"in-process ceiling {ceiling[model]['ips']:.1f} / seed"))
    bar("int8 / fp32 end to end", e2e["int8"][0] / e2e["fp32"][0], ">=", 2.5,
        f"{e2e['int8'][0]:.1f} / {e2e['fp32'][0]:.1f} req/s; "
        + _reach(ceiling["int8"]["ips"] / ceiling["fp32"]["ips"], 2.5,
                 f"ceilings {ceiling['int8']['ips']:.1f} / {ceiling['fp32']['ips']:.1f}"))
    agree = results["agreement"]["resnet50-random"]
    bar("int8 top-1 agreement with fp32 (same photos)", agree["agreement"], ">=", 0.99,
        f"{round(agree['agreement'] * agree['photos'])}/{agree['photos']} photos; fp32 predicts "
        f"{agree['fp32_distinct_top1']} distinct class(es) (random weights)")
    lite0 = results["agreement"].get("efficientnet-lite0")
    if lite0 is not None:  # real weights: the converter's gate, on the photos where fp32 is decisive
        bar("int8 top-1 agreement, EfficientNet-Lite0 (real weights)", lite0["agreement_decisive"], ">=", 0.99,
            f"{round(lite0['agreement_decisive'] * lite0['decisive'])}/{lite0['decisive']} photos where fp32's "
            f"top-1 leads by >= {lite0['margin']:g} (the converter's gate); all {lite0['photos']} photos: "
            f"{lite0['agreement']:.4f}, top-5 overlap {lite0['top5_overlap']:.3f}")
    for model in ("fp32", "int8"):
        one = results["one_client"][model]["miss"]["latency_ms"]
        ort = results["ceiling"][model]["ort_batch1_ms"]["p50"]
        bar(f"{model} p50 at 1 client - ORT batch-1 p50 (ms)", one["p50"] - ort, "<=", 8.0,
            f"p50 {one['p50']:.1f} ms (p95 {one['p95']:.1f}) vs ORT batch 1 {ort:.1f} ms" + _latency_floor(results, model))
    hits = results["cache_hits"]
    bar("cache hits: requests/s", hits["rps"], ">=", 1000.0,
        f"{hits['tool']}, {hits['concurrency']} connections, load generator "
        f"{hits['loadgen_cpu_cores']:.2f} cores, gateway {hits['cpu_cores']['gateway']:.2f} cores")
    bar("cache hits: p50 (ms)", hits["latency_ms"]["p50"], "<=", 5.0,
        f"p90 {hits['latency_ms'].get('p90', float('nan')):.2f} ms, p99 {hits['latency_ms']['p99']:.2f} ms")
    return rows


def _reach(bound: float, limit: float, what: str) -> str:
    """The best the pipeline could reach on this bar in this run: serving adds work to the in-process
    ceiling, so end-to-end throughput cannot beat it (beyond the host's drift between rounds); a bound
    under the bar means out of reach."""
    verdict = "out of reach in this run" if bound < limit else "reachable"
    return f"bound {what} = {bound:.2f} ({verdict})"


def _latency_floor(results: dict[str, Any], model: str) -> str:
    """What one request must add to inference even with no Python in the gateway or worker: decoding
    its photo (nothing to overlap with at one client), the bare broker round trip, and the upload."""
    if "broker_rtt" not in results:
        return ""
    decode = results["ceiling"][model]["decode_ms"]
    broker = results["broker_rtt"]["rtt_ms"]["p50"]
    upload = results["one_client"][model]["breakdown_ms"]["upload/hash"]
    floor = decode + broker + upload
    verdict = "out of reach in this run" if floor > 8.0 else "reachable"
    return (f"; floor: decode {decode:.1f} + bare broker round trip {broker:.1f} + upload/hash {upload:.1f} "
            f"= {floor:.1f} ms ({verdict})")


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def table(results: dict[str, Any]) -> str:
    """The ratio table as printed at the end of a run."""
    rows = results["ratios"]
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'bar':<{width}}  {'value':>8}  {'needs':>9}  result  from"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {_fmt(r['value']):>8}  {r['op']} {_fmt(r['bar']):>6}  "
                     f"{'PASS' if r['pass'] else 'MISS':<6}  {r['detail']}")
    return "\n".join(lines)


def _cpu_cells(cpu: dict[str, float]) -> str:
    order = ("workers", "gateway", "rabbitmq", "redis", "loadgen")
    ours = " / ".join(f"{cpu.get(k, float('nan')):.2f}" for k in order) + f" = {sum(cpu.get(k, 0) for k in order):.2f}"
    return f"{ours} (others {cpu.get('others', float('nan')):.2f})"


def markdown(results: dict[str, Any], json_path: Path) -> str:
    """The whole REPORT.md."""
    m = results["machine"]
    out: list[str] = []
    w = out.append
    w("# Performance report: image classification serving\n")
    w(f"Generated by `make bench` (`python -m perf.bench`) at {results['timestamp']}, in "
      f"{results['duration_s']:.0f} s"
      + (f" (after waiting {results['waited_for_quiet_s']:.0f} s for a quiet machine)" if results.get("waited_for_quiet_s") else "")
      + f"; raw numbers in `{json_path.relative_to(REPO_ROOT)}`. "
      "Every figure below comes from this one run, on the same photos.\n")
    if results.get("phases_s"):
        w("**Time per part** (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["phases_s"].items()) + ".\n")
    w(f"**Machine**: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, "
      f"onnxruntime {m['onnxruntime']}. **Load average** before the run {m['load_avg_before']}, after "
      f"{m.get('load_avg_after')}; cores busy before it: {m['busy_cores_before']}. "
      + (f"Other heavy processes before the run: {'; '.join(m['heavy_processes_before'])}. "
         if m["heavy_processes_before"] else "No other heavy process before the run. ")
      + "".join(f"Other heavy processes {when}: {'; '.join(procs)}. "
                for when, procs in m.get("heavy_processes", {}).items() if procs)
      + "The machine is shared with other engineers: every service, the load generator and RabbitMQ/Redis "
        "share these cores, and the tables give the CPU the rest of the machine used during each window.\n")
    p = results["photos"]
    models = results["models"]
    w(f"**Photos**: {p['count']} distinct JPEGs (crops, mirrors, brightness changes and re-encodings of "
      f"`tests/data`'s three photos, 640-1024 px long side, mean {p['mean_kib']} KiB). **Models**: "
      f"ResNet50 with random weights (seed 0), fp32 `{models['fp32']['path']}` ({models['fp32']['size_mb']} MB, "
      f"version {models['fp32']['version']}) and static int8 QDQ `{models['int8']['path']}` "
      f"({models['int8']['size_mb']} MB, version {models['int8']['version']}).\n")

    w("## The bars\n")
    w("| bar | value | needs | result | from |")
    w("|---|---:|---:|:---:|---|")
    for r in results["ratios"]:
        w(f"| {r['name']} | {_fmt(r['value'])} | {r['op']} {_fmt(r['bar'])} | "
          f"{'PASS' if r['pass'] else '**MISS**'} | {r['detail']} |")
    w("")

    w("## Throughput\n")
    w("![throughput](plots/throughput.png)\n")
    w("### 1. In-process ceiling (decode + resize + onnxruntime, no network)\n")
    w("The classifier's own `Preprocessor` and `Model` (the worker's session options), decoding in a thread pool "
      "that overlaps the previous batch's inference, as the worker does. `PxT` = P processes of T onnxruntime "
      f"threads, run at once and added up. This sweep ({results['args']['ceiling_seconds']:g} s per configuration) "
      "picks the best configuration (the layout the rounds in 3b run on both sides) and each layout's MAX_BATCH (its best batch of 8 or more); the ratio's ceiling comes from the rounds in 3b.\n")
    w("| model | layout | batch | images/s | other processes' CPU meanwhile (cores) |")
    w("|---|---|---:|---:|---:|")
    for model in ("fp32", "int8"):
        c = results["ceiling"][model]
        for cfg in c["configs"]:
            star = " **best**" if (cfg["layout"], cfg["batch"]) == (c["best"]["layout"], c["best"]["batch"]) else ""
            w(f"| {model} | {cfg['layout']} | {cfg['batch']} | {cfg['ips']:.1f}{star} | {cfg.get('others_cores', float('nan')):.2f} |")
    w("")
    for model in ("fp32", "int8"):
        c = results["ceiling"][model]
        w(f"- {model}: onnxruntime alone at batch 1, 2 threads: p50 {c['ort_batch1_ms']['p50']:.1f} ms, "
          f"p95 {c['ort_batch1_ms']['p95']:.1f} ms; decode + resize of one photo (one thread): {c['decode_ms']:.1f} ms.")
    s = results["seed"]
    w(f"\n### 2. The seed's way\n\nKeras `predict` on one image at a time (ResNet50, random weights, Pillow "
      f"decode and resize, `preprocess_input`), in its own process: **{s['ips']:.2f} images/s** "
      f"(p50 {s['p50_ms']:.0f} ms per image, {s['images']} images in {s['seconds']:.1f} s after 3 warm-up images"
      + (f"; the best of {len(s['rounds'])} back-to-back rounds in one process: "
         + ", ".join(f"{r['ips']:.2f}" for r in s["rounds"]) + " images/s" if "rounds" in s else "")
      + ").\n")

    w("### 3. End to end through HTTP, cache misses, at saturation\n")
    w(f"Real gateway and worker subprocesses on a bench-unique queue and a Redis db of their own (flushed before each "
      f"layout); the load generator is `perf.loadgen` (aiohttp, closed loop, its own process), every request a photo "
      f"the cache has not seen. Warm-up {results['args']['warmup']:g} s excluded, then a "
      f"{results['args'].get('sweep_seconds', results['args']['seconds']):g} s window (both layouts; the rounds in 3b run the ceiling's best layout). MAX_BATCH is the ceiling's best batch for the layout, "
      "PREFETCH = 2 x MAX_BATCH. CPU columns: cores used over the window by workers / gateway / RabbitMQ / Redis / "
      "load generator, and (others) by the rest of the machine meanwhile (other engineers' work).\n")
    w("| model | layout | clients | req/s | p50 ms | p95 ms | mean batch | decode ms | inference ms/batch | statuses | CPU cores |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for model in ("fp32", "int8"):
        for layout, r in results["e2e"][model].items():
            wk = r["worker"]
            w(f"| {model} | {layout} | {r['concurrency']} | {r['rps']:.1f} | {r['latency_ms']['p50']:.0f} | "
              f"{r['latency_ms']['p95']:.0f} | {wk['batch_size_mean']:.1f} | {wk['decode_ms']:.1f} | "
              f"{wk['inference_ms_per_batch']:.0f} | {r['statuses']} | {_cpu_cells(r['cpu_cores'])} |")
    w("")

    if "rounds" in results:
        any_r = results["rounds"]["fp32"]
        w("### 3b. The ratio's two sides in alternating rounds (drift control)\n")
        w(f"The host's CPU speed drifts from minute to minute on this shared VM, so the ratio end to end / ceiling "
          f"is not taken from the sweeps above. Per model, after the sweeps, {len(any_r['ceiling'])} rounds alternate "
          f"the in-process ceiling at its best configuration ({any_r['ceiling_seconds']:g} s window) and the pipeline "
          f"with the same layout (warm-up {results['args']['warmup']:g} s, then a {any_r['e2e_seconds']:g} s window); "
          "**each side keeps its best round** (the same rule for both, as `converter/bench.py` does): a slow "
          "host phase can only pull a round down, never up. Every round is listed; the spread is the drift.\n")
        w("| model | side | configuration | round 1 | round 2 | round 3 | best (used) | median (for reference) | spread (max/min) | others' CPU per round (cores) |")
        w("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
        for model in ("fp32", "int8"):
            r = results["rounds"][model]
            for side, key, cfg in (("ceiling img/s", "ips", f"{r['ceiling_config']['layout']}, batch {r['ceiling_config']['batch']}"),
                                   ("end to end req/s", "rps", f"{r['e2e_layout']}, MAX_BATCH {r['e2e_max_batch']}")):
                rows = r["ceiling" if key == "ips" else "e2e"]
                vals = [x[key] for x in rows]
                cells = " | ".join(f"{v:.1f}" for v in vals[:3]) + " |" * max(0, 3 - len(vals))
                others = ", ".join(f"{x.get('others_cores') or 0:.2f}" for x in rows)
                w(f"| {model} | {side} | {cfg} | {cells} | **{max(vals):.1f}** | {statistics.median(vals):.1f} | "
                  f"{max(vals) / min(vals):.2f} | {others} |")
            med = statistics.median(x["rps"] for x in r["e2e"]) / statistics.median(x["ips"] for x in r["ceiling"])
            w(f"| {model} | ratio e2e / ceiling | per round: e2e round i / ceiling round i | " + " | ".join(
                f"{e['rps'] / c['ips']:.3f}" for e, c in zip(r["e2e"], r["ceiling"]))
              + f" | **{r['e2e_best'] / r['ceiling_best']:.3f}** | {med:.3f} | | |")
        w("")

    w("## Latency\n")
    w("![latency](plots/latency.png)\n")
    w("### 4. One client\n")
    w("| model | p50 ms | p95 ms | ORT batch-1 p50 ms | p50 - ORT | cache-hit p50 ms |")
    w("|---|---:|---:|---:|---:|---:|")
    for model in ("fp32", "int8"):
        o = results["one_client"][model]
        ort = results["ceiling"][model]["ort_batch1_ms"]["p50"]
        w(f"| {model} | {o['miss']['latency_ms']['p50']:.1f} | {o['miss']['latency_ms']['p95']:.1f} | {ort:.1f} | "
          f"{o['miss']['latency_ms']['p50'] - ort:.1f} | {o['hit']['latency_ms']['p50']:.2f} |")
    w("\n**Where the time of one request goes** (means at one client, ms):\n")
    w("![breakdown](plots/breakdown.png)\n")
    parts = list(results["one_client"]["fp32"]["breakdown_ms"])
    w("| part | " + " | ".join(parts) + " |")
    w("|---|" + "---:|" * len(parts))
    for model in ("fp32", "int8"):
        b = results["one_client"][model]["breakdown_ms"]
        w(f"| {model} | " + " | ".join(f"{b[k]:.2f}" for k in parts) + " |")
    w("\nHow each part is measured: *upload/hash* = mean latency of the same photos once cached (HTTP, multipart "
      "read, SHA-256, upload store, JSON) minus one Redis round trip; *cache lookup* = one Redis GET round trip; "
      "*decode* and *inference* = the worker's own histograms; *queue wait* = the worker's wait from delivery to "
      "inference beyond the decode it overlaps (the micro-batch window); *broker + reply* = the rest: publish with "
      "confirm into the quorum queue, delivery, the reply's publish, Redis SET, the reply's delivery and the answer.\n")
    if "broker_rtt" in results:
        b = results["broker_rtt"]
        w(f"**The floor.** The bare broker round trip of one job (`perf.broker_rtt`: publish with confirm into a "
          f"{b['queue_type']} queue declared with the request queue's own arguments, a consumer that answers at "
          f"once, the reply; {b['body_kib']} KiB photos, one at a time, {b['jobs']} jobs): p50 "
          f"{b['rtt_ms']['p50']:.1f} ms, p95 {b['rtt_ms']['p95']:.1f} ms. With the photo's decode and the upload, "
          "that is what one request adds to inference before any of our Python runs; the bars' table gives the sum.\n")

    h = results["cache_hits"]
    w("### 5. Cache hits\n")
    w(f"{HIT_PHOTOS_TEXT} Driven by {h['tool']} with {h['concurrency']} connections for "
      f"{results['args']['hit_seconds']:g} s: **{h['rps']:.0f} requests/s**, p50 {h['latency_ms']['p50']:.2f} ms, "
      f"p90 {h['latency_ms'].get('p90', float('nan')):.2f} ms, p99 {h['latency_ms']['p99']:.2f} ms, "
      f"hit ratio {h['hit_ratio']:.3f}. CPU (cores): gateway {h['cpu_cores']['gateway']:.2f}, Redis "
      f"{h['cpu_cores']['redis']:.2f}, load generator **{h['loadgen_cpu_cores']:.2f}** (it shares the 2 cores).\n")

    w("## Agreement (int8 vs fp32, same photos, through the serving preprocessing)\n")
    margin = next(iter(results["agreement"].values()))["margin"]
    w(f"| models | photos | top-1 agreement | decisive photos (fp32 margin >= {margin:g}) | agreement there | "
      "top-5 overlap | distinct fp32 top-1 | max abs prob diff |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, a in results["agreement"].items():
        w(f"| {name} | {a['photos']} | {a['agreement']:.4f} | {a['decisive']} | {a['agreement_decisive']:.4f} | "
          f"{a['top5_overlap']:.3f} | {a['fp32_distinct_top1']} | {a['max_abs_prob_diff']:.4f} |")
    w("\nWith random weights ResNet50 puts (almost) every photo in the same class, so its top-1 agreement says "
      "little about quantisation error; the top-5 overlap and probability difference say more, and the "
      "EfficientNet-Lite0 row (real ImageNet weights; the bench builds it as `make models` does) is the "
      "meaningful check. Its gate is the converter's: agreement on the photos where fp32's top-1 leads its "
      "runner-up by the margin above; on near-ties top-1 flips under any small change of the input (see "
      "finding 3 for the decode's own effect), so the all-photos figure is shown but not gated.\n")

    if "stress" in results:
        w("## Stress (locust)\n")
        w(f"locust {results['args']['stress_seconds']:g} s per point (headless, its own process, every user spawned at "
          "once, stats reset after the spawn), int8 model, cache misses (Redis flushed per point), users with no think "
          "time that honour `Retry-After`. 3 of 4 users are API clients (`POST /predict`), 1 of 4 a page visitor "
          "(`GET /`, `POST /` form upload, sometimes `POST /feedback`). Latency is `POST /predict`'s; "
          "*failures* counts every non-2xx (503 included) over all requests.\n")
        w("![stress](plots/throughput_vs_clients.png)\n")
        w("| layout | users | predictions/s | requests/s | p50 ms | p95 ms | failure rate | 503s | max queue depth | CPU cores: workers / gateway / RabbitMQ / locust (others) |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for pt in results["stress"]:
            c = pt.get("cpu_cores") or {}
            cpu = " / ".join(f"{c.get(k, float('nan')):.2f}" for k in ("workers", "gateway", "rabbitmq", "locust"))
            w(f"| {pt['layout']} | {pt['users']} | {pt['predictions_per_s']:.1f} | {pt['requests_per_s']:.1f} | "
              f"{pt['p50_ms']:.0f} | {pt['p95_ms']:.0f} | {pt['failure_rate'] * 100:.1f}% | {pt['status_503']} | "
              f"{pt['queue_depth_max']} | {cpu} ({c.get('others', float('nan')):.2f}) |")
        w("\nlocust's percentiles include the failed requests: a fast 503 pulls p50 down at the shedding point.\n")
        shed = results.get("shed_at", {})
        w(f"\n**Where 503 starts.** The gateway never queues forever: a publish into the full queue "
          f"(`QUEUE_MAX_LENGTH` = {results['settings'].get('queue_max_length')}, `x-overflow: reject-publish`) is "
          "nacked by the broker and answered 503 with `Retry-After` at once, and beyond "
          f"`MAX_IN_FLIGHT` = {results['settings'].get('max_in_flight')} requests the gateway answers 503 before "
          "reading the upload. With the workers holding PREFETCH jobs each, the system holds "
          + ", ".join(f"{n} requests ({lay})" for lay, n in shed.items())
          + " before the first 503; the table shows none up to 128 users and 503s beyond the bound.\n")

    if results.get("profile"):
        w("## Profiles (py-spy, int8 cache misses at saturation, 1 worker x 2 threads)\n")
        w("Share of the busy samples of each process (py-spy records running threads only).\n")
        for name, prof in results["profile"].items():
            if not isinstance(prof, dict) or "self" not in prof:
                continue
            w(f"**{name}** ({prof['samples']} samples; threads: "
              + ", ".join(f"{t} {s}%" for t, s in prof["threads"]) + ")\n")
            w("| self | % | inclusive | % |")
            w("|---|---:|---|---:|")
            for (fs, ss), (fi, si) in zip(prof["self"][:10], prof["inclusive"][:10], strict=False):
                w(f"| `{fs}` | {ss} | `{fi}` | {si} |")
            w("")
    if FINDINGS.exists():
        w(FINDINGS.read_text())
    return "\n".join(out) + "\n"


HIT_PHOTOS_TEXT = "The same 16 photos over and over (primed once through a worker), answered from Redis."


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild perf/REPORT.md and the plots from a results JSON.")
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    from perf import plots

    results = json.loads(args.results.read_text())
    results["ratios"] = ratios(results)
    plots.make_all(results, PLOTS_DIR)
    REPORT_PATH.write_text(markdown(results, args.results.resolve()))
    print(table(results))


if __name__ == "__main__":
    main()
