"""The local three-node RabbitMQ cluster of scripts/rabbitmq_cluster.py, driven by the fault tests.

It runs on ports and node names of its own (not `make cluster`'s), so a user's
cluster and the machine's own node on 5672 are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.processes import REPO_ROOT
from tests.support.rabbitmq_api import ManagementAPI

SCRIPT = REPO_ROOT / "scripts" / "rabbitmq_cluster.py"


class LocalCluster:
    """Three clustered nodes: node i (1-based) has AMQP port ``port + i - 1``."""

    def __init__(self, port: int = 5691, name: str = "faultrabbit") -> None:
        self.port = port
        self.name = name
        self.env = dict(
            os.environ,
            RABBITMQ_CLUSTER_PORT=str(port),
            RABBITMQ_CLUSTER_NAME=name,
            RABBITMQ_CLUSTER_DIR=f"/tmp/serving-rabbitmq-cluster-test-{uuid.uuid4().hex[:8]}",
        )
        self.url = ""  # RABBITMQ_URL: every node, comma-separated
        self.start_s = 0.0

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (
            f"rabbitmq_cluster.py {' '.join(args)}:\n{result.stderr}{result.stdout}"
        )
        return result.stdout

    def start(self) -> None:
        started = time.monotonic()
        out = self._run("start")
        self.start_s = time.monotonic() - started
        self.url = next(line for line in out.splitlines() if line.startswith("RABBITMQ_URL=")).split("=", 1)[
            1
        ]
        assert self.url.count("amqp://") == 3, out

    def stop(self) -> None:
        self._run("stop")

    def kill(self, index: int) -> float:
        """kill -9 node ``index``'s Erlang VM (here, not through the script: the moment matters).
        Returns the time.monotonic() of the kill."""
        pid_file = Path(self.env["RABBITMQ_CLUSTER_DIR"]) / f"node{index}" / "pid"
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        killed_at = time.monotonic()
        pid_file.unlink()
        return killed_at

    def boot(self, index: int) -> None:
        """Start node ``index`` again from its data: it rejoins the cluster by itself."""
        self._run("boot", str(index))

    def node(self, index: int) -> str:
        return f"{self.name}{index}@localhost"

    def index_of(self, node: str) -> int:
        return int(node.split("@")[0].removeprefix(self.name))

    def api(self, index: int) -> ManagementAPI:
        return ManagementAPI(f"http://127.0.0.1:{self.port + 10000 + index - 1}")
