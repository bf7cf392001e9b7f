"""`make run`'s supervisor (scripts/run_stack.py -> supervisord): real processes, real broker.

A worker killed with SIGKILL under load is restarted within seconds while the
gateway and the other worker keep serving; the jobs it held are redelivered by
RabbitMQ and answered. A worker that cannot start is retried a few times, then
given up and reported as a crash loop, and the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack_events import Relay
from tests.support import rabbitmq_api
from tests.support.load import run_load
from tests.support.metrics import scrape, total, wait_for_worker_jobs
from tests.support.processes import ServiceProcess, free_port, http_ok, service_env

RUNNING_RE = re.compile(r"^\[run\] (?P<name>[\w-]+) running \(pid (?P<pid>\d+)\)$", re.MULTILINE)


class Stack:
    """scripts/run_stack.py as `make run` starts it, on the test's queue, cache and ports."""

    def __init__(self, env: dict[str, object], tmp_path: Path, workers: int, *extra: str) -> None:
        self.first_metrics_port = free_port()
        self.env = {**env, "WORKER_METRICS_PORT": self.first_metrics_port}
        self.base_url = f"http://127.0.0.1:{env['PORT']}"
        self.process = ServiceProcess(
            "run_stack",
            [sys.executable, "scripts/run_stack.py", "--workers", str(workers), *extra],
            service_env(self.env),
            tmp_path / "run_stack.log",
        )

    def pids(self, name: str) -> list[int]:
        """Every pid the supervisor reported for ``name``, in order (one per start)."""
        return [int(m["pid"]) for m in RUNNING_RE.finditer(self.process.log_text()) if m["name"] == name]

    def ready_count(self, name: str) -> int:
        return len(re.findall(rf"^{name} +\| .* worker ready", self.process.log_text(), re.MULTILINE))

    def wait_for_pids(self, name: str, count: int, timeout: float = 60) -> list[int]:
        self.process.wait_until(lambda: len(self.pids(name)) >= count, timeout, f"{name} running #{count}")
        return self.pids(name)

    def stop(self) -> int:
        """Ctrl-C: everything stops cleanly; returns the supervisor's exit code."""
        if self.process.proc.poll() is None:
            self.process.proc.send_signal(signal.SIGINT)
        try:
            return self.process.proc.wait(60)
        finally:
            self.process.kill()


@pytest.fixture
def stack(stack_env: dict[str, object], tmp_path: Path) -> Iterator[callable]:
    started: list[Stack] = []

    def start(workers: int, *extra: str, **env: object) -> Stack:
        one = Stack({**stack_env, **env}, tmp_path, workers, *extra)
        started.append(one)
        return one

    yield start
    for one in started:
        one.stop()


def in_hand(metrics_port: int) -> float:
    return total(scrape(f"http://127.0.0.1:{metrics_port}/metrics"), "classifier_jobs_in_hand")


