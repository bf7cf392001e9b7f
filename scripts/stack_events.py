"""supervisord event listener of `make run`: the children's logs prefixed by name, and their fate.

supervisord (scripts/run_stack.py writes its configuration) runs the gateway and
the workers; this listener receives their output as PROCESS_LOG events and their
state changes as PROCESS_STATE events, and writes to its stderr, which supervisord
sends to the terminal:

    worker-1 | 2026-12-02 05:00:01 INFO classifier: worker ready ...
    [run] worker-1 exited unexpectedly (pid 4242): restarting it
    [run] worker-1 running (pid 4301)
    [run] CRASH LOOP: worker-1 failed to start 4 times in a row; gave up on it ...

The event protocol is spoken on the binary streams: a header line with ``len``
(in bytes), then exactly that many bytes; supervisor.childutils reads text,
which miscounts a payload holding non-ASCII log lines.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

NAME_WIDTH = 9


def parse_tokens(line: bytes) -> dict[str, str]:
    """``a:1 b:2`` -> {"a": "1", "b": "2"} (the format of event headers and state payloads)."""
    return dict(token.split(":", 1) for token in line.decode("utf-8", "replace").split() if ":" in token)


class Relay:
    """Turns events into terminal lines; keeps each process's unfinished last line."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._partial: dict[str, bytes] = {}

    def say(self, text: str) -> None:
        self.out.write(f"[run] {text}\n".encode())
        self.out.flush()

    def handle(self, event: str, payload: bytes) -> None:
        header_line, _, data = payload.partition(b"\n")
        info = parse_tokens(header_line)
        name = info.get("processname", "?")
        if event.startswith("PROCESS_LOG"):
            self._log(name, data)
        elif event == "PROCESS_STATE_RUNNING":
            self.say(f"{name} running (pid {info.get('pid', '?')})")
        elif event == "PROCESS_STATE_EXITED" and info.get("expected") == "0":
            self._flush(name)
            self.say(f"{name} exited unexpectedly (pid {info.get('pid', '?')}): restarting it")
        elif event == "PROCESS_STATE_BACKOFF":
            self.say(f"{name} did not stay up (attempt {info.get('tries', '?')}): retrying after a back-off")
        elif event == "PROCESS_STATE_FATAL":
            self._flush(name)
            self.say(
                f"CRASH LOOP: {name} keeps failing to start; gave up on it (see its log above). "
                "The other processes keep serving; after fixing the cause: "
                f"supervisorctl -c {os.environ.get('RUN_STACK_CONF', 'CONF')} start {name}"
            )

    def _log(self, name: str, data: bytes) -> None:
        data = self._partial.pop(name, b"") + data
        *lines, rest = data.split(b"\n")
        prefix = f"{name:<{NAME_WIDTH}}| ".encode()
        if lines:
            self.out.write(b"".join(prefix + line + b"\n" for line in lines))
            self.out.flush()
        if rest:
            self._partial[name] = rest

    def _flush(self, name: str) -> None:
        rest = self._partial.pop(name, b"")
        if rest:
            self._log(name, rest + b"\n")


def serve(stdin: BinaryIO, stdout: BinaryIO, relay: Relay) -> None:
    """The listener loop: READY, read one event, handle it, RESULT OK; until stdin closes."""
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return
        headers = parse_tokens(header)
        payload = stdin.read(int(headers.get("len", "0")))
        try:
            relay.handle(headers.get("eventname", ""), payload)
        except Exception as exc:  # noqa: BLE001 - never stall supervisord on one odd event
            relay.say(f"listener: could not handle {headers.get('eventname')}: {exc!r}")
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer, Relay(sys.stderr.buffer))
