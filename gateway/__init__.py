"""The gateway: upload page, REST API, feedback CSV, health and metrics; a RabbitMQ RPC client.

``init_app(settings)`` builds the aiohttp application; ``python -m gateway`` serves it.
The gateway never imports onnxruntime, TensorFlow or torch: workers classify.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from common.settings import Settings
from gateway.cache import ResultCache
from gateway.feedback import FeedbackLog
from gateway.metrics import GatewayMetrics
from gateway.middleware import MIDDLEWARES, security_headers
from gateway.pages import setup_templates
from gateway.routes import setup_routes
from gateway.rpc import RpcClient
from gateway.service import Predictor
from gateway.state import GATEWAY, Gateway
from gateway.uploads import UploadStore

__all__ = ["init_app"]

log = logging.getLogger(__name__)

# After a 413 the rest of the body is discarded for at most this long (so the client
# still reads the response), then the connection is closed.
LINGERING_TIME_S = 2.0
# How long start-up waits for the broker before serving anyway (not ready, 503s).
BROKER_WAIT_S = 5.0


def init_app(settings: Settings) -> web.Application:
    """Build the application; RabbitMQ and Redis connect in its cleanup context."""
    app = web.Application(middlewares=MIDDLEWARES, handler_args={"lingering_time": LINGERING_TIME_S})
    metrics = GatewayMetrics()
    store = UploadStore(settings.upload_dir)
    cache = ResultCache(settings.redis_url, settings.queue_name)
    rpc = RpcClient(settings)
    app[GATEWAY] = Gateway(
        settings=settings,
        metrics=metrics,
        store=store,
        feedback=FeedbackLog(settings.feedback_csv),
        cache=cache,
        rpc=rpc,
        predictor=Predictor(settings, store, cache, rpc, metrics),
    )
    setup_templates(app)
    setup_routes(app)
    app.cleanup_ctx.append(_connections)
    app.on_shutdown.append(_stop_being_ready)
    app.on_response_prepare.append(security_headers)
    return app


async def _connections(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.rpc.start(wait_s=BROKER_WAIT_S)
    if not gateway.rpc.connected:
        log.warning("RabbitMQ not reachable yet; serving 503 for predictions until it is")
    yield
    await gateway.rpc.close()
    await gateway.cache.close()


async def _stop_being_ready(app: web.Application) -> None:
    """First step of a graceful stop: readiness turns 503; requests in flight still finish."""
    app[GATEWAY].shutting_down = True
    log.info("shutting down: no longer ready; finishing requests in flight")
