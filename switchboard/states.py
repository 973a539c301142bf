"""Tenant lifecycle states and the moves allowed between them.

    stopped -> starting -> running -> checkpointing -> running ... -> stopping -> stopped
    starting -> failed        boot failed; backs off (retry_at set) or stays until an operator acts
    running/checkpointing/stopping -> stopped   the worker died (crash, kill -9)
    any -> moved              the tenant now lives on another host

Every change goes through `transition()`, which refuses a move not listed here.
"""

from __future__ import annotations

import enum


class TenantState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    CHECKPOINTING = "checkpointing"
    STOPPING = "stopping"
    FAILED = "failed"
    MOVED = "moved"


S = TenantState
ALLOWED: dict[TenantState, frozenset[TenantState]] = {
    S.STOPPED: frozenset({S.STARTING, S.MOVED, S.FAILED}),
    S.STARTING: frozenset({S.RUNNING, S.FAILED, S.STOPPED, S.STOPPING}),
    S.RUNNING: frozenset({S.CHECKPOINTING, S.STOPPING, S.STOPPED}),
    S.CHECKPOINTING: frozenset({S.RUNNING, S.STOPPING, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED, S.MOVED}),
    S.MOVED: frozenset({S.STOPPED}),
}

# States in which a worker process may exist.
LIVE = frozenset({S.STARTING, S.RUNNING, S.CHECKPOINTING, S.STOPPING})
# States in which requests are forwarded to the worker at once.
SERVING = frozenset({S.RUNNING, S.CHECKPOINTING})


class IllegalTransition(RuntimeError):
    pass


def check_transition(current: TenantState, new: TenantState) -> None:
    if new is not current and new not in ALLOWED[current]:
        raise IllegalTransition(f"tenant cannot go from {current.value} to {new.value}")
