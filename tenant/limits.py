"""Limits a worker process sets on itself (runs in the tenant worker and its forked children).

Resource limits, from the WorkerSpec (0: none), applied at the very start of `worker_main`,
before the restore, in a zygote-forked worker as in a fresh interpreter:
- `max_address_space_bytes` -> RLIMIT_AS. An allocation past it fails: Python raises
  MemoryError in the code that asked (a request answers 500, the worker lives on) instead of
  the kernel's OOM killer ending the whole process. Forked checkpoint children inherit it.
  The limit counts address space reserved, not memory used: each thread reserves its stack
  (8 MiB), and glibc reserves a malloc arena of 64 MiB for each of the first threads that
  allocate, so a worker's first journal fsync (an executor thread) would take 72 MiB of it.
  Under this limit the worker therefore keeps glibc to one arena (mallopt M_ARENA_MAX 1;
  threads share it, which costs little where the GIL serialises them anyway): a thread then
  costs its stack only. Set the limit well above the worker's VmSize in steady state.
- `max_open_files` -> RLIMIT_NOFILE. Opening past it fails with OSError(EMFILE) in the code
  that asked, sockets the server accepts included.
Only the soft limit is set, and only lowered: never above the hard limit (which an
unprivileged process cannot raise) nor above a lower soft limit already in place. A limit that
cannot be set is logged as a warning; the worker starts anyway.

Lifetime: `set_death_signal` asks the kernel (Linux PR_SET_PDEATHSIG) to signal this process
when its parent dies: a worker started directly by the router dies with it, and a checkpoint
child dies with its worker (so it never holds the tenant's lock past the worker, see
tenant/lock.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal

from contract.worker import WorkerSpec

log = logging.getLogger("switchboard.tenant")

PR_SET_PDEATHSIG = 1
M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS_UNDER_LIMIT = 1


def _load_libc() -> ctypes.CDLL | None:
    # Loaded once at import (in the zygote's preload), never in a forked child: dlopen after
    # fork() in a process with threads can wait forever on a loader lock taken at the fork.
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def set_death_signal(expected_parent: int, sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to signal us when our parent dies (Linux); exit if it already has."""
    try:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, sig)
    except AttributeError:
        pass  # not Linux: the control channel's end of file still stops a worker
    if os.getppid() != expected_parent:
        os._exit(0)


def apply_resource_limits(spec: WorkerSpec) -> None:
    """Lower this process's soft limits to the spec's (see the module docstring)."""
    if spec.max_address_space_bytes > 0:
        limit_malloc_arenas(MALLOC_ARENAS_UNDER_LIMIT)
        lower_soft_limit(resource.RLIMIT_AS, spec.max_address_space_bytes, "address space",
                         spec.tenant)
    if spec.max_open_files > 0:
        lower_soft_limit(resource.RLIMIT_NOFILE, spec.max_open_files, "open files",
                         spec.tenant)


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (see the module docstring); False where that is not glibc."""
    try:
        return _LIBC is not None and _LIBC.mallopt(M_ARENA_MAX, arenas) == 1
    except AttributeError:
        return False


def lower_soft_limit(which: int, wanted: int, what: str, tenant: str) -> int:
    """Set the soft limit `which` to at most `wanted`; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(which)
    target = wanted
    if hard != resource.RLIM_INFINITY and target > hard:
        log.warning("tenant %s: %s limit %d is above the hard limit %d; using %d",
                    tenant, what, wanted, hard, hard)
        target = hard
    if soft != resource.RLIM_INFINITY and soft <= target:
        return soft  # already as strict
    try:
        resource.setrlimit(which, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("tenant %s: cannot set the %s limit to %d: %s", tenant, what, target, exc)
        return soft
    log.info("tenant %s: %s limit set to %d", tenant, what, target)
    return target
