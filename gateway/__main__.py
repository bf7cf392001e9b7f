"""``python -m gateway``: serve on HOST:PORT until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import logging

from aiohttp import web

from common.settings import Settings
from gateway import init_app

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
    app = init_app(settings)
    log.info(
        "gateway listening on http://%s:%d/ (queue %r)", settings.host, settings.port, settings.queue_name
    )
    # run_app handles SIGTERM: stop accepting, on_shutdown (readiness 503),
    # wait for requests in flight up to shutdown_timeout, then cleanup_ctx.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.request_timeout_s + SHUTDOWN_GRACE_S,
        print=None,
        access_log=logging.getLogger("aiohttp.access"),
    )


if __name__ == "__main__":
    main()
