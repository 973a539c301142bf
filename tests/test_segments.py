"""Segmented snapshots (issue 16): lazy restore, incremental checkpoints, exact dirty tracking,
damaged segments, crashes in the middle of an incremental checkpoint, v1 fixtures, and the
self-contained copy a migration ships. Real stores on disk, real forks, real fsyncs."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.worker import WorkerSpec
from examples.dabble import app as dabble
from examples.dabble import commands as dabble_commands
from snapshots.errors import SegmentCorrupt
from snapshots.inspect import check, describe
from snapshots.mac import WriterIdentity
from snapshots.segment_files import quarantine, self_contained
from snapshots.store import SAVE_STEPS, SEGMENT_SAVE_STEPS, LocalStore
from tenant import TenantApp, segments
from tenant.checkpoint import Checkpointer, CheckpointFailed
from tenant.errors import RestoreError
from tenant.runtime import Restored, restore
from tenant.segments import Segments, plain, unloaded

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "snapshots"
KEY = b"k" * 32


def spec_for(data_dir: Path, tenant: str = "acme") -> WorkerSpec:
    return WorkerSpec(tenant=tenant, port=0, data_dir=str(data_dir), app="examples.dabble:app")


def store_for(data_dir: Path, key: bytes | None = KEY) -> LocalStore:
    return LocalStore.in_data_dir(data_dir, identity=WriterIdentity(key=key))


def seg_files(data_dir: Path, tenant: str = "acme") -> set[str]:
    return {p.name for p in (data_dir / "tenants" / tenant / "snapshots").glob("*.seg")}


async def fill(restored: Restored, tables: int, records: int) -> None:
    for t in range(tables):
        for i in range(records):
            await restored.context.execute("create_record", table=f"t{t}",
                                           fields={"n": i, "text": "x" * 40})
    await restored.context.execute("login", user="ann", session_id="s" * 32)


def reopen(data_dir: Path, store: LocalStore) -> Restored:
    restored = restore(dabble, spec_for(data_dir), store)
    asyncio.run(restored.journal.close())
    return restored


@pytest.fixture(autouse=True)
def no_fault_hook() -> Any:
    yield
    segments.on_fault = None


def test_a_checkpoint_writes_only_the_changed_segment_and_a_restore_loads_lazily(
        tmp_path: Path) -> None:
    store = store_for(tmp_path)

    async def build() -> tuple[Any, list[int]]:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=20, records=30)
        full = await checkpointer.checkpoint(fork=False)
        await restored.context.execute("update_record", table="t7", id=3, fields={"n": -1})
        one = await checkpointer.checkpoint(fork=True)
        await restored.context.execute("create_record", table="t2", fields={"late": True})
        await restored.journal.close()
        return plain(restored.context.state), [full.bytes, one.bytes]

    expected, (full_bytes, one_bytes) = asyncio.run(build())
    assert len(seg_files(tmp_path)) == 22  # 20 tables + sessions, and t7 once more
    second = store.generations("acme")[0].header
    assert second is not None and second.generation == 2
    t7 = next(e for e in second.index if e["name"] == "tables/t7")
    assert one_bytes == second.header_bytes + t7["length"]  # the header and t7, nothing else
    assert full_bytes > 15 * t7["length"]

    restored = reopen(tmp_path, store)
    state = restored.context.state
    assert isinstance(state, Segments)
    # The journal replay loaded t2 (its command touched it), nothing else.
    assert len(unloaded(state)) == 20
    assert state["tables"]["t7"]["records"][3]["fields"]["n"] == -1
    assert len(unloaded(state)) == 19
    assert sorted(state["tables"]) == sorted(f"t{t}" for t in range(20))  # keys: no load
    assert len(unloaded(state)) == 19
    assert plain(state) == expected


def test_pruning_keeps_every_segment_a_kept_generation_names(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path, keep_generations=2)

    async def build() -> Any:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=5, records=3)
        await checkpointer.checkpoint(fork=False)
        for round_ in range(4):  # t0 changes every time, t1..t4 never again
            await restored.context.execute("update_record", table="t0", id=1,
                                           fields={"round": round_})
            await checkpointer.checkpoint(fork=False)
        await restored.journal.close()
        return plain(restored.context.state)

    expected = asyncio.run(build())
    assert [info.generation for info in store.generations("acme")] == [5, 4]
    # t1..t4 and the sessions from generation 1, and t0 of generations 4 and 5: no more.
    assert len(seg_files(tmp_path)) == 5 + 2
    assert plain(reopen(tmp_path, store).context.state) == expected


def test_a_flipped_byte_in_one_segment_falls_back_a_generation_and_loses_nothing(
        tmp_path: Path) -> None:
    store = store_for(tmp_path)

    async def build() -> Any:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=4, records=5)
        await checkpointer.checkpoint(fork=False)
        await restored.context.execute("update_record", table="t1", id=2, fields={"n": 7})
        await checkpointer.checkpoint(fork=False)
        await restored.context.execute("create_record", table="t3", fields={"after": 1})
        await restored.journal.close()
        return plain(restored.context.state)

    expected = asyncio.run(build())
    newest = store.generations("acme")[0].header
    assert newest is not None
    t1 = next(e for e in newest.index if e["name"] == "tables/t1")
    blob = tmp_path / "tenants" / "acme" / "snapshots" / f"{t1['ref']}.seg"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    moved: list[str | None] = []
    segments.on_fault = lambda error, entry: moved.append(quarantine(entry))  # as the worker
    restored = reopen(tmp_path, store)
    assert restored.generation == 2  # the header and index are sound: damage not seen yet
    with pytest.raises(SegmentCorrupt, match="tables/t1"):
        restored.context.state["tables"]["t1"]
    assert moved == [str(blob)]
    assert check(store.path_for("acme", 2), KEY).status == "corrupt"

    again = reopen(tmp_path, store)
    assert again.generation == 1
    assert any("tables/t1" in w for w in again.warnings)
    assert plain(again.context.state) == expected


def test_a_damaged_segment_met_by_the_journal_replay_restarts_the_restore(
        tmp_path: Path) -> None:
    store = store_for(tmp_path)

    async def build() -> Any:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=3, records=2)
        await checkpointer.checkpoint(fork=False)
        await restored.context.execute("update_record", table="t0", id=1, fields={"n": 5})
        await checkpointer.checkpoint(fork=False)
        await restored.context.execute("update_record", table="t0", id=2, fields={"n": 6})
        await restored.journal.close()
        return plain(restored.context.state)

    expected = asyncio.run(build())
    header = store.generations("acme")[0].header
    assert header is not None
    t0 = next(e for e in header.index if e["name"] == "tables/t0")
    blob = tmp_path / "tenants" / "acme" / "snapshots" / f"{t0['ref']}.seg"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    segments.on_fault = lambda error, entry: print(quarantine(entry))
    restored = reopen(tmp_path, store)
    assert restored.generation == 1
    assert plain(restored.context.state) == expected


def _crash_at(step: str) -> Any:
    def fault(at: str) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return fault


@pytest.mark.parametrize("step", [*SEGMENT_SAVE_STEPS, *SAVE_STEPS])
def test_a_crash_in_the_middle_of_an_incremental_checkpoint_loses_nothing(
        tmp_path: Path, step: str) -> None:
    store = store_for(tmp_path)

    async def build() -> Any:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=4, records=3)
        await checkpointer.checkpoint(fork=False)
        await restored.context.execute("update_record", table="t2", id=1, fields={"n": 9})
        await restored.context.execute("create_record", table="new", fields={"a": 1})
        store.fault = _crash_at(step)  # the forked child SIGKILLs itself there
        with pytest.raises(CheckpointFailed, match="signal 9"):
            await checkpointer.checkpoint(fork=True)
        store.fault = None
        await restored.context.execute("delete_record", table="t3", id=2)
        expected = plain(restored.context.state)
        # The marks the failed checkpoint took are back: the next one writes t2 and "new".
        second = await checkpointer.checkpoint(fork=True)
        await restored.journal.close()
        return expected, second

    expected, second = asyncio.run(build())
    assert second.generation in (2, 3)  # 3 when the crash came after the rename
    restored = reopen(tmp_path, store)
    assert plain(restored.context.state) == expected
    assert not list((tmp_path / "tenants" / "acme" / "snapshots").glob("*.tmp"))
    # And from the generation before, with the journal, too (the fallback path).
    store.path_for("acme", second.generation).unlink()
    assert plain(reopen(tmp_path, store).context.state) == expected


def test_a_v1_fixture_restores_and_the_next_checkpoint_writes_it_segmented(
        tmp_path: Path) -> None:
    fixture_app = TenantApp(name="fixture", initial_state=dict, schema_version=2,
                            segment_groups=("records",))

    @fixture_app.upgrade(1)
    def named_keys(state: dict[Any, Any]) -> dict[str, Any]:
        # The fixture has a tuple key and int record ids; segments are named by str keys.
        return {"records": {str(k): v for k, v in state["records"].items()},
                "rest": {repr(k): v for k, v in state.items() if k != "records"}}

    @fixture_app.command()
    def rename(state: Any, now: float, name: str) -> None:
        state["records"]["1"]["name"] = name

    tenant = "compat-fixture"
    folder = tmp_path / "tenants" / tenant / "snapshots"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "v1-msgpack.snap", folder / "000000000001.snap")
    store = LocalStore.in_data_dir(tmp_path, identity=WriterIdentity(key=KEY))
    spec = WorkerSpec(tenant=tenant, port=0, data_dir=str(tmp_path), app="x:app")

    async def run() -> tuple[Any, Any]:
        restored = restore(fixture_app, spec, store)
        assert restored.context.dirty  # unsigned, upgraded and unsegmented: rewrite it
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=1)
        outcome = await checkpointer.checkpoint(fork=False)
        await restored.journal.close()
        return outcome, plain(restored.context.state)

    outcome, expected = asyncio.run(run())
    assert expected["records"]["1"]["name"] == "Ann"
    info = describe(store.path_for(tenant, outcome.generation), KEY)
    assert info["format_version"] == 2 and info["signature"] == "verified"
    assert sorted(info["segments"]) == ["records/1", "records/2", "rest"]
    again = restore(fixture_app, spec, store)
    asyncio.run(again.journal.close())
    assert isinstance(again.context.state, Segments)
    assert len(unloaded(again.context.state)) == 3
    assert plain(again.context.state) == expected


def test_inspect_lists_the_segments_and_verify_checks_each(tmp_path: Path) -> None:
    store = store_for(tmp_path)

    async def build() -> None:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=3, records=2)
        await checkpointer.checkpoint(fork=False)
        await restored.journal.close()

    asyncio.run(build())
    path = store.path_for("acme", 1)
    info = describe(path, KEY)
    assert list(info["segments"]) == ["tables/t0", "tables/t1", "tables/t2", "sessions"]
    assert all(s["bytes"] > 0 and s["stored"].startswith("segment file ") for s in
               info["segments"].values())
    assert info["valid"] and check(path, KEY).status == "signed"
    blob = path.parent / info["segments"]["tables/t0"]["stored"].removeprefix("segment file ")
    blob.unlink()
    assert check(path, KEY).status == "corrupt"
    assert "tables/t0" in str(check(path, KEY).problem)


def test_the_self_contained_copy_restores_lazily_elsewhere(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    store = store_for(source)

    async def build() -> Any:
        restored = restore(dabble, spec_for(source), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=3, records=4)
        await checkpointer.checkpoint(fork=False)
        await restored.journal.close()
        return plain(restored.context.state)

    expected = asyncio.run(build())
    folder = target / "tenants" / "acme" / "snapshots"
    folder.mkdir(parents=True)
    assert self_contained(store.path_for("acme", 1), folder / "000000000001.snap", KEY)
    assert check(folder / "000000000001.snap", KEY).status == "signed"
    target_store = store_for(target)

    async def on_target() -> Any:
        restored = restore(dabble, spec_for(target), target_store)
        assert len(unloaded(restored.context.state)) == 4
        assert restored.context.state["tables"]["t1"]["records"][2]["fields"]["n"] == 1
        checkpointer = Checkpointer(restored.context, target_store, restored.journal,
                                    generation=1)
        restored.context.mark_dirty()
        await checkpointer.checkpoint(fork=True)  # the child copies the rest out of the file
        await restored.journal.close()
        return plain(restored.context.state)

    assert asyncio.run(on_target()) == expected
    assert len(seg_files(target)) == 4
    assert plain(reopen(target, target_store).context.state) == expected


# --- exact dirty tracking: random commands, checkpoints and restores --------------------------

TABLES = ["a", "b", "c", "d"]
command = st.one_of(
    st.tuples(st.just("create_record"), st.sampled_from(TABLES), st.integers(0, 9)),
    st.tuples(st.just("update_record"), st.sampled_from(TABLES), st.integers(1, 6)),
    st.tuples(st.just("delete_record"), st.sampled_from(TABLES), st.integers(1, 6)),
    st.tuples(st.just("login"), st.sampled_from(["ann", "bob"]), st.integers(0, 3)),
    st.tuples(st.just("checkpoint"), st.just(""), st.integers(0, 1)),
    st.tuples(st.just("restore"), st.just(""), st.just(0)),
)


def _args(name: str, table: str, n: int) -> dict[str, Any]:
    if name == "create_record":
        return {"table": table, "fields": {"n": n}}
    if name == "update_record":
        return {"table": table, "id": n, "fields": {"n": n * 10}}
    if name == "delete_record":
        return {"table": table, "id": n}
    return {"user": table, "session_id": f"{n}" * 32}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(command, min_size=1, max_size=40))
def test_no_change_is_ever_left_out_of_a_checkpoint(steps: list[tuple[str, str, int]]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="segprop-"))
    try:
        store = LocalStore.in_data_dir(data_dir, keep_generations=2)
        replayed = dabble_commands.initial_state()  # the same commands on plain dicts

        async def run() -> Any:
            restored = restore(dabble, spec_for(data_dir), store)
            checkpointer = Checkpointer(restored.context, store, restored.journal,
                                        generation=restored.generation)
            for now, (name, table, n) in enumerate(steps):
                if name == "checkpoint":
                    await checkpointer.checkpoint(fork=bool(n))
                    continue
                if name == "restore":
                    await restored.journal.close()
                    restored = restore(dabble, spec_for(data_dir), store)
                    checkpointer = Checkpointer(restored.context, store, restored.journal,
                                                generation=restored.generation)
                    continue
                args = _args(name, table, n)
                try:
                    dabble.apply(replayed, name, dict(args), float(now))
                except Exception:
                    continue  # rejected: not journaled either
                restored.context.clock = lambda now=now: float(now)
                await restored.context.execute(name, **args)
            await restored.journal.close()

        asyncio.run(run())
        # Only the snapshots: the journal after the last one is dropped, then compared with
        # a checkpoint that held everything.
        final = restore(dabble, spec_for(data_dir), store)
        asyncio.run(final.journal.close())
        assert plain(final.context.state) == replayed
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_snapshot_alone_holds_every_change_after_checkpoints(tmp_path: Path) -> None:
    """The property test restores with the journal; this one removes the journal after a
    checkpoint, so a change left out of a segment would show."""
    store = store_for(tmp_path)

    async def run() -> Any:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=6, records=4)
        await checkpointer.checkpoint(fork=False)
        for t in range(6):
            await restored.context.execute("update_record", table=f"t{t}", id=t % 4 + 1,
                                           fields={"t": t})
            if t % 2:
                await checkpointer.checkpoint(fork=True)
        await restored.context.execute("delete_record", table="t0", id=2)
        await restored.context.execute("logout", session_id="s" * 32)
        await checkpointer.checkpoint(fork=True)
        await restored.journal.close()
        return plain(restored.context.state)

    expected = asyncio.run(run())
    shutil.rmtree(tmp_path / "tenants" / "acme" / "journal")
    assert plain(reopen(tmp_path, store).context.state) == expected



def test_changes_made_while_a_forked_checkpoint_runs_go_into_the_next_one(
        tmp_path: Path) -> None:
    store = store_for(tmp_path)

    async def run() -> Any:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=3, records=200)
        await checkpointer.checkpoint(fork=False)
        await restored.context.execute("update_record", table="t0", id=1, fields={"n": "a"})
        running = asyncio.ensure_future(checkpointer.checkpoint(fork=True))
        await asyncio.sleep(0)  # it has taken its position and forked: writes go on
        assert checkpointer.running
        await restored.context.execute("update_record", table="t0", id=2, fields={"n": "b"})
        await restored.context.execute("update_record", table="t1", id=1, fields={"n": "c"})
        first = await running
        second = await checkpointer.checkpoint(fork=True)
        await restored.journal.close()
        return plain(restored.context.state), first, second

    expected, first, second = asyncio.run(run())
    assert (first.generation, second.generation) == (2, 3)
    shutil.rmtree(tmp_path / "tenants" / "acme" / "journal")  # the snapshots alone
    assert plain(reopen(tmp_path, store).context.state) == expected


def test_a_damaged_segment_every_kept_generation_names_stops_the_restore_loudly(
        tmp_path: Path) -> None:
    """A segment file is shared by the generations that did not change it (one copy, as the
    journal is): when every kept generation names the damaged one, the restore refuses with
    the reason, never an empty or partial tenant."""
    store = store_for(tmp_path)

    async def build() -> None:
        restored = restore(dabble, spec_for(tmp_path), store)
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=None)
        await fill(restored, tables=2, records=2)
        await checkpointer.checkpoint(fork=False)
        await restored.context.execute("update_record", table="t0", id=1, fields={"n": 5})
        await checkpointer.checkpoint(fork=False)
        await restored.journal.close()

    asyncio.run(build())
    headers = [info.header for info in store.generations("acme")]
    refs = [{e["name"]: e["ref"] for e in h.index} for h in headers if h is not None]
    assert refs[0]["tables/t1"] == refs[1]["tables/t1"]  # t1 never changed: one file
    blob = tmp_path / "tenants" / "acme" / "snapshots" / f"{refs[0]['tables/t1']}.seg"
    blob.write_bytes(b"\0" + blob.read_bytes()[1:])
    segments.on_fault = lambda error, entry: print(quarantine(entry))
    restored = reopen(tmp_path, store)
    with pytest.raises(SegmentCorrupt):
        restored.context.state["tables"]["t1"]
    with pytest.raises(RestoreError, match=r"segment 'tables/t1': its file .* is missing"):
        reopen(tmp_path, store)
