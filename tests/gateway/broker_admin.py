"""Dropping a client's connection from the broker side (RabbitMQ management API), for fault tests."""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
import urllib.request
from typing import Any

MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")


def _request(method: str, path: str) -> Any:
    request = urllib.request.Request(f"{MANAGEMENT_URL}/api/{path}", method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def close_connection(connection_name: str) -> bool:
    """Close the connection whose client named itself ``connection_name``; False if not listed (yet)."""
    for connection in _request("GET", "connections"):
        if connection.get("client_properties", {}).get("connection_name") == connection_name:
            _request("DELETE", f"connections/{urllib.parse.quote(connection['name'], safe='')}")
            return True
    return False
