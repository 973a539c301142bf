"""Waiting, and processes found by pid and process group (from /proc, never by name).

Everything the harness starts runs in its own session, so its pid is also its process group
id, and killing that group takes its children along (a router's zygote, workers and
checkpoint children).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from harness.errors import WaitTimeout

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str = "",
               *, step_s: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy and return that; past a monotonic
    deadline of `timeout_s`, raise WaitTimeout naming `what` (or the predicate)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{what or predicate} did not happen within {timeout_s:g}s")
        time.sleep(step_s)


def _stat_fields(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1].split()


def alive(pid: int) -> bool:
    """True while the process exists and is neither a zombie nor dead."""
    try:
        return _stat_fields(pid)[0] not in "ZX"
    except (OSError, IndexError):
        return False


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            pids.append(int(entry))
    return pids


def cmdline(pid: int) -> str:
    """The process's command line, or its setproctitle title ("switchboard: tenant acme")."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL,
               wait_s: float = 10) -> None:
    """Signal the process group `proc` leads and reap `proc`. A group that is already gone
    is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(wait_s)
