"""Fixtures for the converter tests: real conversions, each done once per test session.

Conversions run the CLI in a subprocess (as users and scripts do), one at a time: a
ResNet50 conversion alone peaks at ~7 GB of RAM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "tests" / "data"
THREADS = str(min(4, os.cpu_count() or 1))
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@dataclass
class Run:
    """One finished CLI run."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def stdout_lines(self) -> list[str]:
        return self.stdout.strip().splitlines()

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("converter: error:")]

    def value(self, key: str) -> str:
        """The value of a ``KEY=value`` line of stdout."""
        found = [line.split("=", 1)[1] for line in self.stdout_lines if line.startswith(key + "=")]
        assert found, f"no {key}= line in stdout:\n{self.stdout}"
        return found[-1]


def run_cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> Run:
    """``python -m converter ARGS`` from the repository root."""
    full_env = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    full_env.pop("CONVERTER_DEBUG", None)  # errors must be one line, as users see them
    proc = subprocess.run(
        [sys.executable, "-m", "converter", *map(str, args)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def ok(run: Run) -> Run:
    assert run.returncode == 0, (
        f"converter failed ({run.returncode}):\nSTDOUT:\n{run.stdout}\nSTDERR:\n{run.stderr}"
    )
    return run


@dataclass
class Converted:
    """A model converted once for the whole session."""

    path: Path
    run: Run
    int8_path: Path | None = None


@pytest.fixture(scope="session")
def lite0(tmp_path_factory) -> Converted:
    """``efficientnet-lite0 --int8``: the offline model, fp32 and int8, converted once per run.

    `make models` (part of `make test`) converts it into models/ and keeps the run's stdout
    in models/efficientnet-lite0.convert.log: these tests check that run rather than
    converting again. Without that log (pytest run by hand), convert into a temporary folder.
    """
    models = Path(os.environ.get("TEST_MODELS_DIR", REPO / "models"))
    log = models / "efficientnet-lite0.convert.log"
    fp32, int8 = models / "efficientnet-lite0.onnx", models / "efficientnet-lite0-int8.onnx"
    if log.is_file() and fp32.is_file() and int8.is_file():
        run = Run(0, log.read_text(), "")
        if (REPO / run.value("MODEL_PATH")).resolve() == fp32.resolve():
            return Converted(fp32, run, int8)
    out = tmp_path_factory.mktemp("lite0") / "efficientnet-lite0.onnx"
    run = ok(run_cli("efficientnet-lite0", "--int8", "--output", out, "--threads", THREADS))
    return Converted(out, run, out.with_name("efficientnet-lite0-int8.onnx"))


@pytest.fixture(scope="session")
def resnet50_random(tmp_path_factory) -> Converted:
    """Keras ResNet50 with random weights (seed 0) through tf2onnx: the slow one, done once."""
    out = tmp_path_factory.mktemp("resnet50") / "resnet50-random.onnx"
    run = ok(run_cli("resnet50", "--weights", "random", "--seed", "0", "--output", out, "--threads", THREADS))
    return Converted(out, run)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Small Keras models in every format the ``keras`` command takes, plus broken inputs."""
    import keras

    d = tmp_path_factory.mktemp("keras_models")
    keras.utils.set_random_seed(0)

    def cnn(shape, activation=None):
        inp = keras.Input(shape)
        x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inp, keras.layers.Dense(5, activation=activation)(x))

    cnn((32, 32, 3)).save(d / "logits.keras")
    cnn((32, 32, 3)).export(str(d / "saved_model"), verbose=False)
    cnn((None, None, 3), activation="softmax").save(d / "any_size.h5")
    cnn((32, 32, 1)).save(d / "grey.keras")
    inp = keras.Input((10,))
    keras.Model(inp, keras.layers.Dense(5)(inp)).save(d / "dense.keras")

    (d / "labels5.json").write_text(json.dumps(["ant", "bee", "cat", "dog", "eel"]))
    (d / "labels4.txt").write_text("ant\nbee\ncat\ndog\n")
    (d / "not_a_model.keras").write_text("this is not a model\n")
    (d / "not_a_model.h5").write_bytes(b"\x00garbage" * 64)
    (d / "not_a_model.onnx").write_bytes(b"\x08\x07garbage" * 64)
    (d / "folder").mkdir()
    return d


def predict(path: Path, images: np.ndarray) -> np.ndarray:
    from converter import runtime

    return runtime.predict(runtime.session(path, int(THREADS)), images)
