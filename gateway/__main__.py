"""``python -m gateway``: serve on HOST:PORT until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import logging
import os
import resource
import sys

import uvloop
from aiohttp import web

from common.settings import Settings
from gateway import ConfigurationError, init_app

# Connections the kernel may queue before we accept them (it caps this at net.core.somaxconn):
# at aiohttp's default of 128, a burst of clients sees dropped SYNs and one-second retries.
LISTEN_BACKLOG = 2048
# Beyond the request deadline, time to write the last answers before connections are cut.
SHUTDOWN_GRACE_S = 5.0


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    log = logging.getLogger("gateway")
    soft, hard = raise_open_files_limit()
    log.info("open files limit: %s (hard limit %s)", soft, hard)
    try:
        app = init_app(settings)
    except ConfigurationError as exc:
        log.critical("refusing to start: %s", exc)
        sys.exit(2)
    log.info(
        "gateway listening on http://%s:%d/ (queue %r, pid %d, one of %d process(es))",
        settings.host,
        settings.port,
        settings.queue_name,
        os.getpid(),
        settings.gateway_processes,
    )
    # run_app handles SIGTERM: stop accepting, on_shutdown (readiness 503),
    # wait for requests in flight up to shutdown_timeout, then cleanup_ctx.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.request_timeout_s + SHUTDOWN_GRACE_S,
        print=None,
        backlog=LISTEN_BACKLOG,
        # Several gateway processes on one port (GATEWAY_PROCESSES, started by supervisord):
        # SO_REUSEPORT lets each bind it, and the kernel spreads new connections among them.
        reuse_port=settings.gateway_processes > 1,
        access_log=logging.getLogger("aiohttp.access"),
        # uvloop: the same asyncio, with its event loop and transports in C; less CPU per request.
        loop=uvloop.new_event_loop(),
    )


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each connection, even a stalled one, is a file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    return soft, hard


if __name__ == "__main__":
    main()
