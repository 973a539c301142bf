"""Journal group commit (issue 4): writes/s at 1, 8 and 64 concurrent writers.

tenant.journal.Journal in this process, policy "always", on a real file in a data dir on
the disk (not tmpfs): every acknowledged append is fsynced, and concurrent appends share an
fsync. Signed, as a worker's journal is (a keyed MAC per record, tenant/journal_format.py).
Baseline: the same records written one at a time with one fsync each, the way a journal
without group commit would, in a plain loop (no event loop, no thread hop).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import zlib
from typing import Any

import msgpack

from bench.cases import Context
from bench.report import Figure, Goal
from snapshots.mac import WriterIdentity
from tenant.journal import Journal, JournalSigning

WRITER_COUNTS = (1, 8, 64)
ARGS = {"table": "orders", "fields": {"sku": "A-1234", "qty": 3, "note": "x" * 40}}


def fsync_per_write(path: str, seconds: float) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    frame_header = struct.Struct(">II")
    try:
        count, seq = 0, 1
        until = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < until:
            payload = msgpack.packb([seq, time.time(), "create_record", ARGS], use_bin_type=True)
            os.write(fd, frame_header.pack(len(payload), zlib.crc32(payload)) + payload)
            os.fsync(fd)
            count += 1
            seq += 1
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)


async def group_commit(directory: str, writers: int, seconds: float) -> float:
    signing = JournalSigning("bench", WriterIdentity(key=os.urandom(32)))
    journal = Journal.open(directory, next_seq=1, fsync_policy="always", signing=signing)
    return await appends_per_s(journal, "create_record", ARGS, writers, seconds)


async def appends_per_s(journal: Any, command: str, args: dict[str, Any], writers: int,
                        seconds: float) -> float:
    """`writers` concurrent writers append to `journal` for `seconds`, each waiting for its
    record to be acknowledged; the appends per second; the journal is closed after."""
    count = 0
    until = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal count
        while time.perf_counter() < until:
            await journal.append(command, args, time.time())
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - started
    await journal.close()
    return count / elapsed


def journal(ctx: Context) -> list[Figure]:
    base = ctx.work / "journal"
    base.mkdir(exist_ok=True)
    seconds = ctx.sizes.journal_s
    ctx.log("journal: one fsync per write")
    baseline = fsync_per_write(str(base / "plain.journal"), seconds)
    try:
        import uvloop

        runner: Any = uvloop.run  # what the workers run on
    except ImportError:
        runner = asyncio.run
    figures = []
    for writers in WRITER_COUNTS:
        ctx.log(f"journal: group commit, {writers} writers")
        rate = runner(group_commit(str(base / f"w{writers}"), writers, seconds))
        figures.append(Figure.vs(
            f"journal_writes_per_s_{writers}", rate, "writes/s",
            "journal_fsync_per_write_per_s" if writers == 1 else f"_fsync_baseline_{writers}",
            baseline, f"group_commit_ratio_{writers}",
            goal=Goal("ratio", ">=", 10, "DESIGN.md") if writers == 64 else None,
            note="write + fsync per record, one at a time" if writers == 1 else ""))
    for figure in figures[1:]:
        figure.baseline_name = None  # one baseline, printed once
    return figures
