"""PNG plots of one run's results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from perf.results import Latency, Results

COLORS = {"1x2": "#1f77b4", "2x1": "#ff7f0e"}
PART_COLORS = ["#9ecae1", "#c6dbef", "#fdae6b", "#a1d99b", "#31a354", "#bcbddc"]


def throughput(r: Results, path: Path) -> None:
    """Seed's way, in-process ceiling and end to end (per layout), fp32 and int8: the ratio's figures
    (each side's best alternating round) where the rounds measured them, the sweep's elsewhere."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels, values, colors = ["seed's way\n(Keras, 1 image)"], [r.seed.ips], ["#999999"]
    for model, color in (("fp32", "#6baed6"), ("int8", "#fd8d3c")):
        rounds = r.rounds[model]
        labels.append(
            f"{model} ceiling\n{rounds.ceiling_config.layout} b{rounds.ceiling_config.batch}\nbest round"
        )
        values.append(rounds.ceiling_best)
        colors.append(color)
        for layout, run in r.e2e[model].items():
            best = layout == rounds.e2e_layout
            labels.append(f"{model} e2e\n{layout}\n{'best round' if best else 'sweep'}")
            values.append(rounds.e2e_best if best else run.rps)
            colors.append(color)
    bars = ax.bar(range(len(values)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    for bar in bars[2::3] + bars[3::3]:
        bar.set_hatch("//")
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("images (requests) per second")
    ax.set_title("Throughput, ResNet50 random weights, cache misses (hatched: through HTTP)")
    _save(fig, path)


def throughput_vs_clients(r: Results, path: Path) -> None:
    """Stress points: predictions/s (and p95) against concurrent users, one line per worker layout."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    points = r.stress or []
    for layout in sorted({p.layout for p in points}):
        pts = [p for p in points if p.layout == layout]
        users, color = [p.users for p in pts], COLORS.get(layout)
        ax.plot(users, [p.predictions_per_s for p in pts], "o-", label=f"{layout} (locust)", color=color)
        ax2.plot(users, [p.p95_ms for p in pts], "o-", label=f"{layout} p95", color=color)
        ax2.plot(users, [p.p50_ms for p in pts], "o--", label=f"{layout} p50", color=color, alpha=0.6)
        shed = [p for p in pts if p.status_503 > 0]
        if shed:
            ax.scatter(
                [p.users for p in shed],
                [p.predictions_per_s for p in shed],
                s=120,
                facecolors="none",
                edgecolors="red",
                label="503s answered" if layout == "1x2" else None,
            )
    for layout, run in r.e2e["int8"].items():
        ax.scatter(
            [run.concurrency],
            [run.rps],
            marker="*",
            s=120,
            color=COLORS.get(layout),
            label=f"{layout} perf.loadgen",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("predictions per second (int8)")
    ax.set_title("Throughput vs clients")
    ax.legend(fontsize=7)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent clients")
    ax2.set_ylabel("POST /predict latency, ms")
    ax2.set_title("Latency vs clients")
    ax2.legend(fontsize=7)
    _save(fig, path)


def latency(r: Results, path: Path) -> None:
    """p50/p95/p99 per scenario (log scale)."""
    rows: list[tuple[str, Latency]] = []
    for model in ("fp32", "int8"):
        rows.append((f"{model}\n1 client", r.one_client[model].miss.latency_ms))
        rows += [
            (f"{model} {layout}\n{run.concurrency} clients", run.latency_ms)
            for layout, run in r.e2e[model].items()
        ]
    rows.append((f"cache hits\n{r.cache_hits.concurrency} conns", r.cache_hits.latency_ms))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.27
    for j, (q, color) in enumerate((("p50", "#3182bd"), ("p95", "#9ecae1"), ("p99", "#deebf7"))):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        heights = [v if (v := getattr(lat, q)) is not None else float("nan") for _, lat in rows]
        ax.bar(xs, heights, width, label=q, color=color, edgecolor="#555")
    for model, style in (("fp32", "--"), ("int8", ":")):
        ort = r.ceiling[model].ort_batch1_ms["p50"]
        ax.axhline(ort, ls=style, color="grey", lw=1)
        ax.text(
            len(rows) - 0.5, ort, f"ORT batch-1 {model} {ort:.0f} ms", fontsize=7, va="bottom", ha="right"
        )
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("Latency percentiles")
    ax.legend(fontsize=8)
    _save(fig, path)


def breakdown(r: Results, path: Path) -> None:
    """Stacked bar: where one request's time goes at one client, fp32 and int8."""
    models = ("fp32", "int8")
    parts = list(r.one_client["fp32"].breakdown_ms)
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(models)
    for part, color in zip(parts, PART_COLORS, strict=False):
        vals = [r.one_client[m].breakdown_ms[part] for m in models]
        ax.barh(models, vals, left=bottom, color=color, edgecolor="#555", label=part)
        for i, v in enumerate(vals):
            if v > 1.5:
                ax.text(bottom[i] + v / 2, i, f"{v:.1f}", ha="center", va="center", fontsize=7)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xlabel("ms (means at one client, cache miss)")
    ax.set_title("Where the time of one request goes")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    _save(fig, path)


def make_all(results: Results, out_dir: Path) -> list[str]:
    """Write every plot the results allow; returns their file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, fn in (
        ("throughput.png", throughput),
        ("latency.png", latency),
        ("breakdown.png", breakdown),
        ("throughput_vs_clients.png", throughput_vs_clients),
    ):
        if name == "throughput_vs_clients.png" and not results.stress:
            continue
        fn(results, out_dir / name)
        made.append(name)
    return made


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
