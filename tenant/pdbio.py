"""pdb's stdin and stdout on a console connection, while the event loop is blocked (runs in
the tenant worker).

A breakpoint (tenant/breakpoints.py) runs pdb synchronously in the event-loop thread, so the
connection's asyncio transport cannot carry its text: `SocketPdbIO` reads and writes the
connection's file descriptor itself (it is non-blocking: every read and write waits with
poll, bounded by the breakpoint's deadline). The frames are those of contract/console.py:
text goes out as {"out"}, and each time pdb reads a line the pending prompt goes out as
{"event": "input", "prompt"} and a {"op": "line"} frame is read back.

When the deadline passes or the client goes away, every read answers "continue": pdb lets
the function run on, and nothing waits for a console that is not there.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from typing import Any

from contract.console import decode, encode

CONTINUE = "continue\n"


class SocketPdbIO:
    """A file-like object for pdb (write, flush, readline) over a console connection."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline  # time.monotonic()
        self.released: str | None = None  # why reads now answer "continue"
        self._pending = ""
        self._inbox = b""

    # --- output ----------------------------------------------------------------------------

    def write(self, text: str) -> int:
        self._pending += text
        return len(text)

    def flush(self) -> None:
        if self._pending:
            text, self._pending = self._pending, ""
            self.send({"out": text})

    def send(self, frame: dict[str, Any]) -> None:
        """Write one frame (bounded by the deadline, plus a little: it is output already made).
        A client that went away is not an error: the text has no reader."""
        data = encode(frame)
        limit = max(self.deadline, time.monotonic() + 5.0)
        while data and self.released != "the console went away":
            if not self._wait(select.POLLOUT, limit):
                return
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                continue
            except OSError:
                self.released = "the console went away"
                return

    # --- input -----------------------------------------------------------------------------

    def readline(self) -> str:
        if self.released is None and time.monotonic() >= self.deadline:
            self.released = "the breakpoint's deadline passed"
        if self.released is not None:
            self.flush()
            return CONTINUE
        prompt = ""
        head, sep, tail = self._pending.rpartition("\n")
        if tail:
            prompt, self._pending = tail, head + sep
        self.flush()
        self.send({"event": "input", "prompt": prompt})
        line = self._read_line_frame()
        if line is None:
            return CONTINUE
        return line + "\n"

    def _read_line_frame(self) -> str | None:
        while True:
            raw, sep, rest = self._inbox.partition(b"\n")
            if sep:
                self._inbox = rest
                with contextlib.suppress(ValueError):
                    frame = decode(raw)
                    if frame.get("op") == "line":
                        return str(frame.get("text", ""))
                    if frame.get("op") == "interrupt":
                        return CONTINUE.strip()
                continue  # anything else (a late completion request) has no meaning here
            if not self._wait(select.POLLIN, self.deadline):
                self.released = "the breakpoint's deadline passed"
                return None
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.released = "the console went away"
                return None
            self._inbox += chunk

    def _wait(self, events: int, deadline: float) -> bool:
        poller = select.poll()
        poller.register(self.fd, events)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready = poller.poll(remaining * 1000)
            if ready:
                _fd, got = ready[0]
                if got & (select.POLLHUP | select.POLLERR | select.POLLNVAL) and not (
                        got & events):
                    self.released = "the console went away"
                    return False
                return True
