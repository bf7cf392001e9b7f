"""Start, inspect, kill and stop a local three-node RabbitMQ cluster, beside the machine's own node.

    python3 scripts/rabbitmq_cluster.py start    # or `make cluster`; prints RABBITMQ_URL
    python3 scripts/rabbitmq_cluster.py status
    python3 scripts/rabbitmq_cluster.py stop     # or `make cluster-stop`

Debian's rabbitmq-server runs several nodes on one host when each has its own
node name, config file (ports), distribution port, data and log folders and
plugins file; they share the Erlang cookie of the ``rabbitmq`` user, since the
node drops to that user. Nodes 2 and 3 then ``join_cluster`` node 1. The
machine's own node (``rabbit@localhost`` on 5672) is never touched.

Ports, for node i = 1..3 and PORT = ``RABBITMQ_CLUSTER_PORT`` (default 5681):
AMQP PORT+i-1, management PORT+10000+i-1, Erlang distribution PORT+20000+i-1.
Node names are ``<RABBITMQ_CLUSTER_NAME>i@localhost`` (default ``rabbit1``...).
Data lives under ``RABBITMQ_CLUSTER_DIR`` (default /tmp/serving-rabbitmq-cluster).
Standard library only; it must run as root (or as the rabbitmq user).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

NODES = 3
BOOT_TIMEOUT_S = 120


@dataclass(frozen=True)
class Node:
    """One node of the local cluster: its name, ports and folders."""

    index: int
    name: str
    amqp_port: int
    management_port: int
    dist_port: int
    base: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid_file(self) -> Path:
        return self.base / "pid"

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
        )

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


def nodes_from_env() -> list[Node]:
    port = int(os.environ.get("RABBITMQ_CLUSTER_PORT", "5681"))
    prefix = os.environ.get("RABBITMQ_CLUSTER_NAME", "rabbit")
    root = Path(os.environ.get("RABBITMQ_CLUSTER_DIR", "/tmp/serving-rabbitmq-cluster"))
    return [
        Node(
            i,
            f"{prefix}{i}@localhost",
            port + i - 1,
            port + 10000 + i - 1,
            port + 20000 + i - 1,
            root / f"node{i}",
        )
        for i in range(1, NODES + 1)
    ]


def say(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_port(port: int, up: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port) != up:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"[cluster] error: port {port} still {'closed' if up else 'open'} after {timeout:.0f} s"
            )
        time.sleep(0.2)


def ctl(node: Node, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-n", node.name, "-q", *args],
        env=node.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise SystemExit(
            f"[cluster] error: rabbitmqctl {' '.join(args)} on {node.name}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def prepare(node: Node) -> None:
    """Write the node's config and plugins file; its folders belong to the rabbitmq user."""
    for folder in ("mnesia", "log"):
        (node.base / folder).mkdir(parents=True, exist_ok=True)
    # The system config pins 127.0.0.1:5672: each node gets its own listeners instead.
    (node.base / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}\n"
        f"management.tcp.ip = 127.0.0.1\n"
        f"management.tcp.port = {node.management_port}\n"
        # The test nodes share one small disk with everything else.
        "disk_free_limit.absolute = 50MB\n"
    )
    (node.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    for path in [node.base, *node.base.rglob("*")]:
        shutil.chown(path, "rabbitmq", "rabbitmq")


def boot(node: Node) -> None:
    """Start the node's Erlang VM in the background and wait until its AMQP port answers."""
    if port_open(node.amqp_port):
        say(f"{node.name} already answers on {node.amqp_port}")
        return
    prepare(node)
    subprocess.run(
        ["rabbitmq-server", "-detached"],
        env=node.env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(node.amqp_port, up=True, timeout=BOOT_TIMEOUT_S)


def cluster_members(node: Node) -> list[str]:
    status = json.loads(ctl(node, "cluster_status", "--formatter", "json"))
    return sorted(status.get("running_nodes", []))


def join(node: Node, seed: Node) -> None:
    """Join ``seed``'s cluster. A join whose restart fails (Mnesia refusing to start, seen on a busy
    host) is tried once more from a reset node: a fresh node has no data to lose."""
    if seed.name in cluster_members(node):
        return
    for attempt in (1, 2):
        try:
            ctl(node, "stop_app")
            ctl(node, "join_cluster", seed.name)
            ctl(node, "start_app")
            break
        except SystemExit as exc:
            if attempt == 2:
                raise
            say(f"{node.name} did not join ({exc}); resetting it and joining again")
            ctl(node, "stop_app", check=False)
            ctl(node, "force_reset", check=False)
    wait_port(node.amqp_port, up=True, timeout=BOOT_TIMEOUT_S)


def start(nodes: list[Node]) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(len(nodes)) as pool:  # the VMs boot in parallel
        list(pool.map(boot, nodes))
    booted = time.monotonic() - started
    seed = nodes[0]
    for node in nodes[1:]:  # one at a time, as RabbitMQ asks: concurrent joins race in Mnesia
        join(node, seed)
    members = cluster_members(seed)
    expected = sorted(node.name for node in nodes)
    if members != expected:
        raise SystemExit(f"[cluster] error: running nodes {members}, expected {expected}")
    for node in nodes:
        wait_port(node.management_port, up=True, timeout=BOOT_TIMEOUT_S)
    total = time.monotonic() - started
    say(
        f"{len(nodes)} nodes running and clustered in {total:.1f} s "
        f"(boot {booted:.1f} s, joins {total - booted:.1f} s)"
    )
    say(f"management UI: http://127.0.0.1:{seed.management_port}/ (guest/guest)")
    print("RABBITMQ_URL=" + ",".join(node.url for node in nodes))


def kill(node: Node) -> None:
    """kill -9 the node's VM (a crash, not a shutdown)."""
    pid = node.pid()
    if pid is None:
        raise SystemExit(f"[cluster] error: no pid file for {node.name}")
    os.kill(pid, signal.SIGKILL)
    wait_port(node.amqp_port, up=False, timeout=30)
    node.pid_file.unlink(missing_ok=True)


def stop(nodes: list[Node]) -> None:
    def stop_one(node: Node) -> None:
        if port_open(node.amqp_port) or node.pid() is not None:
            ctl(node, "stop", check=False)
            pid = node.pid()
            if pid is not None:  # `stop` failed (node wedged): make sure
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(node.base, ignore_errors=True)

    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(stop_one, nodes))
    with contextlib.suppress(OSError):  # the cluster's folder, once empty
        nodes[0].base.parent.rmdir()
    say("stopped; data removed")


def status(nodes: list[Node]) -> None:
    for node in nodes:
        state = "up" if port_open(node.amqp_port) else "down"
        print(f"{node.name}\t{state}\t{node.url}\thttp://127.0.0.1:{node.management_port}/")
    up = [node for node in nodes if port_open(node.amqp_port)]
    if up:
        print("running nodes:", " ".join(cluster_members(up[0])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["start", "stop", "status", "kill", "boot"])
    parser.add_argument("node", nargs="?", type=int, help="kill / boot: the node's number (1-3)")
    args = parser.parse_args(argv)
    if shutil.which("rabbitmq-server") is None:
        raise SystemExit(
            "[cluster] error: rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        )
    nodes = nodes_from_env()
    if args.command == "start":
        start(nodes)
    elif args.command == "stop":
        stop(nodes)
    elif args.command == "status":
        status(nodes)
    else:
        if args.node is None or not 1 <= args.node <= len(nodes):
            parser.error(f"{args.command} needs a node number 1-{len(nodes)}")
        node = nodes[args.node - 1]
        # boot: bring a killed node back; it finds its cluster again from its own data.
        kill(node) if args.command == "kill" else boot(node)


if __name__ == "__main__":
    main()
