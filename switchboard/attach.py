"""The router's side of `switchboard attach`: what a tenant's debug console means for its
lifecycle (the worker's side is tenant/console.py; the wire is contract/worker.py's `attached`
and `paused` events and `console_open` op).

While a console session is open (or an attach was asked for and its client has not connected
yet, up to CONNECT_TIMEOUT_S), the tenant is held resident: no idle stop, no eviction. While
the worker said it may block its event loop (a console statement, a breakpoint's pdb: the
`paused` event), health pings are held, up to the hold it gave (the breakpoint deadline plus
a grace), so a worker stopped at a breakpoint is not killed as unresponsive. Each attach and
detach is logged on the router's log with the tenant's name: who (the uid the worker read with
SO_PEERCRED, and its user name), when, and how long.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from contract.console import CONNECT_TIMEOUT_S
from contract.worker import ATTACHED, PAUSED

log = logging.getLogger("switchboard.attach")
EVENTS = frozenset({ATTACHED, PAUSED})


@dataclass
class DebugHold:
    """A tenant's console state as the router knows it (on TenantProcess.debug)."""

    sessions: list[dict[str, Any]] = field(default_factory=list)
    pending_until: float = 0.0  # monotonic: an attach asked for, its client not connected yet
    paused_until: float = 0.0  # monotonic: health pings held until then

    @property
    def holds(self) -> bool:
        """The tenant stays resident (no idle stop, no eviction)."""
        return bool(self.sessions) or time.monotonic() < self.pending_until

    @property
    def pings_paused(self) -> bool:
        return time.monotonic() < self.paused_until

    def expect_client(self) -> None:
        self.pending_until = time.monotonic() + CONNECT_TIMEOUT_S

    def users(self) -> list[str]:
        return [f"{s.get('user')} (uid {s.get('uid')})" for s in self.sessions]


def holds(hold: DebugHold | None) -> bool:
    return hold is not None and hold.holds


def pings_paused(hold: DebugHold | None) -> bool:
    return hold is not None and hold.pings_paused


def on_event(tenant: str, hold: DebugHold | None, message: dict[str, Any]) -> DebugHold:
    """Apply an `attached` or `paused` event; returns the tenant's (new) hold."""
    hold = hold if hold is not None else DebugHold()
    if message.get("event") == PAUSED:
        hold_s = message.get("hold_s")
        seconds = float(hold_s) if isinstance(hold_s, int | float) else 0.0
        hold.paused_until = time.monotonic() + max(0.0, seconds)
        return hold
    sessions = [s for s in message.get("sessions") or [] if isinstance(s, dict)]
    before = {_key(s): s for s in hold.sessions}
    after = {_key(s): s for s in sessions}
    for key, session in after.items():
        if key not in before:
            hold.pending_until = 0.0
            log.info("tenant %s: console attached by %s (uid %s, pid %s)%s", tenant,
                     session.get("user"), session.get("uid"), session.get("pid"),
                     " read-only" if session.get("read_only") else "",
                     extra={"tenant": tenant})
    for key, session in before.items():
        if key not in after:
            since = session.get("since")
            took = time.time() - since if isinstance(since, int | float) else 0.0
            log.info("tenant %s: console of %s (uid %s) detached after %.1fs", tenant,
                     session.get("user"), session.get("uid"), took, extra={"tenant": tenant})
    hold.sessions = sessions
    return hold


def _key(session: dict[str, Any]) -> tuple[Any, ...]:
    return (session.get("uid"), session.get("pid"), session.get("since"))
