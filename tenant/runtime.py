"""The tenant worker: restore one tenant's state, serve its app, journal, checkpoint.

Runs in the tenant worker process, which the router starts either by asking the zygote to fork
(tenant/zygote.py) or as a fresh interpreter (`python -m tenant`). Either way the worker gets:
a `WorkerSpec` (JSON), the listening socket for the tenant's port (already bound by the router,
so connections queue in the kernel while the worker restores) and its end of the control
channel (tenant/control.py).

Before anything else the worker lowers its own resource limits (tenant/limits.py) and takes
its tenant's lock (tenant/lock.py): a second worker for a tenant that has a live one refuses to
start, whatever started it.

Restore = newest valid snapshot + replay of the journal after the snapshot's position. A
corrupt newest snapshot falls back a generation (loudly: a warning goes to the router); if
snapshot files exist but none verifies, the worker refuses to start rather than serve an
empty tenant over existing data.

A journal failure while serving (a full disk) does not end the worker: writes are refused,
reads go on, and writes come back by themselves (tenant/write_recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from contract.logs import JsonFormatter
from contract.serving import Server
from contract.worker import (
    BOOT_FAILED,
    BOOT_FAILED_EXIT,
    BUSY,
    CHECKPOINT,
    CHECKPOINT_FAILED,
    CHECKPOINTED,
    CONSOLE_OPEN,
    DURABILITY_LOST_EXIT,
    FENCED_EXIT,
    PARKED,
    PING,
    PROTOCOL_VERSION,
    READY,
    STOP,
    FsyncLatency,
    WorkerSpec,
    decode,
)
from snapshots.store import LocalStore
from tenant.activity import ActivityMeter
from tenant.app import TenantApp
from tenant.checkpoint import Checkpointer, CheckpointFailed, CheckpointOutcome
from tenant.console import ConsoleServer
from tenant.context import DurabilityGuard, TenantContext, activate
from tenant.control import open_channel
from tenant.errors import JournalError, TenantError, TenantLocked
from tenant.journal import Journal
from tenant.lazyload import LazyLoader, watch_faults
from tenant.limits import apply_resource_limits, set_death_signal
from tenant.lock import TenantLock
from tenant.output import OutputCapture
from tenant.recovery import (
    RecoveredState,
    journal_signing,
    recover_state,
    replay_journal,
    store_for,
)
from tenant.requestlog import RequestLog
from tenant.write_recovery import WriteRecovery

if TYPE_CHECKING:
    from tenant.pgjournal import ClusterSide

log = logging.getLogger("switchboard.tenant")

DRAIN_TIMEOUT_S = 5.0  # a stopping worker gives responses in flight this long to finish


def load_app(spec: str) -> TenantApp:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app")
    if not isinstance(app, TenantApp):
        raise TypeError(f"{spec} is a {type(app).__name__}, not a tenant.TenantApp")
    return app


@dataclass
class Restored:
    context: TenantContext
    journal: Journal
    generation: int | None
    warnings: list[str]
    snapshot_bytes: int = 0  # the snapshot file it started from (0: none)


def restore(app: TenantApp, spec: WorkerSpec, store: LocalStore,
            recovered: RecoveredState | None = None, cluster: ClusterSide | None = None
            ) -> Restored:
    """Recover the state (tenant/recovery.py; or take the one a parked worker recovered) and
    open the journal for appending after it. In cluster mode the local files were just put
    there from PostgreSQL and its journal tail is applied on top (tenant/pgjournal.py)."""
    if recovered is None:
        recovered = recover_state(app, store, spec.tenant)
        if cluster is not None:
            cluster.replay_tail(app, recovered)
    journal_dir = store.layout.journal_dir(spec.tenant)
    if cluster is not None:
        journal: Journal = cluster.open_journal(
            journal_dir, next_seq=recovered.journal_pos + 1,
            signing=journal_signing(store, spec.tenant))
    else:
        journal = Journal.open(
            journal_dir, next_seq=recovered.journal_pos + 1,
            fsync_policy=spec.journal_fsync, signing=journal_signing(store, spec.tenant),
        )
    context = TenantContext(app, spec.tenant, recovered.state, journal=journal,
                            journal_pos=recovered.journal_pos, code_version=spec.code_version)
    context.epoch, context.host = spec.epoch, spec.host_id  # what /api/worker shows
    # Replayed commands and upgrades are not in any snapshot yet: the next checkpoint writes them.
    context.commands_since_checkpoint = recovered.replayed + (1 if recovered.rewritten else 0)
    return Restored(context, journal, recovered.generation, recovered.warnings,
                    recovered.snapshot_bytes)


class Worker:
    """One tenant's process: the uvicorn server, the control channel and the checkpointer."""

    def __init__(self, spec: WorkerSpec, listen_fd: int, control_fd: int) -> None:
        self.spec = spec
        self.listen_fd = listen_fd
        self.control_fd = control_fd
        self.stop_requested = asyncio.Event()
        self.exit_code = 0
        # A stop for a move to another host ({"op": "stop", "checkpoint": false}): the
        # journal since the staged snapshot is what the target replays, so no checkpoint.
        self.final_checkpoint_wanted = True
        self.journal_closed = asyncio.Event()  # set once nothing more can be written
        self.fsync_latency = FsyncLatency()  # the ping reply's "fsync"

    async def run(self) -> int:
        channel = await open_channel(self.control_fd)
        self.channel = channel
        try:
            store = store_for(self.spec)  # signs with spec.snapshot_key_file's key
            lock = TenantLock.acquire(store.layout, self.spec.tenant)
        except TenantLocked as exc:
            return await self.boot_failed(str(exc), exc)
        except Exception as exc:
            return await self.boot_failed(_describe(exc), exc)
        try:
            return await self.serve(store)
        finally:
            # Only now is every write of ours done: the final checkpoint (in-process) and the
            # journal's last fsync. A checkpoint child still running keeps the lock held.
            lock.release()

    async def boot_failed(self, detail: str, exc: BaseException | None = None) -> int:
        log.error("tenant %s failed to boot: %s", self.spec.tenant, detail,
                  exc_info=exc is not None and not isinstance(exc, TenantError))
        self.channel.send({"event": BOOT_FAILED, "error": detail})
        with contextlib.suppress(ConnectionError):
            await self.channel.writer.drain()
        return BOOT_FAILED_EXIT

    async def serve(self, store: LocalStore) -> int:
        """Restore, serve until asked to stop (or the router is gone), then save and return
        the exit status. Runs with the tenant's lock held."""
        channel = self.channel
        try:
            app = load_app(self.spec.app)
            watch_faults(self.spec.tenant)  # a damaged segment: tenant/lazyload.py
            restore_started = time.monotonic()
            if self.spec.park:
                restored, restore_s = await self.parked_restore(app, store)
            else:
                cluster = None
                if self.spec.cluster_url is not None:  # the durable copy is in PostgreSQL
                    from tenant.pgjournal import ClusterSide
                    cluster = ClusterSide(self.spec, store)
                    cluster.materialize()
                restored = restore(app, self.spec, store, cluster=cluster)
                restore_s = time.monotonic() - restore_started
        except Exception as exc:
            return await self.boot_failed(_describe(exc), exc)
        for warning in restored.warnings:
            log.warning("tenant %s: %s", self.spec.tenant, warning)
        # The restored state lives as long as the worker: keep the cyclic collector from
        # walking (and, in a forked checkpoint, copying) all of it on every full collection.
        # Reference counting still frees what commands delete.
        gc.freeze()
        if app.asgi is None:
            return await self.boot_failed(f"{self.spec.app} has no asgi app")
        activate(restored.context)
        self.context = restored.context
        self.checkpointer = Checkpointer(
            restored.context, store, restored.journal, generation=restored.generation,
            close_in_child=(self.control_fd, self.listen_fd), notify=channel.send,
        )
        self.recovery = WriteRecovery(
            restored.context, store, self.checkpointer, fsync_policy=self.spec.journal_fsync,
            notify=channel.send, on_fatal=self.cannot_recover,
        )
        restored.context.on_durability_lost = self.recovery.journal_failed
        restored.context.on_busy_changed = self.busy_changed
        restored.journal.on_failure = restored.context.durability_lost
        restored.journal.on_fsync = self.fsync_latency.observe
        if hasattr(restored.journal, "on_fenced"):  # cluster mode (tenant/pgjournal.py)
            restored.journal.on_fenced = self.fenced
        # ActivityMeter: the router hears of requests it did not relay (direct mode).
        self.lazy = LazyLoader(DurabilityGuard(
            app.asgi, restored.context, retry_in_s=self.recovery.retry_in_s),
            restored.context, self.segment_fault)  # segments load after the first response
        requests = RequestLog(ActivityMeter(self.lazy, channel.send))
        # The debug console (listens only once the router asks: console_open).
        self.console = ConsoleServer(restored.context, self.checkpointer, requests,
                                     channel.send, restored.context.code_version)
        server = self._make_server(requests)
        sock = socket.socket(fileno=self.listen_fd)
        await server.start(sockets=[sock])
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        channel.send({
            "event": READY, "pid": os.getpid(), "port": self.spec.port,
            "journal_pos": restored.context.journal_pos, "generation": restored.generation,
            "warnings": restored.warnings, "protocol": PROTOCOL_VERSION,
            "restore_s": restore_s, "restore_bytes": restored.snapshot_bytes,
        })
        self.lazy.start()
        control_task = asyncio.ensure_future(channel.serve(self.handle_control))
        ticker = asyncio.ensure_future(server.run())
        stop_task = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({control_task, stop_task, ticker}, return_when=asyncio.FIRST_COMPLETED)
        # Router gone (EOF), asked to stop, or SIGTERM: drain, checkpoint if dirty, exit.
        ticker.cancel()
        self.lazy.close()
        await server.drain(DRAIN_TIMEOUT_S)
        await self.console.close()
        await self.recovery.close()
        if self.final_checkpoint_wanted:
            await self.final_checkpoint()
        else:
            self.checkpointer.close()  # nor a retry of an earlier one: the journal is the tail
        await self.close_journal()
        self.journal_closed.set()  # a stop for a move gets its answer now
        for _ in range(3):  # the answering task's turn, then its bytes on their way
            await asyncio.sleep(0)
        with contextlib.suppress(ConnectionError):
            await self.channel.writer.drain()
        for task in (control_task, stop_task):
            task.cancel()
        return self.exit_code

    async def parked_restore(self, app: TenantApp, store: LocalStore) -> tuple[Restored, float]:
        """spec.park (contract/worker.py): restore the snapshot now, report `parked`, and
        replay the journal only once the router's `resume` comes (a migration's journal tail
        is in place by then). Returns the restore and the seconds it worked (not waited)."""
        started = time.monotonic()
        cluster = None
        if self.spec.cluster_url is not None:  # pre-warmed before its owner changes to here
            from tenant.pgjournal import ClusterSide
            cluster = ClusterSide(self.spec, store)
            cluster.materialize(fenced=False)
        recovered = recover_state(app, store, self.spec.tenant)
        gc.freeze()  # as after any restore: no full collection over the state while it waits
        worked = time.monotonic() - started
        self.channel.send({"event": PARKED, "journal_pos": recovered.journal_pos,
                           "restore_s": worked})
        line = await self.channel.reader.readline()
        if not line:
            raise TenantError("the router went away while the worker was parked")
        request = decode(line)
        started = time.monotonic()
        if cluster is not None:  # the owner is this host now: the tail is in PostgreSQL
            cluster.check()
            cluster.replay_tail(app, recovered)
        else:
            replay_journal(app, store, self.spec.tenant, recovered)
        restored = restore(app, self.spec, store, recovered, cluster=cluster)
        self.channel.send({"id": request.get("id"), "ok": True,
                           "journal_pos": recovered.journal_pos})
        return restored, worked + time.monotonic() - started

    def _make_server(self, asgi: Any) -> Server:
        return Server(
            asgi,
            root_path=self.spec.root_path,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=True,
            # Over a Unix socket only the router (and worker_group's web server) can reach
            # the worker: its forwarding headers are the ones to believe.
            forwarded_allow_ips="*" if self.spec.socket_path else "127.0.0.1,::1",
            timeout_keep_alive=3600,  # the router owns keep-alive; it closes idle connections
            timeout_graceful_shutdown=5,
            http="httptools",
            ws="websockets-sansio",
        )

    def busy_changed(self, work: list[str]) -> None:
        """The app's declared work in progress changed (TenantContext.busy): tell the router,
        which keeps a busy worker resident."""
        self.channel.send({"event": BUSY, "work": work})

    def fenced(self, error: BaseException) -> None:
        """Cluster mode: another host owns the tenant now (or this host's lease is gone).
        Writes already get 503; stop serving at once, without a checkpoint, and exit with
        FENCED_EXIT so the router knows this is not a crash."""
        log.error("tenant %s: fenced: %s", self.spec.tenant, error)
        self.exit_code = FENCED_EXIT
        self.final_checkpoint_wanted = False
        self.stop_requested.set()

    def segment_fault(self, error: BaseException) -> None:
        """A segment of the state failed its checksum (tenant/lazyload.py): exit without a
        checkpoint (the state misses that segment); the next start falls back a generation."""
        self.final_checkpoint_wanted = False
        self.cannot_recover(error)

    def cannot_recover(self, error: BaseException) -> None:
        """The journal failed and the durable state cannot be read back to serve it: exit, so
        the next start restores from disk. No final checkpoint: the state may hold refused
        commands (the checkpointer refuses it)."""
        log.error("tenant %s: exiting to restart from durable state: %s",
                  self.spec.tenant, error)
        self.exit_code = DURABILITY_LOST_EXIT
        self.stop_requested.set()

    async def close_journal(self) -> None:
        """The last fsync of the journal in use (none while writes are unavailable)."""
        journal = self.context.journal
        if not isinstance(journal, Journal):
            return
        try:
            await journal.close()
        except JournalError as exc:
            # Nothing waits on it any more: under "always" every acknowledged write was
            # fsynced already; under the relaxed policies this is the loss they accept.
            log.error("tenant %s: closing the journal failed: %s", self.spec.tenant, exc)

    async def final_checkpoint(self) -> None:
        self.checkpointer.close()
        try:
            outcome = await self.checkpointer.checkpoint(fork=False)
        except CheckpointFailed as exc:
            # The journal still holds every acknowledged write: the next start replays it.
            log.error("tenant %s: final checkpoint failed, journal kept: %s", self.spec.tenant, exc)
            self.channel.send({"event": CHECKPOINT_FAILED, "error": str(exc)})
        else:
            if outcome.changed:  # so the router's `ls` shows the generation a stop wrote
                self.channel.send(_checkpointed(outcome))
        with contextlib.suppress(ConnectionError):
            await self.channel.writer.drain()

    async def handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == PING:
            return {"journal_pos": self.context.journal_pos, "dirty": self.context.dirty,
                    "journal_since_snapshot": self.context.commands_since_checkpoint,
                    "checkpointing": self.checkpointer.running,
                    "generation": self.checkpointer.generation,
                    "unsaved": self.checkpointer.unsaved,
                    "checkpoint_error": self.checkpointer.last_error,
                    "writes_unavailable": self.context.writes_unavailable,
                    "busy": self.context.work_in_progress,
                    "fsync": self.fsync_latency.take()}
        if op == CHECKPOINT:
            try:
                outcome = await self.checkpointer.checkpoint(fork=True)
            except CheckpointFailed as exc:
                self.channel.send({"event": CHECKPOINT_FAILED, "error": str(exc)})
                raise
            if outcome.changed:
                self.channel.send(_checkpointed(outcome))
            return {"changed": outcome.changed, "generation": outcome.generation,
                    "journal_pos": outcome.journal_pos}
        if op == STOP:
            if request.get("checkpoint") is False:  # a move: answered once the journal is final
                self.final_checkpoint_wanted = False
                self.stop_requested.set()
                await self.journal_closed.wait()
                return {"journal_closed": True}
            self.stop_requested.set()
            return {}
        if op == CONSOLE_OPEN:
            return await self.console.open(str(request["path"]),
                                           float(request.get("breakpoint_timeout_s", 300)))
        raise ValueError(f"unknown control op {op!r}")


