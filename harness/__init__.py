"""What the tests (tests/conftest.py) and the benchmarks (bench/harness.py) share: real
routers started on port 0 and found through the `router.json` they write, polling against a
monotonic deadline, process-group helpers, loopback helpers and signed admin calls.

Internal: not part of the `switchboard` command's interface.
"""

from __future__ import annotations

from harness.errors import AdminCallFailed, HarnessError, RouterExited, WaitTimeout
from harness.net import connectable, free_port
from harness.procs import alive, cmdline, group_pids, kill_group, wait_until
from harness.router import ROOT, SWITCHBOARD, RouterProcess

__all__ = [
    "ROOT",
    "SWITCHBOARD",
    "AdminCallFailed",
    "HarnessError",
    "RouterExited",
    "RouterProcess",
    "WaitTimeout",
    "alive",
    "cmdline",
    "connectable",
    "free_port",
    "group_pids",
    "kill_group",
    "wait_until",
]
