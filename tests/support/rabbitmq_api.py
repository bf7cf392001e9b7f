"""A small client of RabbitMQ's management HTTP API, for assertions on queues and consumers."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
USER = os.environ.get("RABBITMQ_MANAGEMENT_USER", "guest")
PASSWORD = os.environ.get("RABBITMQ_MANAGEMENT_PASSWORD", "guest")


def _request(method: str, path: str) -> Any:
    request = urllib.request.Request(f"{MANAGEMENT_URL}/api/{path}", method=method)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def _queue_path(name: str) -> str:
    return f"queues/%2F/{urllib.parse.quote(name, safe='')}"


def queue(name: str) -> dict[str, Any]:
    """The management API's view of a queue (consumers, messages, messages_unacknowledged, ...)."""
    return _request("GET", _queue_path(name))


def consumers(name: str) -> list[dict[str, Any]]:
    """The consumers of one queue, each with its channel details."""
    return [c for c in _request("GET", "consumers/%2F") if c["queue"]["name"] == name]


def wait_for(predicate, timeout: float = 30, interval: float = 0.5, what: str = "condition") -> Any:
    """Poll the API until predicate() returns something truthy (its stats lag by ~1-5 s)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (urllib.error.URLError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"management API: no {what} after {timeout} s (last: {last!r})")


def delete_queue(name: str) -> None:
    try:
        _request("DELETE", _queue_path(name))
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


def list_queues(prefix: str) -> list[str]:
    return [q["name"] for q in _request("GET", "queues/%2F?columns=name") if q["name"].startswith(prefix)]
