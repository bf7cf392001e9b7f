"""The native path: `make run`'s stack with one worker, scaled to three without a restart.

The stack is scripts/run_stack.py (what `make run WORKERS=1` runs after setup);
the two extra workers are started as `make worker` starts them, by another
terminal or host that knows only the broker, Redis and the model file.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.support import rabbitmq_api
from tests.support.load import run_load
from tests.support.metrics import wait_for_worker_jobs, worker_jobs
from tests.support.processes import ServiceProcess, free_port, http_ok, service_env, start_worker


async def test_stack_scales_from_one_worker_to_three(stack_env, queue_name, distinct_jpegs, tmp_path: Path):
    first_metrics_port = free_port()
    env = {**stack_env, "WORKER_METRICS_PORT": first_metrics_port}
    stack = ServiceProcess(
        "run_stack",
        [sys.executable, "scripts/run_stack.py", "--workers", "1"],
        service_env(env),
        tmp_path / "run_stack.log",
    )
    extra: list[ServiceProcess] = []
    try:
        base_url = f"http://127.0.0.1:{env['PORT']}"
        stack.wait_until(lambda: http_ok(f"{base_url}/health/ready"), 90, "a ready gateway")
        stack.wait_for_log("page:")
        assert f"http://127.0.0.1:{env['PORT']}/" in stack.log_text()
        assert "RabbitMQ UI:" in stack.log_text()
        assert rabbitmq_api.wait_for(
            lambda: rabbitmq_api.queue(queue_name)["consumers"] == 1, what="1 consumer"
        )

        for i in range(2):
            port = free_port()
            worker = start_worker({**env, "WORKER_METRICS_PORT": port}, tmp_path, name=f"extra{i + 1}")
            worker.metrics_port = port  # type: ignore[attr-defined]
            extra.append(worker)
        assert rabbitmq_api.wait_for(
            lambda: rabbitmq_api.queue(queue_name)["consumers"] == 3, what="3 consumers"
        )

        result = await run_load(
            f"{base_url}/predict", distinct_jpegs, concurrency=12, deadline_s=15, total=150
        )
        assert result.statuses[200] == 150, result.summary()
        wait_for_worker_jobs(first_metrics_port, 1)
        jobs = [worker_jobs(first_metrics_port)] + [worker_jobs(w.metrics_port) for w in extra]  # type: ignore[attr-defined]
        print(f"\n[scaling] consumers 1 -> 3; jobs per worker under load: {jobs}")
        assert sum(jobs) == 150
        assert all(count > 0 for count in jobs), jobs
        # The stack's own worker logs through the supervisor, prefixed by its name.
        assert "worker-1 " in stack.log_text()
    finally:
        for worker in extra:
            worker.terminate()
        # Ctrl-C: the supervisor stops the gateway and its worker cleanly.
        stack.proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(stack.proc.wait, 40)
    assert code == 0, stack.log_tail()
    assert "stopped" in stack.log_text()
