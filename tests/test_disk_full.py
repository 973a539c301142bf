"""A full disk under the journal (issue 9, defect 2): writes get a clear 503, reads go on, and
writes come back by themselves once space is back; nothing acknowledged is lost and nothing
refused comes back.

The disk is a real small tmpfs filled with a real file. Three layers: the journal files
(supersede rule, cutting refused records, a new segment after a failure), the worker logic
in-process (TenantContext, DurabilityGuard, Checkpointer, WriteRecovery on a real journal),
and a real `switchboard serve` with the demo app whose tenants live on the tmpfs.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tenant
from contract.worker import WorkerSpec
from snapshots.store import LocalStore
from tenant.checkpoint import Checkpointer, CheckpointFailed
from tenant.context import DurabilityGuard, TenantContext, describe_failure
from tenant.errors import DurabilityLost, JournalCorrupt, JournalWriteError
from tenant.journal import Journal, drop_unkept, read_records
from tenant.runtime import restore
from tenant.write_recovery import WriteRecovery
from tests.apps import schema_v3
from tests.conftest import Router, alive, fill, get_ok, tmpfs, wait_until

NO_SPACE = "cannot make writes durable: no space left on device"


def segment(journal_dir: Path, first_seq: int) -> Path:
    return journal_dir / f"{first_seq:020d}.journal"


async def append_all(journal: Journal, names: list[str]) -> None:
    for name in names:
        await journal.append("put", {"name": name}, now=0.0)


def replayed(journal_dir: Path) -> list[tuple[int, str]]:
    return [(r.seq, r.args["name"]) for r in read_records(journal_dir, after_seq=0).records]


# ---- the journal files after a failure ----------------------------------------------------------


def test_a_new_segment_supersedes_what_a_failed_one_holds_past_it(tmp_path: Path) -> None:
    """The power-loss case: the refused records are still in the failed file (nothing cut
    them), yet they never replay once the new segment exists, torn tail included."""

    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=1)
        await append_all(journal, ["a1", "a2", "a3", "refused4", "refused5"])
        await journal.close()
        with open(segment(tmp_path, 1), "ab") as f:
            f.write(b"\x00\x00\x01\x00torn")  # a partial record after the refused ones
        resumed = Journal.start_after_failure(tmp_path, next_seq=4)
        await append_all(resumed, ["b4", "b5", "b6"])
        await resumed.close()

    asyncio.run(main())
    assert replayed(tmp_path) == [(1, "a1"), (2, "a2"), (3, "a3"), (4, "b4"), (5, "b5"),
                                  (6, "b6")]
    assert read_records(tmp_path, after_seq=0, through_seq=4).last_seq == 4
    # A later start appends after the new segment, as usual.
    journal = Journal.open(tmp_path, next_seq=7)
    asyncio.run(journal.close())


def test_cutting_refused_records_and_starting_again(tmp_path: Path) -> None:
    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=1)
        await append_all(journal, ["a1", "a2", "a3"])
        journal.rotate()
        await append_all(journal, ["refused4", "refused5"])
        await journal.close()
        size = segment(tmp_path, 1).stat().st_size
        drop_unkept(tmp_path, kept_seq=2)  # as if seq 3 on had been refused
        assert segment(tmp_path, 1).stat().st_size < size
        assert not segment(tmp_path, 4).exists()
        assert replayed(tmp_path) == [(1, "a1"), (2, "a2")]
        # A segment left over from a failed start (or holding only refused records) is
        # replaced, one that starts later is removed.
        segment(tmp_path, 3).write_bytes(segment(tmp_path, 1).read_bytes()[:16])
        resumed = Journal.start_after_failure(tmp_path, next_seq=3)
        await append_all(resumed, ["b3"])
        await resumed.close()

    asyncio.run(main())
    assert replayed(tmp_path) == [(1, "a1"), (2, "a2"), (3, "b3")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [segment(tmp_path, 1).name,
                                                          segment(tmp_path, 3).name]


def test_a_superseded_segment_short_of_records_is_still_a_gap(tmp_path: Path) -> None:
    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=1)
        await append_all(journal, ["a1", "a2"])
        await journal.close()
        resumed = Journal.start_after_failure(tmp_path, next_seq=5)
        await resumed.close()

    asyncio.run(main())
    with pytest.raises(JournalCorrupt, match="expected 3"):
        read_records(tmp_path, after_seq=0)


def test_the_reason_is_the_errnos_text() -> None:
    full = JournalWriteError("writing seq 9 to the journal failed")
    full.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert describe_failure(full) == "no space left on device"
    quota = JournalWriteError("seq 3 is not durable")
    quota.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert describe_failure(quota) == "disk quota exceeded"
    assert describe_failure(OSError(errno.EIO, "x")) == "input/output error"


# ---- the worker logic in-process, on a real full disk -------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def test_a_full_disk_refuses_writes_serves_reads_and_recovers_by_itself(
    small_disk: Path,
) -> None:
    data_dir = small_disk / "data"
    store = LocalStore.in_data_dir(data_dir)
    spec = WorkerSpec(tenant="acme", port=0, data_dir=str(data_dir),
                      app="tests.apps.schema_v3:app")
    acked: dict[str, int] = {}
    refused: set[str] = set()
    events: list[dict[str, Any]] = []

    async def main() -> None:
        restored = restore(schema_v3.app, spec, store)
        ctx = restored.context
        checkpointer = Checkpointer(ctx, store, restored.journal, generation=None)
        fatal: list[BaseException] = []
        recovery = WriteRecovery(ctx, store, checkpointer, fsync_policy="always",
                                 notify=events.append, on_fatal=fatal.append)
        ctx.on_durability_lost = recovery.journal_failed
        restored.journal.on_failure = ctx.durability_lost
        guard = DurabilityGuard(schema_v3.app.asgi, ctx, retry_in_s=recovery.retry_in_s)
        tenant.activate(ctx)
        transport = httpx.ASGITransport(app=guard)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

                async def put(name: str, qty: int, blob: str = "") -> httpx.Response:
                    response = await client.post("/put", json={"name": name, "qty": qty,
                                                              "tags": [blob] if blob else []})
                    if response.status_code == 201:
                        acked[name] = qty
                    else:
                        refused.add(name)
                    return response

                async def items() -> dict[str, Any]:
                    response = await client.get("/items")
                    assert response.status_code == 200, response.text
                    return {k: v["qty"] for k, v in response.json()["items"].items()}

                for i in range(5):
                    assert (await put(f"a{i}", i)).status_code == 201
                assert (await checkpointer.checkpoint(fork=False)).generation == 1
                filler = fill(small_disk, leave_bytes=24 * 1024)
                # Writers in groups of 8, so a failure lands while others wait on the same
                # fsync (group commit): their complete records are refused too.
                answers: list[httpx.Response] = []
                for round_no in range(40):
                    answers = list(await asyncio.gather(*(
                        put(f"w{round_no}-{k}", k, "x" * 2500) for k in range(8))))
                    if any(a.status_code != 201 for a in answers):
                        break
                failures = [a for a in answers if a.status_code != 201]
                assert failures, "the disk never filled up"
                for answer in failures:
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["error"] == NO_SPACE
                    assert int(answer.headers["retry-after"]) >= 1
                assert events[0] == {"event": "writes_unavailable", "error": NO_SPACE}
                assert ctx.writes_unavailable == NO_SPACE
                # Reads: every acknowledged write, none of the refused ones.
                assert await items() == acked
                assert ctx.state_clean and not fatal
                # Writes stay refused before they run while the disk is full.
                position = ctx.journal_pos
                for i in range(3):
                    response = await put(f"late{i}", i)
                    assert response.status_code == 503 and response.json()["error"] == NO_SPACE
                assert ctx.journal_pos == position and await items() == acked
                with pytest.raises(DurabilityLost, match="no space left"):
                    await ctx.execute("put", name="direct", qty=1)
                with pytest.raises(CheckpointFailed, match="refused"):
                    await checkpointer.checkpoint(fork=False)
                assert [g.generation for g in store.generations("acme")] == [1]

                freed_at = time.monotonic()
                filler.unlink()
                while ctx.writes_unavailable is not None:
                    assert time.monotonic() - freed_at < 10, "writes did not come back"
                    await asyncio.sleep(0.05)
                assert events[-1]["event"] == "writes_restored"
                assert (await put("after", 99)).status_code == 201
                assert await items() == acked
                assert (await checkpointer.checkpoint(fork=False)).changed
                assert (await put("after-checkpoint", 100)).status_code == 201

                # Full again soon after: the same again, the backoff carried over.
                filler = fill(small_disk, leave_bytes=8 * 1024)
                for i in range(40):
                    if (await put(f"again{i}", i, "y" * 2500)).status_code != 201:
                        break
                assert ctx.writes_unavailable == NO_SPACE
                assert await items() == acked
                filler.unlink()
                freed_at = time.monotonic()
                while ctx.writes_unavailable is not None:
                    assert time.monotonic() - freed_at < 10, "writes did not come back"
                    await asyncio.sleep(0.05)
                assert [e["event"] for e in events].count("writes_restored") == 2
                assert (await put("last", 7)).status_code == 201
        finally:
            tenant.activate(None)
            await recovery.close()
            journal = ctx.journal
            assert isinstance(journal, Journal)
            await journal.close()

    asyncio.run(main())
    assert refused and len(acked) > 5
    # What a restart restores: exactly the acknowledged writes.
    again = restore(schema_v3.app, spec, store)
    asyncio.run(again.journal.close())
    assert {k: v["qty"] for k, v in schema_v3.view(again.context.state).items()} == acked


def test_a_checkpoint_never_snapshots_a_command_its_fsync_then_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The final checkpoint at stop (in-process) starts while a write waits for its fsync,
    and that fsync fails: the snapshot must not be written with the refused command in it."""
    import tenant.journal as journal_mod

    store = LocalStore.in_data_dir(tmp_path)

    async def main() -> None:
        journal = Journal.open(store.layout.journal_dir("acme"), next_seq=1)
        ctx = TenantContext(schema_v3.app, "acme", schema_v3.initial_state(), journal=journal)
        journal.on_failure = ctx.durability_lost
        checkpointer = Checkpointer(ctx, store, journal, generation=None)
        await ctx.execute("put", name="kept", qty=1)

        def failing_fsync(fds: Any) -> None:  # the disk fails: a real EIO cannot be had here
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(journal_mod, "_fsync_all", failing_fsync)
        write = asyncio.ensure_future(ctx.execute("put", name="refused", qty=2))
        await asyncio.sleep(0)  # applied, written, waiting for its fsync
        assert "refused" in ctx.state["items"]
        with pytest.raises(CheckpointFailed, match="input/output error"):
            await checkpointer.checkpoint(fork=False)
        with pytest.raises(DurabilityLost):
            await write
        assert not store.generations("acme")
        await journal.close()

    asyncio.run(main())


