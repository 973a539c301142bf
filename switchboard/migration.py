"""The source's side of a tenant's move to another standalone host (DESIGN.md "Between hosts").

`switchboard migrate NAME --to ADMIN_URL` asks this host's admin API, which runs `Migrator.run`
and streams its steps back; the target's side is switchboard/receiving.py and the calls
between them switchboard/handover.py.

1. connect: `GET /v1/host` on the target: its router URL (what `moved_to` will say).
2. pre-copy: a checkpoint first when the journal since the last snapshot is long
   (`migrate_checkpoint_records`), then the newest snapshot (hard-linked into transfers/ so a
   later checkpoint cannot delete it under us) is streamed to the target, which verifies and
   stages it. The tenant serves all the while.
3. switch: "migrating to B" is recorded durably (`<data-dir>/migrations/<name>.outgoing.json`).
   Under the tenant's lifecycle lock, new requests wait (as they would for a start, bounded by
   start_timeout_s), the ones in flight finish (`migrate_drain_timeout_s`), and the worker
   stops without a final checkpoint. The journal segments after the staged snapshot's
   position (only the tail: the pause does not grow with the state) go to the target, which
   installs them, records epoch + 1 and starts the worker. Its answer is the commit point.
4. moved: the record here becomes `moved_to` = the target's router URL (epoch + 1, the
   compare-and-set of `Directory.set_placement`), the marker is removed, and the held requests
   and every later one are forwarded (switchboard/forwarding.py). The files stay as a fallback
   that is never served unless an operator reclaims them (`start NAME --reclaim`: a new epoch,
   without the target's later writes) or removes them (`rm NAME --moved-copy`).

Failures. Anything before the commit was sent (unreachable, refused, MAC mismatch, full disk,
epoch refused) leaves the tenant here and serving: the lock is released in state `stopped`
and the next request starts the worker again; the command says why and can run again. When
the commit's answer is lost, the target is asked to resolve (handover.py): committed means
moved; aborted means it serves here again; no answer means the tenant is held (503) and the
question is asked again in the background until the target answers. A router that restarts
with a marker does the same before it serves the tenant. A host a tenant came from is told
where it went next (`moved`), so forwarding chains collapse.

Test hook: SWITCHBOARD_TEST_MIGRATE_STALL="STEP:SECONDS" sleeps at STEP (staging: after the
first MiB of the snapshot went out; staged; stopped: the worker stopped, before the commit;
committed: the target answered, before this host records it), so a test can kill the source
at each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshots.durable import write_atomic
from snapshots.layout import DataLayout
from switchboard.api import TenantInfo
from switchboard.config import Config
from switchboard.directory import Directory, EpochConflict
from switchboard.errors import (
    MigrationRefused,
    SwitchboardError,
    TargetRefused,
    TargetUnreachable,
    TransferFailed,
)
from switchboard.handover import (
    Identity,
    TargetClient,
    segments_after,
    ship_snapshot,
    write_bundle,
)
from switchboard.peers import Peers
from switchboard.process import TenantProcess
from switchboard.signing import load_key
from switchboard.spawner import WorkerHandle
from switchboard.states import TenantState
from switchboard.supervisor import Supervisor

log = logging.getLogger("switchboard.migration")
S = TenantState
RESOLVE_TRIES = 3
RESOLVE_RETRY_S = 2.0
STALL_ENV = "SWITCHBOARD_TEST_MIGRATE_STALL"
Say = Callable[..., None]  # say(step, message, **fields): one event of the run, logged too


@dataclass(frozen=True)
class Outgoing:
    """The marker of a switch under way: this host must ask the target before serving."""

    name: str
    creation_id: str
    epoch: int
    target_admin: str
    target_router: str

    @property
    def identity(self) -> Identity:
        return Identity(self.name, self.creation_id, self.epoch)


class Migrator:
    def __init__(self, supervisor: Supervisor, directory: Directory, layout: DataLayout,
                 config: Config, peers: Peers) -> None:
        self.supervisor = supervisor
        self.directory = directory
        self.layout = layout
        self.config = config
        self.peers = peers
        self.active: set[str] = set()
        self.background: set[asyncio.Task[None]] = set()

    def _client(self, admin_url: str) -> TargetClient:
        return TargetClient(admin_url, load_key(self.config.key_file))

    # --- the run, as a stream of events ------------------------------------------------------

    def start(self, name: str, to_admin: str) -> AsyncIterator[dict[str, Any]]:
        """Begin moving `name` to the host whose admin API is at `to_admin`; the events as
        they happen (each a JSON object: step, message, and bytes/total while transferring),
        ending with {"step": "done"} or {"step": "failed", "error", "serving": where}. The
        move goes on if nobody reads them."""
        tenant = self.supervisor.get(name)  # UnknownTenant: 404 before anything starts
        if name in self.active:
            raise MigrationRefused(f"{name} is being migrated already")
        if tenant.state is S.MOVED:
            raise MigrationRefused(f"{name} has moved to {tenant.record.moved_to}; migrate it "
                                   "from there (its admin URL)")
        if tenant.held is not None:
            raise MigrationRefused(f"{name}: {tenant.held}")
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.active.add(name)
        task = asyncio.ensure_future(self._run(tenant, to_admin.rstrip("/"), events))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(lambda _: self.active.discard(name))

        async def stream() -> AsyncIterator[dict[str, Any]]:
            while (event := await events.get()) is not None:
                yield event

        return stream()

    async def _run(self, tenant: TenantProcess, to_admin: str,
                   events: asyncio.Queue[dict[str, Any] | None]) -> None:
        name = tenant.name

        def say(step: str, message: str, **more: Any) -> None:
            if message:
                log.info("migrating %s: %s", name, message, extra={"tenant": name})
            events.put_nowait({"step": step, "message": message, **more})

        client = self._client(to_admin)
        try:
            await self._migrate(tenant, to_admin, client, say)
        except SwitchboardError as exc:
            where = "unknown" if tenant.held else ("target" if tenant.state is S.MOVED
                                                   else "source")
            log.error("migrating %s to %s failed: %s (serving on the %s)", name, to_admin, exc,
                      where, extra={"tenant": name})
            events.put_nowait({"step": "failed", "error": str(exc), "serving": where})
        except Exception as exc:  # a bug: the tenant must still not be left stopped and held
            log.exception("migrating %s failed", name, extra={"tenant": name})
            events.put_nowait({"step": "failed", "error": f"internal error: {exc!r}",
                               "serving": "source" if tenant.state is not S.MOVED else "target"})
        finally:
            await client.close()
            events.put_nowait(None)

    async def _migrate(self, tenant: TenantProcess, to_admin: str, client: TargetClient,
                       say: Say) -> None:
        name = tenant.name
        try:
            target = await client.host()
        except TargetUnreachable as exc:
            raise TransferFailed(f"cannot reach {to_admin}: {exc}; {name} keeps serving "
                                 "here") from None
        except TargetRefused as exc:
            raise TransferFailed(str(exc)) from None
        target_router = str(target.get("router_url") or "").rstrip("/")
        if not target_router:
            raise TransferFailed(f"{to_admin} did not say its router URL")
        if target_router == self.peers.router_url:
            raise MigrationRefused(f"{to_admin} is this host")
        say("connect", f"target {to_admin} (router {target_router})")

        # 1. pre-copy, while the tenant serves
        since = tenant.journal_since_snapshot
        if tenant.serving and (since is None or since >= self.config.migrate_checkpoint_records):
            say("checkpoint", "checkpointing first")
            await tenant.checkpoint()
        who = Identity(name, tenant.record.creation_id, tenant.record.epoch)
        staged = await self._precopy(tenant, who, client, say)

        # 2. switch
        outgoing = Outgoing(name, who.creation_id, who.epoch, to_admin, target_router)
        await asyncio.to_thread(self._write_marker, outgoing)  # before anything stops
        switch_started = time.monotonic()
        phases: dict[str, float] = {}
        async with tenant.lock:
            if tenant.record.epoch != who.epoch or tenant.state is S.MOVED:
                self._remove_marker(name)
                raise MigrationRefused(f"{name} changed while it was being copied; run again")
            old_worker: WorkerHandle | None = None
            try:
                old_worker = await tenant.stop_for_move(self.config.migrate_drain_timeout_s)
                phases["stop"] = _ms_since(switch_started)
                await self._stall("stopped")
                if self.layout.generations(name)[-1:] != ([staged[0]] if staged[0] else []):
                    # A checkpoint came after the pre-copy (an idle stop...): its journal may
                    # be pruned, so the newest snapshot goes now (a longer pause, still safe).
                    say("precopy", "a checkpoint came in between: copying the newest snapshot")
                    staged = await self._precopy(tenant, who, client, say)
                reply = await self._commit(tenant, who, staged[1], client, say)
                phases["commit"] = round(_ms_since(switch_started) - phases["stop"], 1)
            except BaseException:
                if old_worker is not None:  # a start here must find the files unlocked
                    await old_worker.wait_exited(self.config.stop_timeout_s)
                if tenant.held is None:
                    self._remove_marker(name)
                raise
            await self._stall("committed")
            await self._mark_moved(tenant, outgoing)
        switch_ended = time.monotonic()
        pause_s = switch_ended - switch_started
        log.info("switched %s in %.0f ms: worker stopped %.0f, tail shipped and target started "
                 "%.0f (there: %s)", name, pause_s * 1000, phases["stop"], phases["commit"],
                 reply.get("phases_ms"), extra={"tenant": name})
        await asyncio.to_thread(self.peers.add, target_router)
        say("done", f"moved to {target_router} at epoch {reply.get('epoch')} "
                    f"(requests held {pause_s * 1000:.0f} ms)",
            moved_to=target_router, epoch=reply.get("epoch"), pid=reply.get("pid"),
            started=reply.get("started"), pause_ms=round(pause_s * 1000, 1),
            target_error=reply.get("error"), snapshot_bytes=staged[2],
            transfer_s=round(staged[3], 4), phases_ms={**phases, "target": reply.get("phases_ms")},
            switch_monotonic_s=[switch_started, switch_ended])  # CLOCK_MONOTONIC, for bench/
        origin = self.peers.origins.get(name)
        if origin and origin != to_admin:
            self._tell_origin(name, origin, Identity(name, who.creation_id, who.epoch + 1),
                              target_router)
        await asyncio.to_thread(self.peers.set_origin, name, None)

    async def _precopy(self, tenant: TenantProcess, who: Identity, client: TargetClient,
                       say: Say) -> tuple[int, int, int, float]:
        """Stream the newest snapshot; (its generation, the journal position it covers, its
        size in bytes, the seconds the transfer took)."""
        name = tenant.name
        generations = self.layout.generations(name)
        generation = generations[-1] if generations else 0
        link: Path | None = None
        if generation:
            link = self.layout.ensure_transfers_dir() / f"migrate-{name}-{time.time_ns()}.snap"
            await ship_snapshot(self.layout.snapshot_path(name, generation), link,
                                self.config.snapshot_key_path)  # segments inside: handover.py
        try:
            total = link.stat().st_size if link is not None else 0
            say("precopy", f"copying snapshot generation {generation} ({total} bytes)",
                bytes=0, total=total)
            sent = 0
            started = time.monotonic()

            async def progress(n: int) -> None:
                nonlocal sent
                first = sent == 0
                sent += n
                events_bytes(say, sent, total)
                if first:
                    await self._stall("staging")

            try:
                reply = await client.stage(who, link, generation, progress,
                                           source_router=self.peers.router_url,
                                           source_admin=self.peers.admin_url)
            except TargetUnreachable as exc:
                raise TransferFailed(f"pre-copy failed: {exc}") from None
            except TargetRefused as exc:
                raise TransferFailed(f"pre-copy refused: {exc}") from None
            took = max(time.monotonic() - started, 1e-6)
            say("staged", f"snapshot staged on the target ({total / took / 1e6:.1f} MB/s)",
                bytes=total, total=total, transfer_s=round(took, 4))
        finally:
            if link is not None:
                with contextlib.suppress(OSError):
                    link.unlink()
        await self._stall("staged")
        return generation, int(reply.get("journal_pos", 0)), total, took

    async def _commit(self, tenant: TenantProcess, who: Identity, journal_pos: int,
                      client: TargetClient, say: Say) -> dict[str, Any]:
        name = tenant.name
        segments = segments_after(self.layout.journal_dir(name), journal_pos)
        bundle = self.layout.ensure_transfers_dir() / f"migrate-{name}-{time.time_ns()}.tail"
        try:
            size = await asyncio.to_thread(write_bundle, segments, bundle)
            say("switch", f"switching: {len(segments)} journal segments ({size} bytes)",
                bytes=0, total=size)

            async def progress(n: int) -> None:
                return None

            try:
                return await client.commit(who, bundle, progress)
            except TargetRefused as exc:
                raise TransferFailed(f"the switch was refused: {exc}") from None
            except TargetUnreachable as exc:
                say("resolve", f"no answer to the switch ({exc}); asking the target")
                if await self._resolve(tenant, who, client):
                    return {"epoch": who.epoch + 1}
                raise TransferFailed(f"the switch did not land ({exc}); {name} serves here "
                                     "again") from None
        finally:
            with contextlib.suppress(OSError):
                bundle.unlink()

    async def _resolve(self, tenant: TenantProcess, who: Identity,
                       client: TargetClient) -> bool:
        """Whether the target committed. No answer after a few tries: the tenant is held
        (503) and a background task keeps asking (TransferFailed raised here)."""
        for _ in range(RESOLVE_TRIES):
            try:
                return await client.resolve(who) == "committed"
            except TargetUnreachable:
                await asyncio.sleep(RESOLVE_RETRY_S)
            except TargetRefused as exc:
                raise TransferFailed(f"the target cannot resolve the switch: {exc}") from None
        tenant.held = tenant.last_error = (
            f"migrating to {client.base}: waiting for it to say whether the switch landed")
        outgoing = self._read_marker(tenant.name)
        if outgoing is not None:
            self._spawn(self._keep_resolving(outgoing))
        raise TransferFailed(f"the target does not answer; {tenant.name} is held until it "
                             "says whether the switch landed (this host keeps asking)")

    async def _mark_moved(self, tenant: TenantProcess, outgoing: Outgoing) -> None:
        """Caller holds the tenant's lock: it is the target's now."""
        try:
            record = await self.directory.set_placement(
                tenant.name, owner=None, moved_to=outgoing.target_router,
                expect_epoch=outgoing.epoch)
        except EpochConflict:
            record = await self.directory.get(tenant.name)
        tenant.set_record(record)
        if tenant.held is not None and tenant.last_error == tenant.held:
            tenant.last_error = None
        tenant.held = None
        self._remove_marker(tenant.name)
        log.info("tenant %s is served by %s now (epoch %d); forwarding to it", tenant.name,
                 outgoing.target_router, record.epoch, extra={"tenant": tenant.name})

    # --- markers and recovery ----------------------------------------------------------------

    def _write_marker(self, outgoing: Outgoing) -> None:
        self.layout.ensure_migrations_dir()
        write_atomic(self.layout.outgoing_path(outgoing.name), json.dumps({
            "name": outgoing.name, "creation_id": outgoing.creation_id,
            "epoch": outgoing.epoch, "target_admin": outgoing.target_admin,
            "target_router": outgoing.target_router}).encode())

    def _read_marker(self, name: str) -> Outgoing | None:
        try:
            data = json.loads(self.layout.outgoing_path(name).read_text())
            return Outgoing(str(data["name"]), str(data["creation_id"]), int(data["epoch"]),
                            str(data["target_admin"]), str(data["target_router"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read the migration marker of %s: %s", name, exc)
            return None

    def _remove_marker(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.layout.outgoing_path(name).unlink()

    def recover(self) -> None:
        """At start: a switch that was under way when this router stopped is asked about
        before its tenant serves here (held until then)."""
        try:
            names = [p.name.removesuffix(".outgoing.json")
                     for p in self.layout.migrations_dir.glob("*.outgoing.json")]
        except OSError:
            return
        for name in names:
            outgoing = self._read_marker(name)
            tenant = self.supervisor.tenants.get(name)
            if outgoing is None or tenant is None:
                self._remove_marker(name)
                continue
            if tenant.state is S.MOVED:
                self._remove_marker(name)
                continue
            tenant.held = tenant.last_error = (
                f"migrating to {outgoing.target_admin}: asking it whether the switch landed")
            log.warning("tenant %s was being switched to %s when this router stopped; asking "
                        "it before serving", name, outgoing.target_admin, extra={"tenant": name})
            self._spawn(self._keep_resolving(outgoing))

    async def _keep_resolving(self, outgoing: Outgoing) -> None:
        tenant = self.supervisor.get(outgoing.name)
        client = self._client(outgoing.target_admin)
        try:
            while True:
                try:
                    outcome = await client.resolve(outgoing.identity)
                    break
                except (TargetUnreachable, TargetRefused) as exc:
                    log.warning("tenant %s held: %s", outgoing.name, exc,
                                extra={"tenant": outgoing.name})
                    await asyncio.sleep(RESOLVE_RETRY_S)
        finally:
            await client.close()
        async with tenant.lock:
            if outcome == "committed":
                await self._mark_moved(tenant, outgoing)
                self.peers.add(outgoing.target_router)
            else:
                if tenant.last_error == tenant.held:
                    tenant.last_error = None
                tenant.held = None
                self._remove_marker(outgoing.name)
                log.info("the switch of %s to %s did not land: serving it here", outgoing.name,
                         outgoing.target_admin, extra={"tenant": outgoing.name})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _stall(self, step: str) -> None:
        wanted, _, seconds = os.environ.get(STALL_ENV, "").partition(":")
        if wanted == step:
            log.warning("test hook: migration stalls %s s at %s", seconds, step)
            await asyncio.sleep(float(seconds or 0))

    # --- chains, reclaim, the moved copy -----------------------------------------------------

    def _tell_origin(self, name: str, origin_admin: str, who: Identity, moved_to: str) -> None:
        async def tell() -> None:
            client = self._client(origin_admin)
            try:
                await client.moved(who, moved_to)
                log.info("told %s that %s is on %s now", origin_admin, name, moved_to,
                         extra={"tenant": name})
            except (TargetUnreachable, TargetRefused) as exc:
                log.warning("could not tell %s that %s moved on (it forwards through here "
                            "instead): %s", origin_admin, name, exc, extra={"tenant": name})
            finally:
                await client.close()

        self._spawn(tell())

    async def moved_on(self, name: str, creation_id: str, epoch: int,
                       moved_to: str) -> TenantInfo:
        """The host `name` moved to says it lives at `moved_to` now (at `epoch`): forward
        there directly. Ignored unless this is a moved copy of it at an older epoch."""
        tenant = self.supervisor.get(name)
        async with tenant.lock:
            record = tenant.record
            if (tenant.state is S.MOVED and record.creation_id == creation_id
                    and record.epoch < epoch and moved_to.rstrip("/") != self.peers.router_url):
                tenant.set_record(await self.directory.set_placement(
                    name, owner=None, moved_to=moved_to.rstrip("/"), expect_epoch=record.epoch))
                log.info("tenant %s is on %s now: forwarding there", name, moved_to,
                         extra={"tenant": name})
                origin = self.peers.origins.get(name)
                if origin:
                    self._tell_origin(name, origin, Identity(name, creation_id, epoch), moved_to)
        return tenant.info()

    async def reclaim(self, name: str) -> TenantInfo:
        """`start NAME --reclaim`: serve the moved copy here again, at a new epoch."""
        tenant = self.supervisor.get(name)
        async with tenant.lock:
            if tenant.state is not S.MOVED:
                raise MigrationRefused(f"{name} has not moved away: nothing to reclaim")
            moved_to = tenant.record.moved_to
            tenant.set_record(await self.directory.set_placement(
                name, owner=None, moved_to=None, expect_epoch=tenant.record.epoch))
            self.peers.set_origin(name, None)
        log.warning("tenant %s reclaimed from its moved copy at epoch %d: writes made on %s "
                    "since it moved are not in it", name, tenant.record.epoch, moved_to,
                    extra={"tenant": name})
        return tenant.info()


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def events_bytes(say: Say, sent: int, total: int) -> None:
    say("bytes", "", bytes=sent, total=total)
