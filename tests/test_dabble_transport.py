"""The demo app's routes for testing the router: worker identity, streaming, WebSocket echo."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from starlette.types import Message

from examples.dabble.diagnostics import BLOB_CHUNK_BYTES, blob_bytes
from tenant import TenantContext
from tests.conftest import dabble_asgi

ASGI = dabble_asgi()


@pytest.mark.anyio
async def test_worker_identity(dabble_client: httpx.AsyncClient) -> None:
    body = (await dabble_client.get("/api/worker")).json()
    assert body["tenant"] == "acme"
    assert body["pid"] == os.getpid()
    assert body["code_version"] == "1.0"
    assert body["schema_version"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize("size", [0, 1, BLOB_CHUNK_BYTES, 3 * BLOB_CHUNK_BYTES + 17])
async def test_blob_streams_the_requested_bytes(
    dabble_client: httpx.AsyncClient, size: int
) -> None:
    response = await dabble_client.get(f"/api/blob?size={size}")
    assert response.status_code == 200
    assert response.content == blob_bytes(size)
    assert "content-length" not in response.headers
    sized = await dabble_client.get(f"/api/blob?size={size}&content_length=1")
    assert sized.headers["content-length"] == str(size)
    assert sized.content == blob_bytes(size)


@pytest.mark.anyio
@pytest.mark.parametrize("size", ["-1", "abc", str((1 << 30) + 1), "1" * 30])
async def test_blob_refuses_bad_sizes(dabble_client: httpx.AsyncClient, size: str) -> None:
    response = await dabble_client.get(f"/api/blob?size={size}")
    assert response.status_code == 400
    assert "size must be" in response.json()["error"]


@pytest.mark.anyio
async def test_blob_is_sent_in_64k_chunks(dabble_context: TenantContext) -> None:
    """At the ASGI level: many body messages of at most 64 KiB, not one big one."""
    size = 5 * BLOB_CHUNK_BYTES + 1
    sent: list[Message] = []

    requested = False

    async def receive() -> Message:
        nonlocal requested
        if requested:  # the client stays connected: nothing more to receive
            await anyio.sleep_forever()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/api/blob", "raw_path": b"/api/blob", "root_path": "",
        "query_string": f"size={size}".encode(), "headers": [], "server": ("test", 80),
    }  # fmt: skip
    with anyio.fail_after(5):
        await ASGI(scope, receive, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")]
    assert len(bodies) == 6
    assert max(len(b) for b in bodies) == BLOB_CHUNK_BYTES
    assert b"".join(bodies) == blob_bytes(size)


@pytest.mark.anyio
async def test_upload_hashes_a_streamed_body(dabble_client: httpx.AsyncClient) -> None:
    chunks = [os.urandom(70_000) for _ in range(5)]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = await dabble_client.post("/api/upload", content=body())
    assert response.status_code == 200
    whole = b"".join(chunks)
    assert response.json() == {"bytes": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
    empty = await dabble_client.post("/api/upload")
    assert empty.json() == {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}


@pytest.mark.anyio
async def test_websocket_echoes_text_and_bytes_until_the_client_closes(
    dabble_context: TenantContext,
) -> None:
    """At the ASGI level (what uvicorn hands the app): connect, echo, disconnect."""
    to_app, app_inbox = anyio.create_memory_object_stream[Message](10)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](10)
    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "scheme": "ws", "path": "/ws/echo", "raw_path": b"/ws/echo", "root_path": "",
        "query_string": b"", "headers": [], "server": ("test", 80), "subprotocols": [],
    }  # fmt: skip
    finished = anyio.Event()

    async def run_app() -> None:
        async with app_inbox, app_outbox:
            await ASGI(scope, app_inbox.receive, app_outbox.send)
        finished.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, to_app, from_app:
            tg.start_soon(run_app)
            await to_app.send({"type": "websocket.connect"})
            assert (await from_app.receive())["type"] == "websocket.accept"
            for message in ({"text": "hello"}, {"bytes": b"\x00\xff" * 1000}, {"text": ""}):
                await to_app.send({"type": "websocket.receive", **message})
                echoed = await from_app.receive()
                assert echoed["type"] == "websocket.send"
                assert {k: v for k, v in echoed.items() if k != "type" and v is not None} == (
                    message
                )
            await to_app.send({"type": "websocket.disconnect", "code": 1000})
            await finished.wait()
