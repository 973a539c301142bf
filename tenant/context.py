"""The running tenant as the app sees it (runs in the tenant worker).

One worker process serves exactly one tenant, so the context is process-global:
`tenant.current()` returns it from anywhere in the app. Tests activate their own with
`activate()`.

Writes and durability. A request writes when its handler calls `execute`; every other
request only reads. A failed journal write or fsync is final for the journal's file (see
tenant/journal.py), and the command that hit it was already applied in memory. From that
moment (`durability_lost`):
- `execute` refuses: the failing command and those waiting on the same fsync raise
  `DurabilityLost`, and every later command raises it before it runs, so nothing that is not
  durable is ever acknowledged; `DurabilityGuard` answers such a request 503 "cannot make
  writes durable: <reason>" (the errno's text: no space left on device, disk quota exceeded,
  input/output error) with Retry-After;
- requests wait (`state_ready`) while the state may still hold a refused command, until the
  worker has rebuilt it from the durable files (tenant/write_recovery.py, `replace_state`);
  from then on reads are served as before, from exactly what a restart would restore;
- `resume_writes` hands in a new journal once one could be started: writes are accepted again.
`on_durability_lost` is called once per failure (the runtime starts that recovery).

Work in progress. An app declares work that must not be cut short by an idle stop or an
eviction (an import running in a background task) with `async with current().busy("import")`.
Uses are counted per name, so nested and concurrent ones with the same or different names
nest correctly. `on_busy_changed` gets the sorted names in progress (`[]` when none is left)
each time that set changes: a name's first entry, its last exit. The runtime forwards it to
the router as the `busy` event (contract/worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from tenant.app import TenantApp
from tenant.errors import (
    ClusterWriteRefused,
    CommandRejected,
    DurabilityLost,
    JournalError,
    JournalWriteError,
)
from tenant.segments import mark_all

STATE_READY_TIMEOUT_S = 30.0  # a request waits this long for a rebuild, then gets 503
MAX_WORK_NAME_CHARS = 200  # a `busy` name travels in every busy event and ping reply


class JournalLike(Protocol):
    def prepare(self, name: str, args: dict[str, Any], now: float) -> Any: ...

    def append_prepared(self, record: Any) -> Awaitable[Any]: ...


def failure_errno(error: BaseException) -> int | None:
    """The errno of the first OSError behind `error` (its causes, then its contexts)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return None


