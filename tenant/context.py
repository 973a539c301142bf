"""The running tenant as the app sees it (runs in the tenant worker).

One worker process serves exactly one tenant, so the context is process-global:
`tenant.current()` returns it from anywhere in the app. Tests activate their own with
`activate()`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from tenant.app import TenantApp


class JournalLike(Protocol):
    def append(self, name: str, args: dict[str, Any], now: float) -> Any: ...


class TenantContext:
    """The tenant's state, its app and the one way to change the state: `execute`."""

    def __init__(
        self,
        app: TenantApp,
        tenant: str,
        state: Any,
        *,
        journal: JournalLike | None = None,
        journal_pos: int = 0,
        code_version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.tenant = tenant
        self.state = state
        self.journal = journal
        self.journal_pos = journal_pos  # seq of the last command applied to `state`
        self.code_version = code_version or app.app_version
        self.clock = clock
        self.commands_since_checkpoint = 0

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def schema_version(self) -> int:
        return self.app.schema_version

    @property
    def dirty(self) -> bool:
        return self.commands_since_checkpoint > 0

    async def execute(self, name: str, /, **args: Any) -> Any:
        """Apply command `name` and return its result once the change is durable.

        The command runs synchronously in this event-loop step, so no other request sees a
        half-applied command and the journal order is the apply order. When this returns, the
        command is in the journal and fsynced (policy `always`): it survives a SIGKILL of the
        worker. A CommandRejected from the command propagates and nothing is journaled.
        """
        now = self.clock()
        result = self.app.apply(self.state, name, args, now)
        self.journal_pos += 1
        self.commands_since_checkpoint += 1
        if self.journal is not None:
            await self.journal.append(name, args, now)
        return result


_current: TenantContext | None = None


def activate(context: TenantContext | None) -> None:
    global _current
    _current = context


def current() -> TenantContext:
    if _current is None:
        raise RuntimeError("no tenant is active in this process (tenant.current() outside a worker)")
    return _current