async def test_worker_killed_under_make_run_is_restarted_and_nothing_is_lost(
    stack, queue_name, distinct_jpegs
):
    run = stack(2)
    run.process.wait_until(lambda: http_ok(f"{run.base_url}/health/ready"), 90, "a ready gateway")
    rabbitmq_api.wait_for(lambda: rabbitmq_api.queue(queue_name)["consumers"] == 2, what="2 consumers")
    [doomed] = run.wait_for_pids("worker-1", 1)
    [gateway_pid] = run.pids("gateway")

    requests = 128
    load = asyncio.create_task(
        run_load(
            f"{run.base_url}/predict",
            distinct_jpegs,
            concurrency=16,
            deadline_s=15,
            total=requests,
            unique=True,
        )
    )
    # Kill it while it holds jobs (unacknowledged: RabbitMQ must hand them to another worker).
    await asyncio.to_thread(wait_for_worker_jobs, run.first_metrics_port, 10)
    held = 0.0
    while not held and not load.done():
        held = await asyncio.to_thread(in_hand, run.first_metrics_port)
    os.kill(doomed, signal.SIGKILL)
    killed_at = time.monotonic()
    assert held > 0, "the worker held no job when it was killed: the test proved nothing"

    # Back = consuming again (it logs "worker ready" once it consumes).
    await asyncio.to_thread(
        run.process.wait_until, lambda: run.ready_count("worker-1") == 2, 30, "worker-1 ready again"
    )
    back_after = time.monotonic() - killed_at
    pids = await asyncio.to_thread(run.wait_for_pids, "worker-1", 2, 30)
    result = await load
    print(
        f"\n[supervisor] kill -9 worker-1 holding {held:.0f} jobs: {result.summary()}; "
        f"worker-1 consuming again after {back_after:.1f} s"
    )

    assert not result.errors and result.hung == 0, result.summary()
    assert result.statuses[200] == requests, result.summary()  # the held jobs were answered too
    assert pids[1] != doomed and back_after < 15, back_after
    assert "worker-1 exited unexpectedly" in run.process.log_text()
    # The others kept serving: neither the gateway nor worker-2 was restarted.
    assert run.pids("gateway") == [gateway_pid] and len(run.pids("worker-2")) == 1
    rabbitmq_api.wait_for(lambda: rabbitmq_api.queue(queue_name)["consumers"] == 2, what="2 consumers again")
    assert http_ok(f"http://127.0.0.1:{run.first_metrics_port}/metrics")  # the new worker-1

    # The gateway is supervised too: killed, it is back and serving on the same port.
    os.kill(gateway_pid, signal.SIGKILL)
    assert run.wait_for_pids("gateway", 2, 30)[1] != gateway_pid
    run.process.wait_until(lambda: http_ok(f"{run.base_url}/health/ready"), 30, "the gateway back")
    assert len(run.pids("worker-2")) == 1
    assert run.stop() == 0, run.process.log_tail()
    assert "all jobs in hand answered" in run.process.log_text()


def test_crash_loop_is_capped_and_reported_while_the_gateway_serves(stack):
    # MAX_BATCH=0 is refused by the worker at start-up (exit 2): every start fails at once.
    run = stack(1, "--start-retries", "1", MAX_BATCH="0")
    run.process.wait_for_log("CRASH LOOP: worker-1", timeout=60)
    log = run.process.log_text()
    spawned = log.count("spawned: 'worker-1'")
    # At most: a first start that outlived START_SECS (a slow import), then 1 + one retry after a back-off.
    assert 2 <= spawned <= 3, log
    assert "did not stay up (attempt 1): retrying after a back-off" in log
    assert "MAX_BATCH must be >= 1" in log  # the worker's own reason is shown, prefixed
    assert http_ok(f"{run.base_url}/health/live")
    time.sleep(1.5)  # given up for good: no further start
    assert run.process.log_text().count("spawned: 'worker-1'") == spawned
    assert run.process.proc.poll() is None and http_ok(f"{run.base_url}/health/live")
    assert run.stop() == 0, run.process.log_tail()
    assert "[run] stopped" in run.process.log_text()


def test_listener_prefixes_lines_split_across_events():
    out = io.BytesIO()
    relay = Relay(out)
    relay.handle(
        "PROCESS_LOG_STDOUT", b"processname:worker-1 groupname:workers pid:7 channel:stdout\nfirst li"
    )
    relay.handle("PROCESS_LOG_STDOUT", b"processname:gateway groupname:gateway pid:8 channel:stdout\nup\n")
    relay.handle(
        "PROCESS_LOG_STDOUT",
        "processname:worker-1 groupname:workers pid:7 channel:stdout\nne\nsecond é\nthi".encode(),
    )
    relay.handle(
        "PROCESS_STATE_EXITED", b"processname:worker-1 groupname:workers from_state:RUNNING expected:0 pid:7"
    )
    assert out.getvalue().decode().splitlines() == [
        "gateway  | up",
        "worker-1 | first line",
        "worker-1 | second é",
        "worker-1 | thi",
        "[run] worker-1 exited unexpectedly (pid 7): restarting it",
    ]
