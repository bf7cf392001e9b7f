"""The gateway: upload page, REST API, feedback CSV, health and metrics; a RabbitMQ RPC client.

``init_app(settings)`` builds the aiohttp application; ``python -m gateway`` serves it.
The gateway never imports onnxruntime, TensorFlow or torch: workers classify.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from common.contract import MAX_JOBS_IN_A_BATCH
from common.settings import Settings
from gateway.admission import Admission
from gateway.cache import ResultCache
from gateway.feedback import FeedbackLog
from gateway.metrics import GatewayMetrics
from gateway.middleware import MIDDLEWARES, ConnectionRotation, security_headers
from gateway.pages import setup_templates
from gateway.readiness import ReadinessProbe
from gateway.routes import setup_routes
from gateway.rpc import MESSAGE_OVERHEAD_BYTES, RpcClient
from gateway.service import IMAGE_TRANSPORTS, Predictor
from gateway.state import GATEWAY, Gateway
from gateway.store import UploadStore
from gateway.uploads import ReadLimits

__all__ = ["ConfigurationError", "check_settings", "init_app"]

log = logging.getLogger(__name__)

# After a 413 the rest of the body is discarded for at most this long (so the client
# still reads the response), then the connection is closed.
LINGERING_TIME_S = 2.0
# How long start-up waits for the broker before serving anyway (not ready, 503s).
BROKER_WAIT_S = 5.0


class ConfigurationError(Exception):
    """Settings the gateway must not start with; the message says what to change."""


def check_settings(settings: Settings) -> None:
    """Refuse settings that would break at run time, e.g. uploads the broker cannot carry."""
    if settings.gateway_processes < 1:
        raise ConfigurationError(f"GATEWAY_PROCESSES={settings.gateway_processes} must be at least 1.")
    if settings.keepalive_max_requests < 0:
        raise ConfigurationError(
            f"KEEPALIVE_MAX_REQUESTS={settings.keepalive_max_requests} must be 0 (no limit) or more."
        )
    if not 1 <= settings.max_jobs_per_message <= MAX_JOBS_IN_A_BATCH:
        raise ConfigurationError(
            f"MAX_JOBS_PER_MESSAGE={settings.max_jobs_per_message} must be 1 (a job a message) to "
            f"{MAX_JOBS_IN_A_BATCH}."
        )
    if settings.image_transport not in IMAGE_TRANSPORTS:
        raise ConfigurationError(
            f"IMAGE_TRANSPORT={settings.image_transport!r} must be one of {', '.join(IMAGE_TRANSPORTS)}."
        )
    message_bytes = settings.max_upload_bytes + MESSAGE_OVERHEAD_BYTES
    broker_bytes = int(settings.broker_max_message_mb * 1024 * 1024)
    if message_bytes > broker_bytes:
        raise ConfigurationError(
            f"MAX_UPLOAD_MB={settings.max_upload_mb:g} does not fit the broker's maximum message size "
            f"(BROKER_MAX_MESSAGE_MB={settings.broker_max_message_mb:g}, RabbitMQ's max_message_size; "
            f"a job is the upload plus up to {MESSAGE_OVERHEAD_BYTES // 1024} KiB of properties): lower "
            "MAX_UPLOAD_MB, or raise max_message_size in rabbitmq.conf and BROKER_MAX_MESSAGE_MB with it."
        )


def init_app(settings: Settings) -> web.Application:
    """Build the application; RabbitMQ and Redis connect in its cleanup context."""
    check_settings(settings)
    # auto_decompress off: a compressed request body is refused (415), never inflated.
    app = web.Application(
        middlewares=MIDDLEWARES,
        handler_args={"lingering_time": LINGERING_TIME_S, "auto_decompress": False},
    )
    metrics = GatewayMetrics()
    store = UploadStore(
        settings.upload_dir, quota_bytes=int(settings.upload_store_mb * 1024 * 1024), metrics=metrics
    )
    cache = ResultCache(settings.redis_url, settings.queue_name)
    rpc = RpcClient(settings, on_published=metrics.jobs_per_message.observe)
    metrics.process.info({"pid": str(os.getpid()), "reply_queue": rpc.reply_queue})
    admission = Admission(settings, metrics)
    app[GATEWAY] = Gateway(
        settings=settings,
        metrics=metrics,
        store=store,
        feedback=FeedbackLog(settings.feedback_csv),
        cache=cache,
        rpc=rpc,
        predictor=Predictor(settings, store, cache, rpc, metrics, admission),
        admission=admission,
        readiness=ReadinessProbe(rpc, cache, metrics),
        read_limits=ReadLimits.from_settings(settings),
    )
    setup_templates(app)
    setup_routes(app)
    app.cleanup_ctx.append(_connections)
    app.on_shutdown.append(_stop_being_ready)
    app.on_response_prepare.append(security_headers)
    app.on_response_prepare.append(ConnectionRotation(settings.keepalive_max_requests))
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
