"""Durability: an acknowledged write survives kill -9 of the worker, whenever it lands; a failed
checkpoint is retried with backoff; a journal that fails never acknowledges the command it
refused (what happens next on a full disk is in tests/test_disk_full.py).

The kill loop runs the demo app under a real router, real workers and real fsync. The
in-process tests drive TenantContext, Checkpointer and DurabilityGuard directly.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import tenant.checkpoint as checkpoint_mod
from snapshots.errors import SnapshotWriteError
from snapshots.store import LocalStore
from tenant import CommandRejected, TenantContext
from tenant.checkpoint import Checkpointer, CheckpointFailed
from tenant.context import DurabilityGuard
from tenant.errors import DurabilityLost, JournalWriteError
from tenant.journal import Journal, read_records
from tests.apps import schema_v3
from tests.conftest import Router, alive, get_ok

ROUTER_ENV = {"SWITCHBOARD_CRASH_LOOP_CRASHES": "1000"}  # these tests kill workers often


# ---- 1: kill -9 right after a 2xx write, 200 times ----------------------------------------------


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9_at_random_moments(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(env=ROUTER_ENV).start()
    router.create("crash")
    rng = random.Random(20240229)
    acked: dict[int, dict[str, Any]] = {}
    racing_acks = 0
    started = time.monotonic()
    with router.client(timeout=30) as client, router.client(timeout=30) as racer:
        previous_pid = None
        for round_no in range(200):
            pid = int(get_ok(client, "/t/crash/api/worker").json()["pid"])
            assert pid != previous_pid, "the killed worker is still serving"
            previous_pid = pid
            fields = {"round": round_no, "text": f"record {round_no}"}
            response = client.post("/t/crash/api/tables/t/records", json=fields)
            assert response.status_code == 201, response.text
            acked[response.json()["id"]] = fields

            # Every few rounds a second write is still in flight when the kill lands: it counts
            # only if it was acknowledged.
            race: dict[str, Any] = {}
            thread = None
            if round_no % 4 == 0:
                race_fields = {"round": round_no, "text": "racing"}

                def send(fields: dict[str, Any] = race_fields,
                         race: dict[str, Any] = race) -> None:
                    try:
                        race["response"] = racer.post("/t/crash/api/tables/t/records",
                                                      json=fields)
                    except httpx.TransportError as exc:
                        race["error"] = exc

                thread = threading.Thread(target=send)
                thread.start()
            time.sleep(rng.uniform(0, 0.020))
            os.kill(pid, signal.SIGKILL)
            if thread is not None:
                thread.join(30)
                assert not thread.is_alive()
                answer = race.get("response")
                if answer is not None and answer.status_code == 201:
                    acked[answer.json()["id"]] = race_fields
                    racing_acks += 1

            listing = get_ok(client, "/t/crash/api/tables/t/records?limit=1000").json()
            found = {r["id"]: r["fields"] for r in listing["records"]}
            missing = {k: v for k, v in acked.items() if found.get(k) != v}
            assert not missing, f"round {round_no}: acknowledged records lost: {missing}"
            assert alive(pid) is False
    elapsed = time.monotonic() - started
    print(f"\n200 kill -9 rounds in {elapsed:.1f}s; {len(acked)} acknowledged records "
          f"({racing_acks} acknowledged while a kill raced them), none lost")
    assert elapsed < 120


# ---- a failed checkpoint is retried with backoff ------------------------------------------------


class FlakyStore(LocalStore):
    """A LocalStore whose saves fail while `failing` is set (in the forked child too)."""

    failing = True

    def save(self, tenant: str, payload: Any, **kw: Any) -> Any:
        if self.failing:
            raise SnapshotWriteError("cannot write: [Errno 28] No space left on device")
        return super().save(tenant, payload, **kw)


def test_failed_checkpoints_retry_with_doubling_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint_mod, "RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(checkpoint_mod, "RETRY_MAX_S", 0.2)
    store = FlakyStore.in_data_dir(tmp_path)
    events: list[dict[str, Any]] = []

    async def main() -> None:
        journal = Journal.open(store.layout.journal_dir("acme"), next_seq=1)
        ctx = TenantContext(schema_v3.app, "acme", schema_v3.initial_state(), journal=journal)
        checkpointer = Checkpointer(ctx, store, journal, generation=None, notify=events.append)
        await ctx.execute("put", name="a", qty=1)
        with pytest.raises(CheckpointFailed, match="No space left"):
            await checkpointer.checkpoint()
        assert checkpointer.unsaved and checkpointer.retry_delay_s == 0.05
        deadline = time.monotonic() + 10
        while len(events) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [e["event"] for e in events[:4]] == ["checkpoint_failed"] * 4
        assert [e["retry_in_s"] for e in events[:4]] == [0.1, 0.2, 0.2, 0.2]  # doubles, capped
        assert ctx.dirty and not store.generations("acme")

        store.failing = False
        while not any(e["event"] == "checkpointed" for e in events):
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.01)
        assert events[-1] == {"event": "checkpointed", "generation": 1, "journal_pos": 1}
        assert not checkpointer.unsaved and checkpointer.retry_delay_s is None
        assert not ctx.dirty
        checkpointer.close()
        await journal.close()

    asyncio.run(main())


# ---- a journal that failed never acknowledges again ---------------------------------------------


class BrokenJournal:
    """Encodes like the real journal; every durability wait fails as a failed fsync does."""

    def __init__(self) -> None:
        self.appended: list[str] = []
        self.rotations = 0

    def prepare(self, name: str, args: dict[str, Any], now: float) -> Any:
        return Journal.prepare(name, args, now)

    def append_prepared(self, record: Any) -> Any:
        self.appended.append(record.name)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_exception(JournalWriteError("fsync failed: [Errno 5] Input/output error"))
        return future

    def rotate(self) -> None:
        self.rotations += 1


def test_a_journal_failure_is_never_acknowledged_and_later_writes_are_refused_unrun(
    tmp_path: Path,
) -> None:
    journal = BrokenJournal()
    ctx = TenantContext(schema_v3.app, "acme", schema_v3.initial_state(), journal=journal)
    lost: list[BaseException] = []
    ctx.on_durability_lost = lost.append
    guarded = DurabilityGuard(schema_v3.app.asgi, ctx)
    import tenant as tenant_pkg

    async def main() -> None:
        tenant_pkg.activate(ctx)
        try:
            transport = httpx.ASGITransport(app=guarded)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/items")).status_code == 200
                # The app does not catch it; Starlette would answer 500. The guard says 503.
                response = await client.post("/put", json={"name": "a", "qty": 1})
                assert response.status_code == 503
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"].startswith("cannot make writes durable: ")
                assert len(lost) == 1 and isinstance(lost[0], JournalWriteError)
                # Reads wait until the worker has rebuilt the state without the refused
                # command (tests/test_disk_full.py); writes are refused before they run.
            with pytest.raises(DurabilityLost, match="cannot make writes durable"):
                await ctx.execute("put", name="b", qty=2)
            assert journal.appended == ["put"]  # the second command never ran
            checkpointer = Checkpointer(ctx, LocalStore.in_data_dir(tmp_path), journal,
                                        generation=None)
            with pytest.raises(CheckpointFailed, match="refused"):
                await checkpointer.checkpoint(fork=False)
            assert not LocalStore.in_data_dir(tmp_path).generations("acme")
        finally:
            tenant_pkg.activate(None)

    asyncio.run(main())


def test_a_command_the_journal_cannot_hold_is_rejected_before_it_runs(tmp_path: Path) -> None:
    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=1)
        ctx = TenantContext(schema_v3.app, "acme", schema_v3.initial_state(), journal=journal)
        with pytest.raises(CommandRejected, match="cannot encode"):
            await ctx.execute("put", name="a", qty=1, tags=[object()])
        assert ctx.state["items"] == {} and ctx.journal_pos == 0
        await ctx.execute("put", name="b", qty=2)  # seqs stay aligned with the state
        await journal.close()
        assert [(r.seq, r.args["name"]) for r in read_records(tmp_path, 0).records] == [(1, "b")]
        assert ctx.journal_pos == 1

    asyncio.run(main())


# ---- the journal is kept back to the oldest kept generation -------------------------------------


def test_every_kept_generation_can_be_restored_with_the_journal(tmp_path: Path) -> None:
    """Checkpointer prunes only what the oldest kept snapshot covers, so a restore that falls
    back to any kept generation still finds all the commands after it."""
    from contract.worker import WorkerSpec
    from tenant.runtime import restore

    spec = WorkerSpec(tenant="acme", port=0, data_dir=str(tmp_path), app="x:app")
    store = LocalStore.in_data_dir(tmp_path, keep_generations=3)

    async def build() -> dict[str, Any]:
        restored = restore(schema_v3.app, spec, store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        for generation in range(1, 6):
            for i in range(3):
                await restored.context.execute("put", name=f"g{generation}-{i}", qty=i)
            outcome = await checkpointer.checkpoint(fork=False)
            assert outcome.generation == generation
        await restored.context.execute("put", name="tail", qty=9)
        await restored.journal.close()
        return schema_v3.view(restored.context.state)

    expected = asyncio.run(build())
    kept = [info.generation for info in store.generations("acme")]
    assert kept == [5, 4, 3]
    segments = sorted((tmp_path / "tenants" / "acme" / "journal").glob("*.journal"))
    assert int(segments[0].name.split(".")[0]) <= 3 * 3 + 1  # back to generation 3's position
    for damaged in ([5], [5, 4]):
        for generation in damaged:
            path = store.path_for("acme", generation)
            data = bytearray(path.read_bytes())
            data[-1] ^= 0xFF
            path.write_bytes(bytes(data))
        restored = restore(schema_v3.app, spec, store)
        asyncio.run(restored.journal.close())
        assert restored.generation == 5 - len(damaged)
        assert len(restored.warnings) == len(damaged)
        assert schema_v3.view(restored.context.state) == expected
        for generation in damaged:  # undo, for the next round
            path = store.path_for("acme", generation)
            data = bytearray(path.read_bytes())
            data[-1] ^= 0xFF
            path.write_bytes(bytes(data))


def test_a_command_runs_live_with_the_args_a_replay_will_give_it(tmp_path: Path) -> None:
    from tenant import TenantApp

    keeper = TenantApp(name="keeper", initial_state=lambda: {"kept": []})

    @keeper.command()
    def keep(state: dict[str, Any], now: float, value: Any) -> None:
        state["kept"].append(value)

    async def main() -> dict[str, Any]:
        journal = Journal.open(tmp_path, next_seq=1)
        ctx = TenantContext(keeper, "acme", keeper.initial_state(), journal=journal)
        mutable = {"a": [1, 2]}
        await ctx.execute("keep", value=(1, (2, "x")))
        await ctx.execute("keep", value=mutable)
        mutable["a"].append(3)  # the caller's object is not the state's
        await journal.close()
        return dict(ctx.state)

    live = asyncio.run(main())
    replayed = keeper.initial_state()
    for record in read_records(tmp_path, 0).records:
        keeper.apply(replayed, record.name, record.args, record.now)
    assert live == replayed == {"kept": [[1, [2, "x"]], {"a": [1, 2]}]}
