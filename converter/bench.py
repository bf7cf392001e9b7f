"""A short images-per-second comparison, same inputs and settings for every session."""

from __future__ import annotations

import time

import numpy as np

from common.model_file import INPUT_NAME, OUTPUT_NAME


def _rate(sess, feed: dict, n: int, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while True:
        sess.run([OUTPUT_NAME], feed)
        done += n
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def images_per_second(
    sessions: list, images: np.ndarray, batch_size: int = 8, seconds: float = 4.0, rounds: int = 4
) -> list[float]:
    """Throughput of each session on the same batch of real inputs.

    Sessions take turns in short rounds and each keeps its best round: on a shared machine
    a burst of someone else's work then skews neither side of the comparison.
    """
    feed = {INPUT_NAME: np.ascontiguousarray(images[:batch_size])}
    for sess in sessions:
        sess.run([OUTPUT_NAME], feed)  # warm-up: allocations, kernel selection
    best = [0.0] * len(sessions)
    for _ in range(rounds):
        for i, sess in enumerate(sessions):
            best[i] = max(best[i], _rate(sess, feed, len(feed[INPUT_NAME]), seconds / rounds))
    return best
