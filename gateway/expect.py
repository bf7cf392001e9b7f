"""``Expect: 100-continue`` for the upload routes: invite the body only when its size is acceptable."""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.state import GATEWAY
from gateway.uploads import MULTIPART_OVERHEAD

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def expect_upload(request: web.Request) -> None:
    """The routes' ``expect_handler``: for an oversized Content-Length we send no "100 Continue",
    so the handler's 413 reaches the client before it sends the body (curl waits for it)."""
    limit = request.app[GATEWAY].settings.max_upload_bytes + MULTIPART_OVERHEAD
    if request.content_length is not None and request.content_length > limit:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(CONTINUE)
        # aiohttp's own handler does the same: the interim response is not part of the body's size.
        request.writer.output_size = 0
        return None
    raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers.get(hdrs.EXPECT)}")
