"""Reading a tenant's log file for the admin API: its last lines, and new lines as they come.

The file is `<data-dir>/logs/<name>.log`, written by the tenant's worker (tenant/output.py) and
rotated by size: the worker renames it to `<name>.log.1` and starts a new one. `tail_lines`
reads only the current file. `follow` polls it every FOLLOW_POLL_S: a rotation (another inode
under the name, or a file shorter than what was read) makes it finish the old file, through the
handle it still holds, and go on from the start of the new one; a missing file (a tenant that
never started) is waited for. A follow ends by itself after `max_s` (FOLLOW_MAX_S by default),
so a forgotten `logs -f` holds no stream for ever.

Reads are small (a poll reads what was added since the last one, at most READ_CHUNK_BYTES at a
time) and run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO

DEFAULT_LINES = 100
MAX_LINES = 100_000
FOLLOW_POLL_S = 0.2
FOLLOW_MAX_S = 3600.0
READ_CHUNK_BYTES = 64 * 1024


def tail_lines(path: Path, n: int) -> list[bytes]:
    """The last `n` complete lines of the file at `path`, each with its newline; [] when the
    file does not exist. A last line still being written (no newline yet) is left out."""
    f = _open(path)
    if f is None:
        return []
    with f:
        lines, _ = _tail_of(f, n)
    return lines


def _tail_of(f: BinaryIO, n: int) -> tuple[list[bytes], int]:
    """The last `n` complete lines of an open file and the offset just after the last one."""
    end = f.seek(0, os.SEEK_END)
    data = b""
    position = end
    while position > 0 and data.count(b"\n") <= n:
        step = min(READ_CHUNK_BYTES, position)
        position -= step
        f.seek(position)
        data = f.read(step) + data
    complete_end = data.rfind(b"\n") + 1  # 0 when there is no complete line
    lines = data[:complete_end].splitlines(keepends=True)
    if position > 0 and lines:
        lines = lines[1:]  # the first may be the tail of a line that starts before `position`
    return (lines[-n:] if n > 0 else []), position + complete_end


async def follow(path: Path, n: int, *, max_s: float = FOLLOW_MAX_S,
                 poll_s: float = FOLLOW_POLL_S) -> AsyncGenerator[bytes, None]:
    """The last `n` lines, then every line written after them, across rotations, until
    `max_s` has passed (then it returns: a clean end of the stream). The caller stops it
    earlier by closing the iterator (the client went away)."""
    deadline = time.monotonic() + max_s
    f: BinaryIO | None = None
    pending = b""
    try:
        f = _open(path)
        if f is not None:
            lines, offset = _tail_of(f, n)
            f.seek(offset)
            for line in lines:
                yield line
        while time.monotonic() < deadline:
            if f is not None:
                chunk = f.read(READ_CHUNK_BYTES)
                if chunk:
                    pending += chunk
                    complete_end = pending.rfind(b"\n") + 1
                    if complete_end:
                        yield pending[:complete_end]
                        pending = pending[complete_end:]
                    continue  # more may be there already
                if not _rotated(f, path):
                    await asyncio.sleep(poll_s)
                    continue
                # Rotated: what was written to the old file before the rename is read first
                # (the worker writes no more to it), then the new file from its start.
                pending += f.read()
                if pending:
                    yield pending if pending.endswith(b"\n") else pending + b"\n"
                    pending = b""
                f.close()
                f = None
            f = _open(path)
            if f is None:
                await asyncio.sleep(poll_s)
    finally:
        if f is not None:
            f.close()


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _rotated(f: BinaryIO, path: Path) -> bool:
    """The name now holds another file than `f`, or none, or `f` was cut short."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return True
    held = os.fstat(f.fileno())
    if (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
        return True
    with contextlib.suppress(OSError):
        if current.st_size < f.tell():
            f.seek(0)  # truncated in place: read it again from the start
    return False
