"""The control channel between the router and one tenant worker (worker side).

Transport: a Unix stream socket pair made by the router at spawn; the worker gets one end as an
inherited file descriptor. Frames are JSON objects, one per line (UTF-8, `\\n`-terminated,
at most 1 MiB a line). Protocol version 1.

Worker -> router, unsolicited events:
  {"event": "ready", "pid": int, "port": int, "journal_pos": int, "generation": int|null,
   "warnings": [str], "protocol": 1}                   after restore, once accepting requests
  {"event": "boot_failed", "error": str}               restore or import failed; the worker exits
  {"event": "checkpointed", "generation": int, "journal_pos": int}   any checkpoint that landed,
                                                       the one written at stop included
  {"event": "checkpoint_failed", "error": str}         the old snapshot and the journal stay
Router -> worker requests, each answered by {"id": same, "ok": true, ...} or
{"id": same, "ok": false, "error": str}:
  {"id": n, "op": "ping"}        -> {"journal_pos", "dirty", "checkpointing"}
  {"id": n, "op": "checkpoint"}  -> {"changed", "generation", "journal_pos"} (forked child writes)
  {"id": n, "op": "stop"}        -> answered at once; then the worker drains, checkpoints if
                                    dirty (in-process) and exits 0

End of file on the socket means the router is gone: the worker checkpoints if dirty and exits,
so no worker outlives its router even when the router was killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlChannel:
    """Reads router requests, dispatches them to `handler`, writes answers and events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._answering: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

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
                request = json.loads(line)
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