def _checkpointed(outcome: CheckpointOutcome) -> dict[str, Any]:
    """The `checkpointed` event (contract/worker.py) for a checkpoint that landed."""
    return {"event": CHECKPOINTED, "generation": outcome.generation,
            "journal_pos": outcome.journal_pos, "duration_s": outcome.duration_s,
            "bytes": outcome.bytes}


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def configure_logging(spec: WorkerSpec) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if spec.log_format == "json":
        handler.setFormatter(JsonFormatter(tenant=spec.tenant))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s tenant {spec.tenant} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(spec.log_level.upper())


def worker_title(spec: WorkerSpec) -> str:
    """`switchboard: tenant acme :20013`, or `... run/12.sock` for a Unix-socket worker."""
    where = f"run/{os.path.basename(spec.socket_path)}" if spec.socket_path else f":{spec.port}"
    return f"switchboard: tenant {spec.tenant} {where}"


def worker_main(spec: WorkerSpec, listen_fd: int, control_fd: int, *, parent: int | None) -> int:
    """Entry point of a worker process, after fork or in a fresh interpreter.

    `parent` is the router's PID when the router started us directly: we then also die with it
    through PR_SET_PDEATHSIG. Forked by the zygote, `parent` is None: the zygote's death must
    not take tenants down, and the control channel's end of file covers the router's death.
    """
    import setproctitle

    setproctitle.setproctitle(worker_title(spec))
    if parent is not None:
        set_death_signal(parent)
    configure_logging(spec)
    # Into <data-dir>/logs/<name>.log from here on (the zygote's rehearsal has no log file).
    output = OutputCapture.start(spec) if spec.log_file else None
    try:
        return _run_worker(spec, listen_fd, control_fd)
    finally:
        if output is not None:
            output.close()


def _run_worker(spec: WorkerSpec, listen_fd: int, control_fd: int) -> int:
    apply_resource_limits(spec)  # before the restore: it is what allocates most
    if spec.code_path:
        sys.path.insert(0, spec.code_path)
    started = time.monotonic()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    code = int(runner(Worker(spec, listen_fd, control_fd).run()))
    log.info("tenant %s exiting after %.1fs", spec.tenant, time.monotonic() - started)
    return code
