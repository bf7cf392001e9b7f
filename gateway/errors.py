"""Errors a request can end in: plain exceptions, each with its HTTP status.

Every failure the gateway reports is a :class:`GatewayError` carrying its HTTP
status and a message written for a human. The services raise them without
knowing HTTP; :mod:`gateway.middleware` renders them (the contract's JSON error
body, the page, or a protocol's own shape).
"""

from __future__ import annotations

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