class BrokenJournal:
    """A real journal's encoding; every append fails as a failed fsync does (EIO)."""

    def prepare(self, name: str, args: dict[str, Any], now: float) -> Any:
        return Journal.prepare(name, args, now)

    def append_prepared(self, record: Any) -> Any:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        error = JournalWriteError("fsync failed")
        error.__cause__ = OSError(errno.EIO, "Input/output error")
        future.set_exception(error)
        return future


def test_reads_wait_for_the_durable_state_and_only_the_refused_request_gets_503() -> None:
    ctx = TenantContext(schema_v3.app, "acme", schema_v3.initial_state(),
                        journal=BrokenJournal())
    lost: list[BaseException] = []
    ctx.on_durability_lost = lost.append

    async def main() -> None:
        tenant.activate(ctx)
        try:
            transport = httpx.ASGITransport(app=DurabilityGuard(schema_v3.app.asgi, ctx))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post("/put", json={"name": "a", "qty": 1})
                assert response.status_code == 503
                assert response.json()["error"] == ("cannot make writes durable: "
                                                    "input/output error")
                assert len(lost) == 1
                # The refused command is in memory until the state is rebuilt: a read waits.
                read = asyncio.ensure_future(client.get("/items"))
                await asyncio.sleep(0.2)
                assert not read.done()
                ctx.replace_state(schema_v3.initial_state(), journal_pos=0,
                                  commands_since_checkpoint=0)
                answer = await asyncio.wait_for(read, 10)
                assert answer.status_code == 200 and answer.json()["items"] == {}
        finally:
            tenant.activate(None)

    asyncio.run(main())


