"""The control channel between the router and one tenant worker (worker side).

The protocol (frames, events, requests, exit statuses) is the wire contract in
contract/worker.py; this module is the worker's end of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from contract.worker import MAX_LINE_BYTES, decode, encode

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlChannel:
    """Reads router requests, dispatches them to `handler`, writes answers and events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._answering: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    async def serve(self, handler: Handler) -> None:
        """Answer requests until the router closes its end (returns on EOF)."""
        while True:
            try:
                line = await self.reader.readline()
            except (ConnectionError, ValueError):
                return
            if not line:
                return
            try:
                request = decode(line)
                op_id = request["id"]
            except (ValueError, KeyError, TypeError):
                continue  # a garbled frame cannot be answered; the router's timeout covers it
            task = asyncio.ensure_future(self._answer(handler, op_id, request))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, handler: Handler, op_id: Any, request: dict[str, Any]) -> None:
        try:
            reply = await handler(request)
            self.send({"id": op_id, "ok": True, **reply})
        except Exception as exc:  # answered to the router, which logs and surfaces it
            self.send({"id": op_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        await self.writer.drain()


async def open_channel(fd: int) -> ControlChannel:
    import socket

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE_BYTES)
    return ControlChannel(reader, writer)