def describe_failure(error: BaseException) -> str:
    """Why writes cannot be made durable, as a user reads it: the errno's text of the first
    OSError behind `error` ("no space left on device"), else the error's own message."""
    number = failure_errno(error)
    if number is None:
        return str(error)
    text = os.strerror(number)
    return text[:1].lower() + text[1:]


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
        self.epoch = 1  # the tenant's fencing token on this host (WorkerSpec.epoch)
        self.host: str | None = None  # the owning host's id in cluster mode, else None
        self.clock = clock
        self.commands_since_checkpoint = 0
        # Set from a journal failure until a new journal is in place (`resume_writes`).
        self.durability_error: BaseException | None = None
        self.on_durability_lost: Callable[[BaseException], None] | None = None
        # Work declared with `busy`, counted per name; the callback gets the sorted names.
        self._work: Counter[str] = Counter()
        self.on_busy_changed: Callable[[list[str]], None] | None = None
        # Cleared from a journal failure until `replace_state` put the durable state back.
        self._state_clean = asyncio.Event()
        self._state_clean.set()
        # Cleared while a checkpoint waits for the journal and takes its position.
        self._writes_open = asyncio.Event()
        self._writes_open.set()

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
        """False from a journal failure until writes are back: nothing may be acknowledged,
        and no checkpoint taken, then."""
        return self.durability_error is None

    @property
    def writes_unavailable(self) -> str | None:
        """Why writes are refused ("cannot make writes durable: no space left on device"),
        or None while they are accepted."""
        if self.durability_error is None:
            return None
        return f"cannot make writes durable: {describe_failure(self.durability_error)}"

    @property
    def state_clean(self) -> bool:
        """False while the state in memory may hold a command the journal refused."""
        return self._state_clean.is_set()

    async def state_ready(self, timeout_s: float = STATE_READY_TIMEOUT_S) -> bool:
        """Wait until the state holds only durable commands; False if that took too long."""
        if self._state_clean.is_set():
            return True
        try:
            await asyncio.wait_for(self._state_clean.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def execute(self, name: str, /, **args: Any) -> Any:
        """Apply command `name` and return its result once the change is durable.

        The command is encoded for the journal first (arguments the journal cannot hold are a
        CommandRejected, with the state untouched) and runs with the arguments decoded back
        from that encoding, exactly what a replay passes it. It runs synchronously in this
        event-loop step, so no other request sees a half-applied command and the journal order
        is the apply order. When this returns, the command is in the journal and fsynced (policy
        `always`): it survives a SIGKILL of the worker. A CommandRejected from the command
        propagates and nothing is journaled. A journal failure raises DurabilityLost: the
        command is not acknowledged, and no later one is until writes are back (then a later
        command runs as usual); meanwhile a command is refused before it runs.
        """
        if not self._writes_open.is_set():
            await self._writes_open.wait()  # a checkpoint is taking its position: one fsync
        if self.durability_error is not None:
            raise self._refuse(self.durability_error)
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
                raise self._refuse(exc) from exc
            except ClusterWriteRefused as exc:  # not committed in PostgreSQL (tenant/pgstore)
                raise self._refuse(exc) from exc
        return result

    def mark_dirty(self) -> None:
        """Changes were made to `state` outside `execute` (the debug console): the next
        checkpoint writes a snapshot even if no command ran. Not journaled: until that
        checkpoint lands, a crash loses them."""
        mark_all(self.state)
        self.commands_since_checkpoint += 1

    def _refuse(self, error: BaseException) -> DurabilityLost:
        reason = f"cannot make writes durable: {describe_failure(error)}"
        mark = _refusal.get()
        if mark is not None:
            mark.reason = reason
        refused = DurabilityLost(reason)
        refused.__cause__ = error
        return refused

    def durability_lost(self, error: BaseException) -> None:
        """Record that the journal failed (the state may now hold refused commands), and tell
        the runtime, once per failure."""
        if self.durability_error is not None:
            return
        self.durability_error = error
        self._state_clean.clear()
        if self.on_durability_lost is not None:
            self.on_durability_lost(error)

    def replace_state(self, state: Any, *, journal_pos: int,
                      commands_since_checkpoint: int) -> None:
        """Put in the state rebuilt from the durable files after a journal failure: it holds
        exactly the commands up to `journal_pos`, the refused ones are gone. Requests that
        waited for it go on."""
        self.state = state
        self.journal_pos = journal_pos
        self.commands_since_checkpoint = commands_since_checkpoint
        self._state_clean.set()

    def resume_writes(self, journal: JournalLike, next_seq: int) -> None:
        """Accept writes again, into `journal` (whose first seq is `next_seq`)."""
        if next_seq != self.journal_pos + 1 or not self._state_clean.is_set():
            raise ValueError(f"a journal starting at seq {next_seq} does not follow the state "
                             f"at {self.journal_pos} (clean: {self._state_clean.is_set()})")
        self.journal = journal
        self.durability_error = None

    def drop_journal(self) -> None:
        """Forget the failed journal (the runtime closed it); writes stay refused."""
        if self.durability_error is None:
            raise ValueError("the journal has not failed")
        self.journal = None

    @property
    def work_in_progress(self) -> list[str]:
        """The names of the work declared with `busy` that is still going on, sorted, each
        once; [] when the worker is idle as far as the app knows."""
        return sorted(self._work)

    @contextlib.asynccontextmanager
    async def busy(self, work: str) -> AsyncIterator[None]:
        """Declare `work` in progress while the block runs: the router then neither stops
        the worker as idle nor evicts it (up to its max_busy_s).

            async with current().busy("import"):
                await run_import(rows)

        Counted per name: the name stays in progress until its last use ends, also when the
        block raises or is cancelled. Raises ValueError for an empty or over-long name.
        """
        if not isinstance(work, str) or not work or len(work) > MAX_WORK_NAME_CHARS:
            raise ValueError(f"a work name is a non-empty str of at most "
                             f"{MAX_WORK_NAME_CHARS} characters, not {work!r:.80}")
        self._work[work] += 1
        if self._work[work] == 1:
            self._busy_changed()
        try:
            yield
        finally:
            self._work[work] -= 1
            if self._work[work] == 0:
                del self._work[work]
                self._busy_changed()

    def _busy_changed(self) -> None:
        if self.on_busy_changed is not None:
            self.on_busy_changed(self.work_in_progress)

    @contextlib.contextmanager
    def holding_writes(self) -> Iterator[None]:
        """New commands wait at the start of `execute` while this is open (a checkpoint
        making sure its position is durable before it takes it)."""
        self._writes_open.clear()
        try:
            yield
        finally:
            self._writes_open.set()


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


@dataclass
class _Refusal:
    """Set by `execute` in the request that runs it when it refuses a command."""

    reason: str | None = None


# One per HTTP request, set by DurabilityGuard. The app's tasks see the same object (a task
# copies the context, not the object), so a refusal anywhere in the request is seen.
_refusal: ContextVar[_Refusal | None] = ContextVar("tenant_refusal", default=None)


class DurabilityGuard:
    """ASGI middleware: a request in which a write was refused gets a 503; reads pass.

    "Refused" means `execute` raised DurabilityLost during the request (the journal could
    not make that command durable, or writes are unavailable since a journal failure). The
    app's answer to that request is replaced by the 503 (its status line and body), whatever
    it was: a 2xx would acknowledge a write that is not durable, a 500 would hide why. A
    response already started before the refusal goes through unchanged. While the state is
    being rebuilt after a journal failure, requests wait for it (bounded) before they run,
    so none sees a refused command. WebSocket and lifespan traffic pass untouched.
    """

    def __init__(self, app: ASGIApp, context: TenantContext, retry_after_s: int = 1,
                 retry_in_s: Callable[[], float | None] | None = None) -> None:
        self.app = app
        self.context = context
        self.retry_after_s = retry_after_s
        self.retry_in_s = retry_in_s  # when writes are next tried again, if known

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not await self.context.state_ready():
            await self._unavailable(send, f"tenant {self.context.tenant} is restoring its "
                                          "durable state after a journal failure")
            return
        mark = _Refusal()
        token = _refusal.set(mark)
        started = replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the app's body for a start line we replaced
            if message["type"] == "http.response.start":
                if mark.reason is not None:
                    replaced = True
                    await self._unavailable(send, mark.reason)
                    return
                started = True
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as exc:
            if mark.reason is None and isinstance(exc, DurabilityLost):
                mark.reason = str(exc)
            if mark.reason is None or started:
                raise  # not ours, or too late to answer 503: the server ends the response
            if not replaced:
                # The app raised before answering (no error middleware of its own).
                replaced = True
                await self._unavailable(send, mark.reason)
        finally:
            _refusal.reset(token)

    async def _unavailable(self, send: Callable[[Message], Awaitable[None]],
                           reason: str) -> None:
        retry_after = self.retry_after_s
        retry_in = self.retry_in_s() if self.retry_in_s is not None else None
        if retry_in is not None:
            retry_after = max(retry_after, math.ceil(retry_in))
        body = json.dumps({"error": reason, "tenant": self.context.tenant}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})
