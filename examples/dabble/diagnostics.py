"""Routes that let the router's tests see through it (runs in the tenant worker).

GET  /api/worker       {"tenant", "pid", "code_version", "schema_version", "app_version"}
GET  /api/blob?size=N  N bytes (0 <= N <= 1 GiB) streamed in 64 KiB chunks, no
                       Content-Length (chunked) unless `&content_length=1`; byte i is
                       i % 256, so a client can check what it got without a copy
POST /api/upload       reads the body as a stream -> {"bytes": n, "sha256": hex}; the body
                       is hashed chunk by chunk, never held whole
WS   /ws/echo          sends back every text and bytes message until the client closes
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocket

from tenant import CommandRejected, current

BLOB_CHUNK_BYTES = 64 * 1024
MAX_BLOB_BYTES = 1 << 30
_PATTERN = bytes(range(256)) * (BLOB_CHUNK_BYTES // 256)


async def worker(request: Request) -> Response:
    context = current()
    return JSONResponse(
        {
            "tenant": context.tenant,
            "pid": context.pid,
            "host": context.host,
            "epoch": context.epoch,
            "code_version": context.code_version,
            "schema_version": context.schema_version,
            "app_version": context.app.app_version,
        }
    )


def blob_bytes(size: int) -> bytes:
    """What GET /api/blob?size=`size` answers, for tests (builds it in memory)."""
    whole, rest = divmod(size, BLOB_CHUNK_BYTES)
    return _PATTERN * whole + _PATTERN[:rest]


async def _blob_chunks(size: int) -> AsyncIterator[bytes]:
    remaining = size
    while remaining > 0:
        chunk = _PATTERN[: min(remaining, BLOB_CHUNK_BYTES)]
        remaining -= len(chunk)
        yield chunk


async def blob(request: Request) -> Response:
    raw = request.query_params.get("size", "0")
    size = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else -1
    if not 0 <= size <= MAX_BLOB_BYTES:
        raise CommandRejected(f"size must be an integer from 0 to {MAX_BLOB_BYTES}, not {raw!r}")
    headers = {}
    if request.query_params.get("content_length") == "1":
        headers["Content-Length"] = str(size)
    return StreamingResponse(
        _blob_chunks(size), media_type="application/octet-stream", headers=headers
    )


async def upload(request: Request) -> Response:
    digest = hashlib.sha256()
    received = 0
    async for chunk in request.stream():
        digest.update(chunk)
        received += len(chunk)
    return JSONResponse({"bytes": received, "sha256": digest.hexdigest()})


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while (message := await websocket.receive())["type"] != "websocket.disconnect":
        if message.get("text") is not None:
            await websocket.send_text(message["text"])
        elif message.get("bytes") is not None:
            await websocket.send_bytes(message["bytes"])
