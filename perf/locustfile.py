"""Locust users of the classifier: a person on the page, and an API client.

Run it as its own process, never import it (locust monkey-patches the standard library)::

    locust -f perf/locustfile.py --headless -u 32 -r 32 -t 15s --host http://127.0.0.1:8000 \
        --csv perf/.run/locust --html perf/.run/locust.html --photo-pool distinct

Options (locust arguments, or the environment variables in brackets):

- ``--photo-pool distinct|small`` [PERF_PHOTO_POOL]: ``distinct`` sends each
  photo of the pool once, in turn (every request a cache miss until the pool
  wraps); ``small`` cycles a handful of photos (cache hits after the first).
- ``--photo-dir`` [PERF_PHOTO_DIR]: the pool (crops and re-encodings of
  ``tests/data``'s photos; made by :mod:`perf.photos` if missing).
- ``--think-time`` [PERF_THINK_TIME]: seconds a visitor pauses between
  actions (0 drives the system as hard as the users can).
"""

from __future__ import annotations

import itertools
import os
import random
import re
from pathlib import Path
from typing import ClassVar

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment

from perf.loadgen import BOUNDARY, multipart  # the same browser-like upload body

SMALL_POOL = 8
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
_IMAGE_ID_RE = re.compile(r'name="image" value="([0-9a-f]{64}\.[a-z]+)"')
_TOP_LABEL_RE = re.compile(r'name="prediction" value="([^"]*)"')


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # type: ignore[no-untyped-def]
    parser.add_argument(
        "--photo-pool",
        choices=["distinct", "small"],
        default=os.environ.get("PERF_PHOTO_POOL", "distinct"),
        help="distinct: every request a new photo (cache misses); small: a few photos (hits)",
    )
    parser.add_argument(
        "--photo-dir",
        default=os.environ.get("PERF_PHOTO_DIR", ""),
        help="folder of JPEG photos (default: perf.photos' pool)",
    )
    parser.add_argument(
        "--think-time",
        type=float,
        default=float(os.environ.get("PERF_THINK_TIME", "1.0")),
        help="a visitor's mean pause between actions, seconds",
    )


class Photos:
    """The photo pool as ready multipart bodies, shared by every user of this locust process."""

    bodies: ClassVar[list[bytes]] = []
    _order: ClassVar[itertools.count[int]] = itertools.count()

    @classmethod
    def load(cls, folder: str, pool: str) -> None:
        if folder:
            paths = sorted(Path(folder).glob("*.jpg"))
        else:
            from perf import photos  # the pool maker (Pillow only); made once, then cached on disk

            paths = photos.make_pool(1500)
        if pool == "small":
            paths = paths[:SMALL_POOL]
        if not paths:
            raise SystemExit(f"no photos in {folder!r}")
        cls.bodies = [multipart(p.read_bytes(), p.name) for p in paths]

    @classmethod
    def next(cls) -> bytes:
        return cls.bodies[next(cls._order) % len(cls.bodies)]


@events.init.add_listener
def _load_photos(environment: Environment, **_: object) -> None:
    options = environment.parsed_options
    if options is not None:
        Photos.load(options.photo_dir, options.photo_pool)


def _think(user: FastHttpUser) -> float:
    mean = user.environment.parsed_options.think_time if user.environment.parsed_options else 1.0
    return random.uniform(0.5 * mean, 1.5 * mean) if mean > 0 else 0.0


class Visitor(FastHttpUser):
    """A person: opens the page, uploads a photo with the form, reads the answer, sometimes reports it."""

    weight = 1
    wait_time = constant(0)  # pauses are taken inside the task (think time between steps)
    feedback_share = 0.1

    @task
    def visit(self) -> None:
        self.client.get("/", name="GET /")
        self._pause()
        with self.client.post(
            "/", name="POST / (form upload)", data=Photos.next(), headers=MULTIPART, catch_response=True
        ) as response:
            page = response.text or ""
            image = _IMAGE_ID_RE.search(page)
            if response.status_code == 200 and image is None:
                response.failure("the result page has no image id")
                return
        if image and random.random() < self.feedback_share:
            self._pause()
            label = _TOP_LABEL_RE.search(page)
            self.client.post(
                "/feedback",
                name="POST /feedback",
                data={
                    "image": image.group(1),
                    "prediction": label.group(1) if label else "unknown",
                    "score": "0.5",
                    "correct_label": "tabby cat",
                },
            )
        self._pause()

    def _pause(self) -> None:
        if (seconds := _think(self)) > 0:
            gevent.sleep(seconds)


class ApiClient(FastHttpUser):
    """A program calling the REST API: POST /predict with a multipart ``file``, as fast as it gets answers."""

    weight = 3
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        with self.client.post(
            "/predict?top_k=3",
            name="POST /predict",
            data=Photos.next(),
            headers=MULTIPART,
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                try:
                    ok = response.json().get("success") is True
                except ValueError:
                    ok = False
                if not ok:
                    response.failure("200 without success: true")
            elif response.status_code == 503:
                # A well-behaved client honours Retry-After instead of hammering a shedding gateway.
                response.failure("503 Service Unavailable")
                retry_after = response.headers.get("Retry-After", "1")
                gevent.sleep(float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 1.0)
