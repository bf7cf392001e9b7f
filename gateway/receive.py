"""Receiving a request's body under the admission bounds; shared by the views that take an image.

While a body arrives it holds a *receiving* slot (:mod:`gateway.admission`), never one
of MAX_IN_FLIGHT; a request no worker slot could take is refused before a byte is read.
What comes out is plain bytes or an :class:`~gateway.images.Upload` for the services.
"""

from __future__ import annotations

from aiohttp import web

from gateway.images import Upload
from gateway.state import GATEWAY
from gateway.uploads import read_body, read_upload


async def receive_upload(request: web.Request) -> Upload:
    """The request's image (multipart field ``file`` or the raw body), read by :func:`read_upload`."""
    gateway = request.app[GATEWAY]
    # No worker slot could take it: refuse before reading a body we would throw away.
    gateway.admission.check_waiting_room()
    with gateway.admission.receiving_slot() as received:
        return await read_upload(request, gateway.read_limits, received.hold)


async def receive_body(request: web.Request, allowance: int) -> bytes:
    """The raw request body, read as an upload is (:func:`read_body`): every byte counted
    against ``allowance``, the upload deadline and pace."""
    gateway = request.app[GATEWAY]
    gateway.admission.check_waiting_room()
    with gateway.admission.receiving_slot() as received:
        return await read_body(request, gateway.read_limits, allowance, received.hold)
