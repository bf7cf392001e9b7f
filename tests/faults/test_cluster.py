"""A three-node RabbitMQ cluster loses, under load, the node that leads the request queue.

The gateway and two workers get every node in RABBITMQ_URL. The test prints the
counts the issue's note quotes: answered (200), failed cleanly (503/504), hung,
lost (no HTTP answer at all, or a job left behind in the queues), the time until
answers flow again, and how long the killed node takes to rejoin.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from common.contract import dead_letter_queue
from tests.faults.test_faults import assert_all_answered, report
from tests.support.load import LoadResult, run_load

DEADLINE_S = 6
LOAD_S = 22
KILL_AFTER_S = 5
RECOVERY_GOAL_S = 10


def seconds_until_answers_flow(result: LoadResult, kill_at: float) -> float:
    """From the kill to the first 200 for a request sent after it (latencies pair with the timeline)."""
    answered = [
        t
        for (t, status), latency in zip(result.timeline, result.latencies, strict=True)
        if status == 200 and t - latency >= kill_at
    ]
    assert answered, f"no request sent after the kill was answered: {result.summary()}"
    return min(answered) - kill_at


def longest_gap_in_answers(result: LoadResult) -> float:
    """The longest stretch of the run without a 200."""
    times = sorted(t for t, status in result.timeline if status == 200)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def test_node_leading_the_request_queue_killed_under_load(
    rabbitmq_cluster, gateway, workers, distinct_jpegs, queue_name
):
    cluster = rabbitmq_cluster
    env = {"RABBITMQ_URL": cluster.url, "REQUEST_TIMEOUT_S": DEADLINE_S}
    started = [workers(**env), workers(**env)]
    gw = gateway(**env)
    api = cluster.api(1)
    queue = await asyncio.to_thread(
        api.wait_for,
        lambda: (q := api.queue(queue_name)) and len(q.get("online", [])) == 3 and q,
        30,
        "a request queue with 3 replicas online",
    )
    doomed = cluster.index_of(queue["leader"])
    survivor = cluster.api(doomed % 3 + 1)

    load_started = time.monotonic()
    load = asyncio.create_task(
        run_load(
            f"{gw.base_url}/predict",
            distinct_jpegs,
            concurrency=4,
            deadline_s=DEADLINE_S,
            duration_s=LOAD_S,
            unique=True,
        )
    )
    await asyncio.sleep(KILL_AFTER_S)
    kill_at = cluster.kill(doomed) - load_started
    result = await load

    # Nothing left behind: every job was answered or expired; none was dead-lettered.
    drained = await asyncio.to_thread(survivor.wait_until_drained, queue_name, 30)
    dead = await asyncio.to_thread(
        survivor.wait_for,
        lambda: (q := survivor.queue(dead_letter_queue(queue_name)))["messages"] is not None and q,
        30,
        "statistics of the dead-letter queue",
    )
    left_behind = drained["messages"] + dead["messages"]
    lost = sum(result.errors.values()) + left_behind
    recovery_s = seconds_until_answers_flow(result, kill_at)
    gap_s = longest_gap_in_answers(result)
    new_leader = survivor.queue(queue_name)["leader"]

    rejoin_started = time.monotonic()
    await asyncio.to_thread(cluster.boot, doomed)
    await asyncio.to_thread(
        survivor.wait_for,
        lambda: len(survivor.queue(queue_name).get("online", [])) == 3,
        60,
        f"{cluster.node(doomed)} back among the queue's replicas",
    )
    rejoin_s = time.monotonic() - rejoin_started
    after = await run_load(
        f"{gw.base_url}/predict", distinct_jpegs, concurrency=2, deadline_s=DEADLINE_S, total=8, unique=True
    )

    report(f"kill -9 {queue['leader']} (the request queue's leader)", result)
    print(
        f"[fault] answered {result.statuses[200]}, failed cleanly {result.statuses[503]} x 503 + "
        f"{result.statuses[504]} x 504, hung {result.hung}, lost {lost}; answers again {recovery_s:.1f} s "
        f"after the kill (longest gap between 200s {gap_s:.1f} s); new leader {new_leader}; "
        f"the node rejoined in {rejoin_s:.1f} s; "
        f"cluster start {cluster.start_s:.1f} s"
    )
    assert_all_answered(result)
    assert lost == 0, result.summary()
    assert recovery_s < RECOVERY_GOAL_S and gap_s < RECOVERY_GOAL_S, result.timeline
    # Everyone was on the first node (the leader, since queues lead where they are declared): each
    # moved to another node, the gateway with its reply queue declared again there.
    for process in (gw, *started):
        assert process.proc.poll() is None, process.log_tail()
        assert "reconnected to RabbitMQ at" in process.log_text(), process.log_tail()
    assert new_leader != queue["leader"]
    tail = [status for t, status in result.timeline if t > kill_at + RECOVERY_GOAL_S]
    assert tail and set(tail) == {200}, result.timeline
    assert set(after.statuses) == {200} and after.sent == 8, after.summary()
    nodes = {node["name"]: node["running"] for node in survivor.nodes()}
    assert nodes == {cluster.node(i): True for i in (1, 2, 3)}, nodes
