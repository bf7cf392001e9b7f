"""A small client of RabbitMQ's management HTTP API, for assertions on queues and consumers."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any


class ManagementAPI:
    """The management API of one broker (default vhost)."""

    def __init__(self, url: str, user: str = "guest", password: str = "guest") -> None:
        self.url = url.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method)
        request.add_header("Authorization", self._auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    @staticmethod
    def _queue_path(name: str) -> str:
        return f"queues/%2F/{urllib.parse.quote(name, safe='')}"

    def queue(self, name: str) -> dict[str, Any]:
        """The API's view of a queue: consumers, messages, messages_unacknowledged, ..."""
        return self._request("GET", self._queue_path(name))

    def delete_queue(self, name: str) -> None:
        try:
            self._request("DELETE", self._queue_path(name))
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes: name, running, ..."""
        return self._request("GET", "nodes")

    def list_queues(self, prefix: str) -> list[str]:
        names = [q["name"] for q in self._request("GET", "queues/%2F?columns=name")]
        return [name for name in names if name.startswith(prefix)]

    def close_connection(self, connection_name: str) -> bool:
        """Close, from the broker side, the connection whose client named itself ``connection_name``;
        False if it is not listed (yet)."""
        for connection in self._request("GET", "connections"):
            if connection.get("client_properties", {}).get("connection_name") == connection_name:
                self._request("DELETE", f"connections/{urllib.parse.quote(connection['name'], safe='')}")
                return True
        return False

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        """Poll until predicate() is truthy; the API's statistics lag by a few seconds."""
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
            time.sleep(0.5)
        raise AssertionError(f"management API: no {what} after {timeout} s (last: {last!r})")

    def wait_until_drained(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until the queue holds no ready and no unacknowledged message."""
        return self.wait_for(
            lambda: (q := self.queue(name))["messages"] == 0 and q["messages_unacknowledged"] == 0 and q,
            timeout,
            f"empty queue {name}",
        )


DEFAULT = ManagementAPI(
    os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672"),
    os.environ.get("RABBITMQ_MANAGEMENT_USER", "guest"),
    os.environ.get("RABBITMQ_MANAGEMENT_PASSWORD", "guest"),
)
queue = DEFAULT.queue
delete_queue = DEFAULT.delete_queue
list_queues = DEFAULT.list_queues
wait_for = DEFAULT.wait_for
wait_until_drained = DEFAULT.wait_until_drained
close_connection = DEFAULT.close_connection
