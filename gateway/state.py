"""The per-application services, reachable from handlers as ``request.app[GATEWAY]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from common.settings import Settings

if TYPE_CHECKING:
    from gateway.admission import Admission
    from gateway.cache import ResultCache
    from gateway.feedback import FeedbackLog
    from gateway.metrics import GatewayMetrics
    from gateway.readiness import ReadinessProbe
    from gateway.rpc import RpcClient
    from gateway.service import Predictor
    from gateway.store import UploadStore
    from gateway.uploads import ReadLimits


@dataclass(slots=True)
class Gateway:
    """Everything a handler needs; built by ``init_app``, connections opened in its cleanup context."""

    settings: Settings
    metrics: GatewayMetrics
    store: UploadStore
    feedback: FeedbackLog
    cache: ResultCache
    rpc: RpcClient
    predictor: Predictor
    admission: Admission
    readiness: ReadinessProbe
    # What a client must respect while its body arrives (gateway.receive).
    read_limits: ReadLimits
    shutting_down: bool = field(default=False)


GATEWAY = web.AppKey("gateway", Gateway)
