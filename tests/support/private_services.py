"""Private RabbitMQ and Redis servers that fault tests may stop, start and kill.

The shared servers on 5672/6379 serve every other test; a fault test that
stopped them would break its neighbours. These run on other ports, with their
own data folders, started with the same commands the machine uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path


def _wait_port(port: int, up: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            is_up = True
        except OSError:
            is_up = False
        if is_up == up:
            return
        time.sleep(0.2)
    raise AssertionError(f"port {port} still {'down' if up else 'up'} after {timeout} s")


class PrivateRabbitMQ:
    """A second RabbitMQ node (own name, ports and mnesia folder) with the management plugin."""

    def __init__(self, amqp_port: int, management_port: int, dist_port: int) -> None:
        # Not under pytest's tmp_path: its folders are 0700 root, and the node runs as rabbitmq.
        self.base = Path(f"/tmp/serving-rabbitmq-{uuid.uuid4().hex[:8]}")
        self.amqp_port = amqp_port
        self.management_port = management_port
        self.node = f"fault{uuid.uuid4().hex[:6]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{amqp_port}/"
        self.env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_DIST_PORT=str(dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.base / "pid"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
        )

    def start(self, timeout: float = 90) -> None:
        for folder in ("mnesia", "log"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
        )
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        # rabbitmq-server drops to the rabbitmq user, which must own its folders.
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        for path in self.base.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.amqp_port, up=True, timeout=timeout)
        _wait_port(self.management_port, up=True, timeout=timeout)

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "-q", *args], env=self.env, check=True, stdout=subprocess.DEVNULL
        )

    def stop_app(self) -> None:
        """The broker goes away (connections dropped, port closed); the node stays up."""
        self._ctl("stop_app")
        _wait_port(self.amqp_port, up=False, timeout=30)

    def start_app(self) -> None:
        self._ctl("start_app")
        _wait_port(self.amqp_port, up=True, timeout=60)

    def stop(self) -> None:
        """Gone at once: a throwaway node needs no graceful shutdown (rabbitmqctl stop took
        up to 36 s of a fault test's teardown)."""
        try:
            pid = int((self.base / "pid").read_text().strip())
        except (OSError, ValueError):
            subprocess.run(
                ["rabbitmqctl", "-n", self.node, "-q", "stop"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            _wait_port(self.amqp_port, up=False, timeout=15)
        shutil.rmtree(self.base, ignore_errors=True)


class PrivateRedis:
    """A second redis-server on its own port, nothing on disk."""

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base),
                "--pidfile",
                str(self.base / "redis.pid"),
                "--logfile",
                str(self.base / "redis.log"),
            ],
            check=True,
        )
        _wait_port(self.port, up=True, timeout=15)

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, up=False, timeout=15)