# ---- a real router, its tenants on a full tmpfs -------------------------------------------------


def post(client: httpx.Client, tenant_name: str, fields: dict[str, Any]) -> httpx.Response:
    return client.post(f"/t/{tenant_name}/api/tables/things/records", json=fields)


def listing(client: httpx.Client, tenant_name: str, *,
            restarting: bool = False) -> dict[int, dict[str, Any]]:
    """The tenant's records; a read must answer 200 at once unless its worker is restarting."""
    path = f"/t/{tenant_name}/api/tables/things/records?limit=1000"
    response = get_ok(client, path) if restarting else client.get(path)
    assert response.status_code == 200, response.text
    return {r["id"]: r["fields"] for r in response.json()["records"]}


def worker_pid(client: httpx.Client, tenant_name: str) -> int:
    return int(get_ok(client, f"/t/{tenant_name}/api/worker").json()["pid"])


@pytest.mark.slow
def test_disk_full_then_freed_under_a_real_router(make_router: Callable[..., Router]) -> None:
    names = ("north", "south")
    router = make_router(env={"SWITCHBOARD_MIN_UPTIME_S": "0"})
    # The whole data dir on a small disk: the tenants' files, the router's table and log.
    with tmpfs(router.data_dir, "2m"):
        try:
            router.start()
            with router.client() as client:
                run_disk_full_scenario(router, client, names)
        finally:
            router.kill_group()  # before the unmount


