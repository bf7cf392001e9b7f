"""Several gateway processes on one port (GATEWAY_PROCESSES, SO_REUSEPORT): real processes,
real RabbitMQ, Redis, worker and photo.

Both answer on the port (two pids behind it), each owns its RabbitMQ reply queue, and
killing one leaves the port answering predictions through the other.
"""

from __future__ import annotations

import os
import signal
import urllib.request

from tests.support import rabbitmq_api
from tests.support.metrics import scrape


def process_info(base_url: str) -> tuple[int, str]:
    """(pid, reply queue) of the gateway process that took this new connection."""
    [labels] = [labels for name, labels, _ in scrape(f"{base_url}/metrics") if name == "gateway_process_info"]
    return int(labels["pid"]), labels["reply_queue"]


def predict_status(base_url: str, photo: bytes) -> int:
    boundary = "gatewayprocesses"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base_url}/predict",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status


def test_two_gateway_processes_share_a_port_each_with_its_reply_queue(gateway, workers, photos) -> None:
    workers()
    first = gateway(GATEWAY_PROCESSES=2)
    # The same PORT: it binds only thanks to SO_REUSEPORT. (Its /health/live may have been
    # answered by the first: wait until the kernel hands it connections too.)
    second = gateway(GATEWAY_PROCESSES=2)
    base_url = first.base_url
    assert second.base_url == base_url

    seen: dict[int, str] = {}

    def both_seen() -> bool:
        # Each new connection goes to one of them (the kernel hashes its ports).
        pid, reply_queue = process_info(base_url)
        seen[pid] = reply_queue
        return len(seen) == 2

    second.wait_until(both_seen, 30, "connections to both processes")
    assert set(seen) == {first.pid, second.pid}
    assert len(set(seen.values())) == 2, seen
    for reply_queue in seen.values():
        queue = rabbitmq_api.wait_for(
            lambda q=reply_queue: (info := rabbitmq_api.queue(q))["consumers"] == 1 and info,
            what=f"a consumer on {reply_queue}",
        )
        assert queue["exclusive"] and queue["auto_delete"]

    # Predictions through both: a process whose reply queue did not work would time out.
    photo = photos["coffee"].read_bytes()
    assert [predict_status(base_url, photo) for _ in range(10)] == [200] * 10

    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    # The kernel no longer hands the dead process connections: every one reaches the other.
    assert {process_info(base_url)[0] for _ in range(20)} == {second.pid}
    assert [predict_status(base_url, photo) for _ in range(5)] == [200] * 5
    # The dead one's reply queue went with its connection (exclusive).
    rabbitmq_api.wait_for(
        lambda: seen[first.pid] not in rabbitmq_api.list_queues("gateway.reply."), what="the reply queue gone"
    )
