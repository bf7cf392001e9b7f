"""Exported framework graph -> checked model file (+ optional int8 copy)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from common import cpu
from common.model_file import ModelMetadata, model_version
from converter import __version__, onnx_file, parity
from converter.images import load_photos
from converter.parity import ParityReport
from converter.progress import Progress
from converter.quantize import Gate, Int8Report, int8_path_for, quantize_file
from converter.source import Exported


@dataclass(frozen=True)
class Options:
    """Settings shared by every command."""

    threads: int
    photo_dir: Path  # real photos for parity (and default calibration)
    calibration_dir: Path
    explicit_calibration: bool  # --calibration given: calibrate there, judge on all labelled photos
    labelled_dir: Path | None  # labelled photos for top-1 accuracy; None: not measurable here
    calibration_count: int
    agreement_count: int
    scheme: str
    gate: Gate


@dataclass(frozen=True)
class Result:
    """What one conversion wrote and measured."""

    path: Path
    name: str
    version: str
    size_mb: float
    parity: ParityReport | None
    int8: Int8Report | None


def write_model(exported: Exported, out: Path, opts: Options, progress: Progress) -> Result:
    """Wrap, label, check and atomically save ``exported`` at ``out``."""
    progress.stage(
        "wrapping",
        f"uint8 NHWC input + {exported.normalisation.describe()}"
        + (" + softmax" if exported.add_softmax else ""),
    )
    model = onnx_file.wrap(
        exported.core,
        input_size=exported.input_size,
        normalisation=exported.normalisation,
        channels_first=exported.channels_first,
        add_softmax=exported.add_softmax,
    )
    meta = ModelMetadata(
        name=exported.name,
        labels=list(exported.labels),
        input_size=exported.input_size,
        resize=exported.resize,
        source=exported.source,
        converter=f"converter {__version__} / {exported.tool}",
        created=onnx_file.utc_now(),
    )
    onnx_file.set_metadata(model, meta)
    onnx_file.check(model)
    photos = load_photos(opts.photo_dir)
    with onnx_file.staged(out) as staged:
        onnx_file.save(model, staged)
        progress.stage(
            "parity", f"{exported.tool.split()[0]} source vs onnxruntime, {len(photos)} photos + noise"
        )
        report = parity.check_fp32(
            staged, exported.reference, photos, exported.input_size, exported.resize, opts.threads
        )
        progress.stage("parity", report.line())
    return Result(out, exported.name, model_version(out), out.stat().st_size / 1e6, report, None)


def convert(exported: Exported, out: Path, int8: bool, opts: Options, progress: Progress) -> Result:
    """The whole job for one model: fp32 file, then (optionally) the int8 copy."""
    result = write_model(exported, out, opts, progress)
    # The framework model (TF or torch) is not needed any more: free it before quantising.
    exported.reference = None  # type: ignore[assignment]
    exported.core = None
    gc.collect()
    if not int8:
        return result
    report = quantize_int8(out, opts, progress)
    return Result(result.path, result.name, result.version, result.size_mb, result.parity, report)


def quantize_int8(fp32_path: Path, opts: Options, progress: Progress, out: Path | None = None) -> Int8Report:
    return quantize_file(
        fp32_path,
        out or int8_path_for(fp32_path),
        photo_dir=opts.calibration_dir,
        labelled_dir=opts.labelled_dir,
        explicit_calibration=opts.explicit_calibration,
        calibration_count=opts.calibration_count,
        agreement_count=opts.agreement_count,
        scheme=opts.scheme,
        gate=opts.gate,
        threads=opts.threads,
        progress=progress,
    )


def int8_lines(r: Int8Report) -> list[str]:
    """The int8 part of a summary: accuracy (or why it was not measured), agreement, speed."""
    if r.accuracy is not None:
        quality = f"accuracy:  {r.accuracy.line()} (gated)"
    else:
        quality = (
            f"accuracy:  labelled top-1 NOT MEASURED: {r.unlabelled_reason}; gated instead: "
            f"int8 top-1 = fp32 top-1 on {r.agree}/{r.total} = {r.agreement:.4f} of the held-out "
            f"inputs where fp32 leads by >= {r.decisive_margin:g}; {r.agree_all}/{r.total_all} overall"
        )
    return [
        f"int8:      {r.path} ({r.size_mb:.1f} MB, version {r.version}, scheme {r.scheme}, "
        f"calibrated on {r.calibration_inputs} inputs)",
        quality,
        f"speed:     fp32 {r.fp32_ips:.1f} img/s, int8 {r.int8_ips:.1f} img/s "
        f"({r.int8_ips / r.fp32_ips:.2f}x), batch {r.batch_size}, {r.threads} onnxruntime threads, "
        f"on {cpu.describe()} (the int8 speed-up differs by CPU)",
    ]


def summary(result: Result, progress: Progress) -> list[str]:
    """The closing lines of a run."""
    lines = [
        "== summary ==",
        f"output:    {result.path}",
        f"name:      {result.name}",
        f"size:      {result.size_mb:.1f} MB",
        f"version:   {result.version}",
    ]
    if result.parity:
        lines.append(f"parity:    {result.parity.line()}")
    if result.int8:
        lines += int8_lines(result.int8)
    lines.append(f"elapsed:   {progress.elapsed:.1f}s")
    return lines
