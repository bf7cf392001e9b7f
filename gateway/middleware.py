"""Cross-cutting concerns: metrics, error rendering, the in-flight bound, security headers.

Errors are rendered here, next to the middleware that catches them: the
contract's JSON error body, the page for handlers marked :func:`html_errors`, or
a protocol's own body for handlers marked :func:`error_body_shape`.

Order (outermost first): metrics sees the final status of every request,
errors turns exceptions into responses, the in-flight bound sheds load before
a prediction reads its upload. Security headers are added to every response
in ``on_response_prepare``, which also covers static files and streamed bodies;
there too, :class:`ConnectionRotation` closes a keep-alive connection after
KEEPALIVE_MAX_REQUESTS answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import SystemRoute

from gateway.errors import GatewayError
from gateway.pages import render_page
from gateway.state import GATEWAY

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_H = TypeVar("_H", bound=Callable[..., Any])
_BOUNDED_ATTR = "__gateway_in_flight_bounded__"
_HTML_ERRORS_ATTR = "__gateway_html_errors__"
_ERROR_BODY_ATTR = "__gateway_error_body__"
HtmlPredicate = Callable[[web.Request], bool]
ErrorBody = Callable[[str], dict[str, Any]]

# The page: our own CSS and images only, no script at all, no framing, forms post to us only.
PAGE_CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Everything else (JSON, uploads, CSS): nothing may run or load, even if opened directly.
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


# aiohttp's own errors (routing, body size) in words for a human.
_HTTP_MESSAGES = {
    404: "Not found: there is nothing at this address.",
    405: "Method not allowed on this address.",
    413: "The request body is too large.",
}


def in_flight_bounded(handler: _H) -> _H:
    """Mark a handler that counts against MAX_IN_FLIGHT for its whole run.

    The upload routes do not use it: they take a receiving slot while the body arrives
    (gateway.receive) and a MAX_IN_FLIGHT slot only once it is in (gateway.admission).
    """
    setattr(handler, _BOUNDED_ATTR, True)
    return handler


def error_body(message: str) -> dict[str, Any]:
    """The contract's error body: the seed's keys keep their meaning, ``error`` says why."""
    return {"success": False, "prediction": None, "score": None, "error": message}


def error_body_shape(shape: ErrorBody) -> Callable[[_H], _H]:
    """Mark a handler whose JSON errors take another shape (a protocol's own, e.g. ``{"error"}``)."""

    def mark(handler: _H) -> _H:
        setattr(handler, _ERROR_BODY_ATTR, shape)
        return handler

    return mark


def html_errors(predicate: HtmlPredicate = lambda request: True) -> Callable[[_H], _H]:
    """Mark a handler whose errors are shown on the page (when ``predicate(request)``)."""

    def mark(handler: _H) -> _H:
        setattr(handler, _HTML_ERRORS_ATTR, predicate)
        return handler

    return mark


def wants_html(request: web.Request) -> bool:
    """Whether this request's errors are rendered as the page rather than JSON."""
    match_info = request.match_info
    handler = getattr(match_info, "handler", None) if match_info is not None else None
    predicate: HtmlPredicate | None = getattr(handler, _HTML_ERRORS_ATTR, None)
    return predicate is not None and predicate(request)


def error_response(request: web.Request, status: int, message: str, headers: dict[str, str]) -> web.Response:
    """The response for a failed request: the page with the message, or the JSON error body."""
    if wants_html(request):
        return render_page(request, {"error": message}, status=status, headers=headers)
    match_info = request.match_info
    handler = getattr(match_info, "handler", None) if match_info is not None else None
    shape: ErrorBody = getattr(handler, _ERROR_BODY_ATTR, error_body)
    return web.json_response(shape(message), status=status, headers=headers)


def route_label(request: web.Request) -> str:
    """A bounded label for metrics: the route's pattern, never the raw path."""
    route = request.match_info.route
    if isinstance(route, SystemRoute) or route.resource is None:
        return "unmatched"
    return route.resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[GATEWAY].metrics
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        label = route_label(request)
        metrics.requests.labels(label, request.method, str(status)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - started)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the contract's error body (or the page): never a bare 500 page."""
    try:
        return await handler(request)
    except GatewayError as exc:
        response = error_response(request, exc.status, exc.message, exc.headers)
        if exc.close_connection:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 304s pass through
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(request, exc.status, _HTTP_MESSAGES.get(exc.status, exc.reason), headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(request, 500, "Internal error in the gateway; it has been logged.", {})


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Beyond MAX_IN_FLIGHT predictions at once, answer 503 at once instead of queueing in memory."""
    if not getattr(request.match_info.handler, _BOUNDED_ATTR, False):
        return await handler(request)
    with request.app[GATEWAY].admission.waiting_slot():
        return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: nosniff everywhere, a strict CSP (tighter still off the page)."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    is_page = (response.content_type or "").startswith("text/html")
    headers.setdefault("Content-Security-Policy", PAGE_CSP if is_page else OTHER_CSP)
    if is_page:
        headers.setdefault("Cache-Control", "no-store")


class ConnectionRotation:
    """``on_response_prepare`` hook: a keep-alive connection is closed after ``max_requests`` answers.

    ``SO_REUSEPORT`` (several gateway processes on one port) and a Kubernetes Service spread
    *connections*, by a hash of their addresses: a client holding a few keep-alive connections may
    land them all on one process while another idles (perf/FINDINGS.md). A connection closed now and
    then is opened again and spread again; nginx's ``keepalive_requests`` does the same.
    """

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self._answered: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = weakref.WeakKeyDictionary()

    async def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        transport = request.transport
        if self.max_requests <= 0 or transport is None:
            return
        answered = self._answered.get(transport, 0) + 1
        if answered < self.max_requests:
            self._answered[transport] = answered
            return
        self._answered.pop(transport, None)
        # The headers were prepared before this hook: say it in them too (HTTP/1.1 clients).
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"


MIDDLEWARES = (metrics_middleware, error_middleware, in_flight_middleware)
