"""A router's tenant workers as /proc shows them: found by process group and title
("switchboard: tenant NAME :PORT"), never by name alone; killed through a pidfd; compared
with what the router lists. The router's own RSS is read here too.

Internal: not part of the `switchboard` command's interface.
"""

from __future__ import annotations

import os
import signal

from harness.procs import cmdline, group_pids
from harness.router import RouterProcess

WORKER_TITLE = "switchboard: tenant "
MIB = 1024 * 1024


def parent_and_group(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2])


def rss_mb(pid: int) -> float:
    """VmRSS of a process in MiB, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return 0.0


def tenant_workers(pgid: int) -> dict[int, str]:
    """pid -> tenant of the tenant workers in process group `pgid`, by title
    ("switchboard: tenant NAME :PORT"); checkpoint children, which carry their worker's title,
    are left out."""
    titled: dict[int, str] = {}
    for pid in group_pids(pgid):
        title = cmdline(pid)
        if title.startswith(WORKER_TITLE):
            titled[pid] = title[len(WORKER_TITLE):].split(" ")[0]
    workers = {}
    for pid, name in titled.items():
        stat = parent_and_group(pid)
        if stat is not None and stat[0] not in titled:
            workers[pid] = name
    return workers


def kill_worker(pgid: int, pid: int) -> bool:
    """SIGKILL `pid` if it is still a tenant worker of process group `pgid`. The pid is pinned
    with a pidfd before it is checked, so a recycled pid is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already (or no pidfd support: then do not risk it)
        return False
    try:
        stat = parent_and_group(pid)
        if stat is None or stat[1] != pgid or not cmdline(pid).startswith(WORKER_TITLE):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def stray_workers(router: RouterProcess) -> dict[int, str]:
    """Workers in the router's group whose tenant is not listed or whose pid is not the one
    listed for it."""
    workers = tenant_workers(router.pid)
    if not workers:
        return {}
    listed = {row["name"]: row["pid"]
              for row in router.admin_call("GET", "/v1/tenants")["tenants"]}
    return {pid: name for pid, name in workers.items() if listed.get(name) != pid}
