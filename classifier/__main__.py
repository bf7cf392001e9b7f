"""Entry point: ``python -m classifier [--model PATH] [--queue NAME] [--threads N] ...``.

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT: stop consuming, answer
and ack every job in hand, close), 2 for a bad configuration or model file.
A second SIGINT abandons the drain (unacked jobs go back to the queue); a
repeated SIGTERM does not (supervisors may send it to the whole process group).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import uvloop

from classifier import metrics
from classifier.cache import ResultCache
from classifier.config import parse_args
from classifier.model import Model, ModelError, int8_cpu_problem
from classifier.worker import Worker
from common.cpu import this_cpu
from common.settings import Settings

log = logging.getLogger("classifier")


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        model = Model(settings.model_path, threads=settings.ort_threads)
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    log.info(
        "model %s version %s: input %sx%s, resize %s, %d labels (%s)",
        model.info.name,
        model.version,
        *model.input_size,
        model.metadata.resize,
        len(model.metadata.labels),
        settings.model_path,
    )
    problem = int8_cpu_problem(model.metadata, this_cpu())
    if problem and settings.int8_on_saturating_cpu != "warn":
        log.error("refusing to serve: %s (INT8_ON_SATURATING_CPU=warn serves it anyway)", problem)
        return 2
    if problem:
        log.warning("SERVING A FILE THAT LOSES ACCURACY ON THIS CPU: %s", problem)
    model.warm_up(settings.max_batch)
    if settings.prefetch < settings.max_batch:
        log.warning(
            "PREFETCH=%d < MAX_BATCH=%d: batches can never fill", settings.prefetch, settings.max_batch
        )
    metrics.MODEL.info({"name": model.info.name, "version": model.version, "path": str(settings.model_path)})
    metrics.serve(settings.worker_metrics_port, settings.host)
    try:
        # uvloop: the same asyncio, with its event loop and transports in C; less CPU per job.
        uvloop.run(_serve(settings, model))
    except asyncio.CancelledError:
        log.warning("drain abandoned by a second signal")
        return 1
    log.info("worker stopped")
    return 0


async def _serve(settings: Settings, model: Model) -> None:
    worker = Worker(settings, model, ResultCache(settings.redis_url, settings.cache_ttl_s))
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_signal(signum: signal.Signals) -> None:
        if not worker.stopping:
            log.info("%s received", signum.name)
            worker.request_stop()
        elif signum is signal.SIGINT:  # Ctrl-C twice: a human who will not wait
            log.warning("SIGINT again: abandoning the drain; unacked jobs return to the queue")
            main_task.cancel()
        else:  # supervisors (and `timeout`) may deliver SIGTERM more than once: keep draining
            log.info("%s again: still draining", signum.name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await worker.run()


if __name__ == "__main__":
    sys.exit(main())
