"""The worker's configuration and its import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from classifier.config import parse_args
from tests.support.processes import REPO_ROOT


def test_cli_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("QUEUE_NAME", "from-env")
    monkeypatch.setenv("MAX_BATCH", "4")
    monkeypatch.setenv("ORT_THREADS", "2")
    settings = parse_args(
        ["--queue", "from-cli", "--threads", "3", "--model", "m.onnx", "--metrics-port", "0"]
    )
    assert settings.queue_name == "from-cli"
    assert settings.ort_threads == 3
    assert settings.model_path == Path("m.onnx")
    assert settings.worker_metrics_port == 0
    assert settings.max_batch == 4  # no flag given: the variable holds


@pytest.mark.parametrize("argv", [["--max-batch", "0"], ["--batch-wait-ms", "-1"], ["--threads", "0"]])
def test_impossible_values_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_the_worker_imports_no_web_server_and_no_training_framework():
    """docs/DESIGN.md: the classifier never imports TF, torch or aiohttp's web server."""
    code = (
        "import sys, classifier.__main__, classifier.worker\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'torch', 'keras', 'aiohttp'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
