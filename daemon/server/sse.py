"""Server-sent events."""

from __future__ import annotations

import json

from aiohttp import web


async def sse_response(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    return response


async def write_event(response: web.StreamResponse, data: dict) -> None:
    """One `data:` event. A client that left raises ConnectionResetError here."""
    await response.write(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")
