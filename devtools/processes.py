"""Run the real services (gateway, classifier workers) as subprocesses: for the tests and the benchmark.

Each process writes its output to a log file; on a failed wait the log tail is
put in the assertion message, so a broken service explains itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(overrides: dict[str, object]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class ServiceProcess:
    """One service subprocess with its log file; stopped by SIGTERM (or SIGKILL) at teardown."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} before {what}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no {what} after {timeout:.0f} s:\n{self.log_tail()}")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        self.wait_until(lambda: text in self.log_text(), timeout, f"log line {text!r}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, wait; SIGKILL if it does not stop. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def start_worker(env: dict[str, object], log_dir: Path, name: str = "worker") -> ServiceProcess:
    """Start `python -m classifier` and wait until it consumes."""
    worker = ServiceProcess(
        name, [sys.executable, "-m", "classifier"], service_env(env), log_dir / f"{name}.log"
    )
    worker.wait_for_log("worker ready", timeout=90)
    return worker


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_gateway(env: dict[str, object], log_dir: Path, name: str = "gateway") -> ServiceProcess:
    """Start `python -m gateway` and wait until /health/live answers."""
    gateway = ServiceProcess(
        name, [sys.executable, "-m", "gateway"], service_env(env), log_dir / f"{name}.log"
    )
    gateway.base_url = f"http://127.0.0.1:{env['PORT']}"  # type: ignore[attr-defined]
    gateway.wait_until(lambda: http_ok(f"{gateway.base_url}/health/live"), 60, "/health/live")  # type: ignore[attr-defined]
    return gateway
