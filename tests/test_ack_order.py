""""2xx means fsynced", checked where a kill -9 cannot tell: the worker's own system calls.

A SIGKILL cannot tell an fsynced record from one in the page cache (the machine keeps
running), so tests/test_durability.py's kill loop proves the record was written, not that it
was flushed. Here strace follows a real worker (every thread) while one writer posts records
through the router, and each `201` the worker writes back must come after an fsync of the
journal that started once that record's write had ended and that returned 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Router, get_ok

WRITES = 60

# `TID SECONDS.MICROS syscall(fd, ...) = RET <DURATION>`, or a call split across threads:
# `... fsync(7 <unfinished ...>` then `TID SECONDS <... fsync resumed>) = 0 <DURATION>`.
CALL = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((\d+)(.*)$")
RESUMED = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
RESULT = re.compile(r"= (-?\d+).*<(\d+\.\d+)>\s*$")


@dataclass
class Call:
    name: str
    fd: int
    start: float
    end: float
    result: int
    text: str


def parse_strace(lines: list[str]) -> list[Call]:
    calls: list[Call] = []
    pending: dict[str, tuple[str, int, float, str]] = {}
    for line in lines:
        if match := CALL.match(line):
            tid, start, name, fd, rest = match.groups()
            if "<unfinished ...>" in rest:
                pending[tid] = (name, int(fd), float(start), rest)
                continue
            if result := RESULT.search(rest):
                calls.append(Call(name, int(fd), float(start),
                                  float(start) + float(result.group(2)),
                                  int(result.group(1)), rest))
        elif match := RESUMED.match(line):
            tid, _, name, rest = match.groups()
            begun = pending.pop(tid, None)
            result = RESULT.search(rest)
            if begun is not None and result is not None and begun[0] == name:
                calls.append(Call(name, begun[1], begun[2], begun[2] + float(result.group(2)),
                                  int(result.group(1)), begun[3] + rest))
    return sorted(calls, key=lambda c: c.start)


def journal_fds(pid: int) -> set[int]:
    fds = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if "/journal/" in target and target.endswith(".journal"):
            fds.add(int(entry.name))
    return fds


@pytest.mark.slow
def test_every_201_is_written_after_an_fsync_of_its_record(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    strace = shutil.which("strace")
    assert strace, "strace is needed (Makefile system-deps installs it)"
    router = make_router().start()
    router.create("acks")
    trace = tmp_path / "worker.strace"
    errors = tmp_path / "strace.err"
    with router.client(timeout=30) as client:
        pid = int(get_ok(client, "/t/acks/api/worker").json()["pid"])
        fds = journal_fds(pid)
        assert fds, "the worker has its journal open"
        with errors.open("wb") as stderr:
            tracer = subprocess.Popen(
                [strace, "-f", "-p", str(pid), "-ttt", "-T", "-s", "24", "-o", str(trace),
                 "-e", "trace=write,writev,sendto,sendmsg,fsync,fdatasync"],
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            # strace names every thread it attached to; wait until it has the worker.
            while not (trace.exists() and trace.stat().st_size) and time.monotonic() < deadline:
                get_ok(client, "/t/acks/api/worker")
                time.sleep(0.05)
            assert trace.exists() and trace.stat().st_size, errors.read_text()
            for i in range(WRITES):
                response = client.post("/t/acks/api/tables/t/records", json={"i": i})
                assert response.status_code == 201, response.text
        finally:
            os.killpg(tracer.pid, signal.SIGINT)  # strace detaches and leaves the worker be
            tracer.wait(30)
        fds |= journal_fds(pid)

    calls = parse_strace(trace.read_text().splitlines())
    writes = [c for c in calls if c.name in ("write", "writev") and c.fd in fds]
    syncs = [c for c in calls if c.name in ("fsync", "fdatasync") and c.fd in fds]
    answers = [c for c in calls if c.name in ("write", "writev", "sendto", "sendmsg")
               and '"HTTP/1.1 201' in c.text]
    assert len(answers) >= WRITES, f"saw {len(answers)} of {WRITES} answers in the trace"
    assert len(writes) >= WRITES
    for answer in answers:
        record = max((w for w in writes if w.start < answer.start), key=lambda w: w.start)
        covering = [s for s in syncs
                    if s.start >= record.end and s.end <= answer.start and s.result == 0]
        assert covering, (f"a 201 at {answer.start:.6f} was written with no fsync of the "
                          f"journal after its record (written {record.start:.6f})")
