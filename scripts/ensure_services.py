"""Make sure RabbitMQ (with its management UI) and Redis answer, starting local ones if needed.

Uses the servers reachable at RABBITMQ_URL / REDIS_URL. Where none answers and
the server is installed on this machine, it starts a local one. Otherwise it
stops with a message naming both ways to get one. Standard library only: it
runs before the virtual environment exists.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit

# RABBITMQ_URL may list a cluster's nodes, comma-separated: the first one stands for the cluster here.
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/").split(",")[0].strip()
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
MANAGEMENT_PORT = int(os.environ.get("RABBITMQ_MANAGEMENT_PORT", "15672"))
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/tmp",
    "--logfile",
    "/tmp/redis-serving.log",
]


def say(message: str) -> None:
    print(f"[services] {message}", flush=True)


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(host, port):
            return True
        time.sleep(0.5)
    return False


def give_up(what: str, url: str, package: str) -> None:
    sys.exit(
        f"[services] error: no {what} answers at {url}, and none is installed here to start.\n"
        f"  Either point {what.upper().replace(' ', '_')}_URL at a running server, or install one:\n"
        f"  - Debian/Ubuntu: apt-get install {package}\n"
        f"  - Docker: docker compose up -d {package.split('-')[0]}"
    )


def ensure_redis() -> None:
    parts = urlsplit(REDIS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if answers(host, port):
        say(f"redis answers at {host}:{port}")
        return
    if host not in LOCAL_HOSTS or not shutil.which("redis-server"):
        give_up("redis", REDIS_URL, "redis-server")
    say("starting a local redis-server")
    subprocess.run(REDIS_START, check=True)
    if not wait_for(host, port, 15):
        sys.exit("[services] error: redis-server was started but does not answer; see /tmp/redis-serving.log")


def ensure_rabbitmq() -> None:
    parts = urlsplit(RABBITMQ_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if answers(host, port):
        say(f"rabbitmq answers at {host}:{port}")
    else:
        if host not in LOCAL_HOSTS or not shutil.which("rabbitmq-server"):
            give_up("rabbitmq", RABBITMQ_URL, "rabbitmq-server")
        say("starting a local rabbitmq-server (this takes a few seconds)")
        subprocess.run(["rabbitmq-server", "-detached"], check=True)
        if not wait_for(host, port, 90):
            sys.exit("[services] error: rabbitmq-server was started but does not answer on AMQP")
    ensure_management(host, parts.username or "guest", parts.password or "guest")


def ensure_management(host: str, user: str, password: str) -> None:
    """The management UI and HTTP API (tests read consumer counts from it)."""
    if not answers(host, MANAGEMENT_PORT):
        if host not in LOCAL_HOSTS or not shutil.which("rabbitmq-plugins"):
            say(
                f"warning: the management UI does not answer on {host}:{MANAGEMENT_PORT}; "
                "enable the rabbitmq_management plugin on that broker"
            )
            return
        say("enabling the rabbitmq_management plugin (offline)")
        subprocess.run(
            ["rabbitmq-plugins", "enable", "rabbitmq_management"], check=True, stdout=subprocess.DEVNULL
        )
    url = f"http://{host}:{MANAGEMENT_PORT}/api/overview"
    request = urllib.request.Request(url)
    token = f"{user}:{password}".encode()

    request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    say(f"management UI at http://{host}:{MANAGEMENT_PORT}/ answers")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"[services] error: the management API at {url} does not answer")
        time.sleep(1)


if __name__ == "__main__":
    ensure_redis()
    ensure_rabbitmq()