def run_disk_full_scenario(router: Router, client: httpx.Client,
                           names: tuple[str, ...]) -> None:
    disk = router.data_dir
    router.create(*names)
    acked: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in names}
    refused: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    attempt = 0

    def write(name: str, **extra: Any) -> httpx.Response:
        nonlocal attempt
        attempt += 1
        fields = {"attempt": attempt, **extra}
        response = post(client, name, fields)
        if response.status_code == 201:
            acked[name][response.json()["id"]] = fields
        else:
            assert response.status_code == 503, response.text
            assert response.json()["error"] == NO_SPACE, response.text
            assert int(response.headers["retry-after"]) >= 1
            refused[name].append(fields)
        return response

    for name in names:
        for _ in range(5):
            assert write(name).status_code == 201
        assert router.cli("checkpoint", name).stdout.strip() == "1"
    pids = {name: worker_pid(client, name) for name in names}

    filler = fill(disk, leave_bytes=32 * 1024)
    full: set[str] = set()
    for _ in range(200):  # 2 x 200 x 2 KB is far past 32 KB
        for name in set(names) - full:
            if write(name, blob="z" * 2000).status_code != 201:
                full.add(name)
                assert listing(client, name) == acked[name]  # the read right after
        if full == set(names):
            break
    assert full == set(names), "the disk never filled up"

    # While the disk is full: reads answer 200 with every acknowledged write, writes get the
    # same 503, the tenants stay running in the same workers, a checkpoint fails and leaves
    # the old snapshot.
    for _ in range(3):
        for name in names:
            assert listing(client, name) == acked[name]
            assert write(name).status_code == 503
    rows = {row["name"]: row for row in router.ls()}
    for name in names:
        assert rows[name]["state"] == "running", rows[name]
        assert rows[name]["pid"] == pids[name] and alive(pids[name])
        failed = router.cli("checkpoint", name, check=False)
        assert failed.returncode == 1, failed.stdout
        assert "no space left on device" in failed.stderr, failed.stderr
        assert router.state(name) == "running"
        snapshots = disk / "tenants" / name / "snapshots"
        assert [p.name for p in snapshots.glob("*.snap")] == [f"{1:012d}.snap"]

    # Space comes back: writes are served again within 10 s, with no operator action.
    filler.unlink()
    freed_at = time.monotonic()
    back: dict[str, float] = {}
    while len(back) < len(names):
        assert time.monotonic() - freed_at < 10, f"writes came back only for {back}"
        for name in set(names) - set(back):
            if write(name).status_code == 201:
                back[name] = time.monotonic() - freed_at
        time.sleep(0.1)
    print(f"\nwrites back {back} s after the filler was deleted; refused: "
          f"{ {n: len(r) for n, r in refused.items()} }")
    # (The worker's line at the failure may not have fit on the full disk; this one does.)
    wait_until(lambda: router.log().count("writes are durable again") >= len(names), 10)
    for name in names:
        assert worker_pid(client, name) == pids[name]  # never restarted
        for _ in range(3):
            assert write(name).status_code == 201
        assert listing(client, name) == acked[name]

    # kill -9: every 2xx is still there after the restart, no refused write is.
    for name in names:
        os.kill(pids[name], signal.SIGKILL)
    for name in names:
        wait_until(lambda name=name: not alive(pids[name]), 10)
        found = listing(client, name, restarting=True)
        assert found == acked[name]
        assert not [f for f in found.values() if f in refused[name]]
        assert worker_pid(client, name) != pids[name]
