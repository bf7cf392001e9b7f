"""Hostile HTTP clients for the fault tests, on raw sockets (client libraries refuse to misbehave).

``LivenessWatch`` polls ``/health/live`` from a thread of its own while an attack
runs, so a frozen event loop shows up as slow answers, not as a slow test client.
"""

from __future__ import annotations

import gzip
import http.client
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

EMPTY_PART = b"--b\r\n\r\n\r\n"  # one empty multipart part: a boundary, no headers, no content


def empty_parts(total_bytes: int) -> bytes:
    """``--b\\r\\n\\r\\n\\r\\n`` repeated to ``total_bytes``: nothing but multipart framing."""
    return EMPTY_PART * (total_bytes // len(EMPTY_PART))


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


@dataclass
class LivenessWatch:
    """GET /health/live every ``interval_s`` from a thread; latencies in seconds (a failure counts as 60)."""

    port: int
    interval_s: float = 0.02
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LivenessWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=70)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                connection.request("GET", "/health/live")
                ok = connection.getresponse().status == 200
                connection.close()
            except OSError:
                ok = False
            self.latencies.append(time.perf_counter() - started if ok else 60.0)
            self.failures += not ok
            self._stop.wait(self.interval_s)

    @property
    def worst_s(self) -> float:
        return max(self.latencies, default=0.0)

    def summary(self) -> str:
        if not self.latencies:
            return "no probe answered"
        ordered = sorted(self.latencies)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        return (
            f"{len(ordered)} probes, median {statistics.median(ordered) * 1000:.1f} ms, "
            f"p95 {p95 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms, failures {self.failures}"
        )


def _status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


@dataclass
class AttackResult:
    status: int | None  # None: the connection ended without an answer
    sent_bytes: int
    seconds: float


def post_raw(
    port: int,
    body: bytes,
    headers: dict[str, str],
    *,
    path: str = "/predict",
    chunked: bool = False,
    piece: int = 64 * 1024,
    timeout_s: float = 60.0,
) -> AttackResult:
    """POST ``body`` as fast as the server takes it; stop sending the moment it answers.

    Returns the answer's status, the bytes sent before it came, and how long it took.
    """
    started = time.perf_counter()
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    pending = memoryview(("\r\n".join(head) + "\r\n\r\n").encode())
    pieces = _pieces(body, piece, chunked)
    sent = 0
    response = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for _, events in selector.select(timeout=max(deadline - time.monotonic(), 0)):
                if events & selectors.EVENT_READ:
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        return AttackResult(_status_of(response), sent, time.perf_counter() - started)
                    response += data
                    if b"\r\n\r\n" in response:  # the answer's head is in: that is all we need
                        return AttackResult(_status_of(response), sent, time.perf_counter() - started)
                    selector.modify(sock, selectors.EVENT_READ)
                elif events & selectors.EVENT_WRITE:
                    if not pending:
                        nxt = next(pieces, None)
                        if nxt is None:
                            selector.modify(sock, selectors.EVENT_READ)
                            continue
                        pending = memoryview(nxt)
                    try:
                        n = sock.send(pending)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:  # the server closed its side: read what it said
                        selector.modify(sock, selectors.EVENT_READ)
                        continue
                    pending = pending[n:]
                    sent += n
        return AttackResult(None, sent, time.perf_counter() - started)
    finally:
        selector.close()
        sock.close()


def _pieces(body: bytes, piece: int, chunked: bool) -> Iterator[bytes]:
    for start in range(0, len(body), piece):
        data = body[start : start + piece]
        yield (f"{len(data):x}\r\n".encode() + data + b"\r\n") if chunked else data
    if chunked:
        yield b"0\r\n\r\n"


def open_stalled_uploads(port: int, count: int, content_length: int = 9_000_000) -> list[socket.socket]:
    """``count`` connections that send an upload's headers and two bytes of it, then nothing."""
    request = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode() + b"\xff\xd8"
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        sockets.append(sock)
    return sockets


def statuses_of(sockets: list[socket.socket], timeout_s: float) -> list[int | None]:
    """The status each connection is answered with within ``timeout_s`` (None: no answer, still open)."""
    selector = selectors.DefaultSelector()
    received: dict[int, bytes] = {}
    done: dict[int, int | None] = {}
    for i, sock in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
        received[i] = b""
    deadline = time.monotonic() + timeout_s
    while len(done) < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(deadline - time.monotonic(), 0)):
            i = key.data
            try:
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            received[i] += data
            if not data or b"\r\n" in received[i]:
                done[i] = _status_of(received[i])
                selector.unregister(key.fileobj)
    selector.close()
    return [done.get(i) for i in range(len(sockets))]
