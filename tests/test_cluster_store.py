"""Cluster mode's PostgreSQL pieces against a real PostgreSQL (the session's `postgres`
fixture): the schema upgrade, the directory's compare-and-set and claims, host leases judged
by PostgreSQL's clock, and the worker's fenced journal and chunked snapshots."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg
import pytest

from switchboard.cluster.pgdirectory import PgDirectory
from switchboard.cluster.schema import SCHEMA_VERSION, SchemaTooNew, upgrade
from switchboard.directory import EpochConflict
from switchboard.errors import StorageFailed, TenantExists, UnknownTenant
from tenant.errors import Fenced
from tenant.journal_format import prepare_record
from tenant.pgstore import CHUNK_BYTES, PgTenantStore, decode_tail

pytestmark = pytest.mark.anyio


def test_upgrade_is_versioned_and_idempotent(cluster_db: str) -> None:
    assert upgrade(cluster_db) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with psycopg.connect(cluster_db, autocommit=True) as conn:
        conn.execute("INSERT INTO switchboard_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match="newer than this Switchboard"):
        upgrade(cluster_db)


async def test_directory_records_and_compare_and_set(cluster_db: str) -> None:
    directory = PgDirectory(cluster_db)
    try:
        acme = await directory.create("acme", app="examples.dabble:app")
        assert (acme.epoch, acme.owner, acme.app) == (1, None, "examples.dabble:app")
        with pytest.raises(TenantExists):
            await directory.create("acme")
        with pytest.raises(TenantExists):  # all or none
            await directory.create_many(["b1", "acme"])
        with pytest.raises(UnknownTenant):
            await directory.get("b1")
        assert [r.name for r in await directory.create_many(["b1", "b2"])] == ["b1", "b2"]
        assert [r.name for r in await directory.list()] == ["acme", "b1", "b2"]
        moved = await directory.set_placement("acme", owner="host-a", moved_to=None,
                                              expect_epoch=1)
        assert (moved.epoch, moved.owner) == (2, "host-a")
        with pytest.raises(EpochConflict) as conflict:
            await directory.set_placement("acme", owner="host-b", moved_to=None, expect_epoch=1)
        assert conflict.value.actual == 2
        assert (await directory.get("acme")).owner == "host-a"
        await directory.remove("b2")
        with pytest.raises(UnknownTenant):
            await directory.remove("b2")
    finally:
        await directory.close_async()


async def test_claim_race_has_exactly_one_winner(cluster_db: str) -> None:
    directories = [PgDirectory(cluster_db) for _ in range(3)]
    try:
        await directories[0].create("race")
        for _round in range(5):  # the same race again at each new epoch
            for i, d in enumerate(directories):
                await d.register(f"h{i}", router_url=f"http://127.0.0.1:{9000 + i}",
                                 admin_url=f"http://127.0.0.1:{9100 + i}", ttl_s=30,
                                 max_resident=4)
            before = await directories[0].get("race")
            if before.owner is not None:  # its owner dies: up for grabs again
                await directories[0].declare_dead(before.owner)
            results = await asyncio.gather(*(
                directories[i].claim("race", f"h{i}", expect_epoch=before.epoch)
                for i in range(3)), return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            assert len(winners) == 1, results
            assert sum(isinstance(r, EpochConflict) for r in results) == 2, results
            record = await directories[0].get("race")
            assert record.epoch == before.epoch + 1 and record.owner == winners[0].owner
            if record.owner != before.owner:  # a live owner keeps it against any claim
                other = next(i for i in range(3) if f"h{i}" != record.owner)
                with pytest.raises(EpochConflict):
                    await directories[other].claim("race", f"h{other}",
                                                   expect_epoch=record.epoch)
    finally:
        for d in directories:
            await d.close_async()


async def test_leases_are_judged_by_postgresql(cluster_db: str) -> None:
    directory = PgDirectory(cluster_db)
    try:
        await directory.register("a", router_url="http://127.0.0.1:1", admin_url="http://127.0.0.1:2",
                                 ttl_s=0.5, max_resident=8)
        [host] = await directory.hosts()
        assert host.alive and 0 < host.lease_expires_in_s <= 0.5
        assert await directory.renew("a", ttl_s=0.5, resident=3)
        assert (await directory.hosts())[0].resident == 3
        await asyncio.sleep(0.7)  # past the lease: PostgreSQL's now() decides
        [host] = await directory.hosts()
        assert not host.alive and host.lease_expires_in_s < 0
        assert not await directory.renew("a", ttl_s=5, resident=3)  # too late: re-register
        await directory.register("a", router_url="http://127.0.0.1:1",
                                 admin_url="http://127.0.0.1:2", ttl_s=5, max_resident=8)
        assert (await directory.hosts())[0].alive
        assert await directory.declare_dead("a")
        assert not (await directory.hosts())[0].alive
        assert not await directory.declare_dead("nobody")
    finally:
        await directory.close_async()


async def test_unreachable_database_is_storage_failed() -> None:
    directory = PgDirectory("postgresql://postgres@127.0.0.1:1/switchboard")
    with pytest.raises(StorageFailed, match="PostgreSQL is unreachable"):
        await directory.list()


def _payload(i: int) -> bytes:
    return prepare_record("add", {"i": i}, 1000.0 + i).tail


async def test_worker_appends_are_fenced_by_epoch_and_lease(cluster_db: str) -> None:
    directory = PgDirectory(cluster_db)
    try:
        await directory.create("acme")
        await directory.register("a", router_url="http://127.0.0.1:1",
                                 admin_url="http://127.0.0.1:2", ttl_s=30, max_resident=8)
        await directory.register("b", router_url="http://127.0.0.1:3",
                                 admin_url="http://127.0.0.1:4", ttl_s=30, max_resident=8)
        record = await directory.claim("acme", "a", expect_epoch=1)
        on_a = PgTenantStore(cluster_db, "acme", epoch=record.epoch, host_id="a")
        on_a.append([(1, _payload(1)), (2, _payload(2))])
        on_a.append([(2, _payload(2))])  # a retried batch is idempotent
        # host a's lease ends: it may not acknowledge any more, even before anyone claims
        await directory.declare_dead("a")
        with pytest.raises(Fenced, match="no live lease"):
            on_a.append([(3, _payload(3))])
        taken = await directory.claim("acme", "b", expect_epoch=record.epoch)
        await directory.register("a", router_url="http://127.0.0.1:1",
                                 admin_url="http://127.0.0.1:2", ttl_s=30, max_resident=8)
        with pytest.raises(Fenced, match="another host owns it"):
            on_a.append([(3, _payload(3))])  # live again, but the epoch moved on
        on_b = PgTenantStore(cluster_db, "acme", epoch=taken.epoch, host_id="b")
        assert [(seq, decode_tail(p)[2]) for seq, p in on_b.journal_after(0)] == [
            (1, {"i": 1}), (2, {"i": 2})]
        on_b.append([(3, _payload(30))])
        assert [decode_tail(p)[2]["i"] for _s, p in on_b.journal_after(0)] == [1, 2, 30]
        on_a.close()
        on_b.close()
    finally:
        await directory.close_async()


async def test_snapshots_travel_in_chunks_and_fenced(cluster_db: str, tmp_path: Path) -> None:
    directory = PgDirectory(cluster_db)
    try:
        await directory.create("acme")
        await directory.register("a", router_url="http://127.0.0.1:1",
                                 admin_url="http://127.0.0.1:2", ttl_s=30, max_resident=8)
        record = await directory.claim("acme", "a", expect_epoch=1)
        store = PgTenantStore(cluster_db, "acme", epoch=record.epoch, host_id="a")
        store.append([(seq, _payload(seq)) for seq in range(1, 11)])
        data = os.urandom(3 * CHUNK_BYTES + 12345)
        source = tmp_path / "snap"
        source.write_bytes(data)
        assert store.save_snapshot(source, 1, 4) == len(data)
        with psycopg.connect(cluster_db) as conn:
            sizes = conn.execute("SELECT max(length(data)) , count(*) FROM snapshot_chunks"
                                 ).fetchone()
        assert sizes == (CHUNK_BYTES, 4)  # never the whole file in one value
        store.save_snapshot(source, 2, 6)
        store.save_snapshot(source, 3, 8)  # keeps 2 generations; the journal from the older
        assert [s for s, _p in store.journal_after(0)] == [7, 8, 9, 10]
        out = tmp_path / "restored"
        out.mkdir()
        found = store.download_newest_snapshot(out, lambda g: f"{g:012d}.snap")
        assert found is not None
        generation, journal_pos, path = found
        assert (generation, journal_pos) == (3, 8) and path.read_bytes() == data
        await directory.claim("acme", "a", expect_epoch=record.epoch)  # a new epoch
        with pytest.raises(Fenced):
            store.save_snapshot(source, 4, 10)
        assert store.download_newest_snapshot(out, lambda g: f"{g:012d}.snap") is not None
        with psycopg.connect(cluster_db) as conn:
            assert conn.execute("SELECT max(generation) FROM snapshots").fetchone() == (3,)
        store.close()
    finally:
        await directory.close_async()


@pytest.mark.parametrize(("journal_fsync", "expected"),
                         [("always", "on"), ("everysec", "off"), ("never", "off")])
def test_journal_fsync_maps_to_synchronous_commit(cluster_db: str, tmp_path: Path,
                                                  journal_fsync: str, expected: str) -> None:
    from contract.worker import WorkerSpec
    from snapshots.store import LocalStore
    from tenant.pgjournal import ClusterSide

    spec = WorkerSpec(tenant="acme", port=0, data_dir=str(tmp_path), app="examples.dabble:app",
                      journal_fsync=journal_fsync, cluster_url=cluster_db, host_id="a")
    side = ClusterSide(spec, LocalStore.in_data_dir(str(tmp_path)))
    try:
        for store in (side.pg, side.uploads_pg):  # the committer's and the uploader's
            row = store.connection().execute("SHOW synchronous_commit").fetchone()
            assert row == (expected,)
    finally:
        side.pg.close()
        side.uploads_pg.close()
