"""The running tenant as the app sees it (runs in the tenant worker).

One worker process serves exactly one tenant, so the context is process-global:
`tenant.current()` returns it from anywhere in the app. Tests activate their own with
`activate()`.

A failed journal write or fsync is final (see tenant/journal.py): from then on the state in
memory may hold commands that are not on disk. `execute` then raises `DurabilityLost` for that
command and every later one, calls `on_durability_lost` once (the runtime stops the worker so
the next start restores from durable state), and `DurabilityGuard` turns every response of the
worker into a 503 from that moment on, so nothing that is not durable is ever acknowledged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tenant.app import TenantApp
from tenant.errors import CommandRejected, DurabilityLost, JournalError, JournalWriteError


class JournalLike(Protocol):
    def prepare(self, name: str, args: dict[str, Any], now: float) -> Any: ...

    def append_prepared(self, record: Any) -> Awaitable[Any]: ...


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
        # Set once the journal fails: the state may then be ahead of what is durable.
        self.durability_error: BaseException | None = None
        self.on_durability_lost: Callable[[BaseException], None] | None = None

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def schema_version(self) -> int:
        return self.app.schema_version

    @property
    def dirty(self) -> bool:
        return self.commands_since_checkpoint > 0

    @property
    def durable(self) -> bool:
        """False once a journal write or fsync has failed: nothing may be acknowledged then."""
        return self.durability_error is None

    async def execute(self, name: str, /, **args: Any) -> Any:
        """Apply command `name` and return its result once the change is durable.

        The command is encoded for the journal first (arguments the journal cannot hold are a
        CommandRejected, with the state untouched) and runs with the arguments decoded back
        from that encoding, exactly what a replay passes it. It runs synchronously in this
        event-loop step, so no other request sees a half-applied command and the journal order
        is the apply order. When this returns, the command is in the journal and fsynced (policy
        `always`): it survives a SIGKILL of the worker. A CommandRejected from the command
        propagates and nothing is journaled. A journal failure raises DurabilityLost: the
        command is not acknowledged, and neither is any later one.
        """
        if self.durability_error is not None:
            raise DurabilityLost(
                f"tenant {self.tenant} stopped accepting writes: {self.durability_error}"
            ) from self.durability_error
        now = self.clock()
        prepared = None
        if self.journal is not None:
            try:
                prepared = self.journal.prepare(name, args, now)
            except JournalError as exc:
                raise CommandRejected(str(exc)) from exc
            # The args as the journal will give them back at replay (a tuple is a list
            # there): applying the same values live keeps replay exact.
            args = prepared.args
        result = self.app.apply(self.state, name, args, now)
        self.journal_pos += 1
        self.commands_since_checkpoint += 1
        if self.journal is not None:
            try:
                await self.journal.append_prepared(prepared)
            except JournalWriteError as exc:
                self.durability_lost(exc)
                raise DurabilityLost(
                    f"command {name!r} of tenant {self.tenant} is not durable: {exc}"
                ) from exc
        return result

    def durability_lost(self, error: BaseException) -> None:
        """Record that the journal failed, and tell the runtime (once)."""
        if self.durability_error is not None:
            return
        self.durability_error = error
        if self.on_durability_lost is not None:
            self.on_durability_lost(error)


_current: TenantContext | None = None


def activate(context: TenantContext | None) -> None:
    global _current
    _current = context


def current() -> TenantContext:
    if _current is None:
        raise RuntimeError(
            "no tenant is active in this process (tenant.current() outside a worker)"
        )
    return _current


ASGIApp = Callable[..., Awaitable[None]]
Message = dict[str, Any]


class DurabilityGuard:
    """ASGI middleware: once the context has lost durability, every HTTP answer is a 503.

    The app's own answer is replaced (its status line and body), whatever it was: a 2xx would
    acknowledge a write that is not durable, a 500 would hide why. A response already started
    before the failure goes through unchanged. WebSocket and lifespan traffic pass untouched.
    """

    def __init__(self, app: ASGIApp, context: TenantContext, retry_after_s: int = 1) -> None:
        self.app = app
        self.context = context
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.context.durable:
            await self._unavailable(send)
            return
        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's body for a start line we replaced
            if message["type"] == "http.response.start" and not self.context.durable:
                replaced = True
                await self._unavailable(send)
                return
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if self.context.durable:
                raise
            if not replaced:
                # The app raised before answering (no error middleware of its own).
                replaced = True
                await self._unavailable(send)

    async def _unavailable(self, send: Callable[[Message], Awaitable[None]]) -> None:
        body = json.dumps({
            "error": f"tenant {self.context.tenant} cannot make writes durable "
                     f"({self.context.durability_error}); it restarts from its durable state",
        }).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})
