"""One live worker per tenant: the lock a worker holds on its tenant (runs in the tenant worker).

File: `<data-dir>/tenants/<name>/worker.lock` (`DataLayout.lock_path`), 0600. The lock is the
kernel's, flock(2) LOCK_EX, not the file: the file's existence means nothing, and it is never
deleted (deleting a lock file that another process has open lets two processes each lock "the"
file). Its content, the holder's pid and a newline, is only there so a refused worker can name
the holder; it is not fsynced.

Who takes it: `Worker.run` (tenant/runtime.py), before it restores, and holds it until its
last write to the tenant's folder is done (final checkpoint written, journal closed). Whatever
started the worker (the zygote, a fresh interpreter, an operator by hand), a second worker for
the same tenant finds the lock held and refuses to start with TenantLocked, before it reads or
writes anything: "tenant acme is already served by another worker (pid N)". Readers take no
lock: `python -m tenant.export` and the rebuild of the state after a journal failure
(tenant/write_recovery.py) only read, and `runtime.restore` itself does not lock.

Why flock and not fcntl/lockf: a POSIX record lock belongs to the process, is dropped when the
process closes *any* descriptor of the file, and is not held by a forked child. A flock lock
belongs to the open file description, and lives until the last descriptor of it is closed.
So, across fork:
- the descriptor is O_CLOEXEC: a program the app execs (subprocess) never holds the lock;
- the zygote and its spare never hold one: a worker takes its lock after the fork (the
  zygote's rehearsal worker locks its throwaway tenant and releases it before the zygote
  forks anything);
- the checkpoint child (tenant/checkpoint.py) inherits the description and holds the lock
  with the worker, on purpose: it writes a snapshot into the tenant's folder, so it is a
  writer too, and a new worker running next to it would pick the same next generation. It
  dies with the worker (PR_SET_PDEATHSIG SIGKILL), so a crashed worker's lock is free as soon
  as its child is gone too;
- a child the app forks without exec inherits the lock as well: no new worker can start for
  the tenant until that child exits.

Handover: when the lock is held but the pid in the file is not alive any more, the holder is
what is left of a dead worker (its checkpoint child, being killed). The new worker tries again
for up to HANDOVER_S before it gives up, so a restart right after a crash does not count as a
boot failure. A live holder is refused at once.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from snapshots.layout import DataLayout
from tenant.errors import TenantLocked

HANDOVER_S = 5.0  # how long to wait for a dead worker's leftovers to release the lock
RETRY_S = 0.02


class TenantLock:
    """The held lock of one tenant: an open descriptor with flock(LOCK_EX) on it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, layout: DataLayout, tenant: str, *,
                handover_s: float = HANDOVER_S) -> TenantLock:
        """Lock `tenant` for this process and write our pid into the lock file.

        Never blocks on a live holder: raises TenantLocked naming it. Creates the tenant's
        folder if it is missing (as opening its journal would). Raises OSError when the lock
        file cannot be opened.
        """
        layout.create_tenant(tenant)
        path = layout.lock_path(tenant)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + handover_s
            while not _try_lock(fd):
                holder = _read_holder(fd)
                running = holder is not None and _running(holder)
                if running or time.monotonic() >= deadline:
                    raise TenantLocked(_refusal(tenant, holder, running, path), holder)
                time.sleep(RETRY_S)  # a dead holder's child being killed, or a pid not yet written
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        """Close our descriptor: the lock is free once no forked child holds it any more."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead worker its parent has not reaped yet
    holds no descriptors any more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b") ", 1)[1][:1]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel whether it exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _refusal(tenant: str, holder: int | None, running: bool, path: Path) -> str:
    if running or holder is None:
        pid = "unknown" if holder is None else holder
        return f"tenant {tenant} is already served by another worker (pid {pid})"
    return (f"tenant {tenant} is still locked by what is left of its previous worker (pid "
            f"{holder}, exited): a process it forked holds {path}")
