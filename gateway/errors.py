"""Errors a request can end in, and their translation into a JSON body or the page.

Every failure the gateway reports is a :class:`GatewayError` carrying its HTTP
status and a message written for a human. The error middleware turns it (and
aiohttp's own HTTP exceptions, e.g. an unknown route) into the contract's error
body, or into the page for handlers marked with :func:`html_errors`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from gateway.pages import render_page

# How long a client should wait before retrying when we shed load (seconds).
RETRY_AFTER_BUSY_S = 1
# When the broker is down: roughly one robust-reconnect interval.
RETRY_AFTER_BROKER_DOWN_S = 5


class GatewayError(Exception):
    """A request failed; ``status`` is its HTTP status, ``message`` says why, for a human."""

    status: int = 500
    # Close the connection after the answer (the client is not worth keeping).
    close_connection: bool = False

    def __init__(
        self, message: str, *, retry_after: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self._extra_headers = headers or {}

    @property
    def headers(self) -> dict[str, str]:
        retry = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return {**self._extra_headers, **retry}


class BadRequest(GatewayError):
    """The request is malformed or incomplete (no file, empty file, bad parameter)."""

    status = 400


class NotFound(GatewayError):
    """The thing asked for does not exist."""

    status = 404


class RequestTimeout(GatewayError):
    """The upload's body did not arrive within its deadline, or too slowly."""

    status = 408
    close_connection = True


class PayloadTooLarge(GatewayError):
    """The upload is over MAX_UPLOAD_MB."""

    status = 413


class UnsupportedMediaType(GatewayError):
    """The upload's content is not an image type we accept."""

    status = 415


class UnprocessableImage(GatewayError):
    """The upload looks like an image but the worker could not decode it."""

    status = 422


class InternalError(GatewayError):
    """A fault of ours; the message never leaks internals."""

    status = 500


class BadGateway(GatewayError):
    """A worker failed while classifying, or answered outside the contract."""

    status = 502


class ServiceUnavailable(GatewayError):
    """We cannot take the job now (queue full, broker down, too busy); retry later."""

    status = 503

    def __init__(self, message: str, *, retry_after: int | None = RETRY_AFTER_BUSY_S) -> None:
        super().__init__(message, retry_after=retry_after)


class GatewayTimeout(GatewayError):
    """No answer before the request's deadline."""

    status = 504


def error_body(message: str) -> dict[str, Any]:
    """The contract's error body: the seed's keys keep their meaning, ``error`` says why."""
    return {"success": False, "prediction": None, "score": None, "error": message}


HtmlPredicate = Callable[[web.Request], bool]
ErrorBody = Callable[[str], dict[str, Any]]
_H = TypeVar("_H", bound=Callable[..., Any])
_HTML_ERRORS_ATTR = "__gateway_html_errors__"
_ERROR_BODY_ATTR = "__gateway_error_body__"


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
