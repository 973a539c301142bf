"""Segmented snapshots through a real router and real workers (issue 16): a kill -9 while the
worker loads segments in the background, a damaged segment met by a request (503, then the
older generation + journal), and a segmented tenant migrated to another host."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import wait_until
from snapshots.codec import get_codec
from snapshots.mac import WriterIdentity, load_key
from snapshots.store import LocalStore
from tenant.segments import Plan, Segments
from tests.conftest import Router, alive, get_ok
from tests.test_migrate import host_sharing_keys, migrate

ROUTER_ENV = {"SWITCHBOARD_CRASH_LOOP_CRASHES": "1000"}  # these tests kill workers


def counts(client: httpx.Client, tenant: str) -> dict[str, int]:
    answer = get_ok(client, f"/t/{tenant}/api/tables")
    assert answer.status_code == 200, answer.text
    return {t["name"]: t["count"] for t in answer.json()["tables"]}


def add(client: httpx.Client, tenant: str, table: str, fields: dict[str, Any]) -> int:
    answer = client.post(f"/t/{tenant}/api/tables/{table}/records", json=fields)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def kill_worker(client: httpx.Client, tenant: str) -> None:
    pid = int(get_ok(client, f"/t/{tenant}/api/worker").json()["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10)


def write_big_snapshot(router: Router, tenant: str, tables: int, records: int) -> None:
    """A segmented generation of a dabble state, written straight into the router's data dir
    (signed with its snapshot.key), as a tenant that checkpointed it would have left it."""
    now = 1.7e9
    state = {"tables": {f"t{t}": {"next_id": records + 1, "created_at": now, "records": {
        i: {"id": i, "fields": {"n": i, "text": "x" * 200}, "created_at": now,
            "updated_at": now} for i in range(1, records + 1)}} for t in range(tables)},
        "sessions": {}}
    info = router.info(tenant)
    store = LocalStore.in_data_dir(router.data_dir, identity=WriterIdentity(
        key=load_key(router.data_dir / "snapshot.key"), epoch=info.get("epoch") or 1,
        creation_id=info.get("creation_id") or ""))
    plan = Plan(Segments(state, groups=("tables",)))
    store.save_segmented(tenant, plan.sources(get_codec("msgpack").dumps), groups=plan.groups,
                         codec="msgpack", app_version="1.0", schema_version=1, journal_pos=0)


@pytest.mark.slow
def test_kill_9_during_the_background_load_loses_no_acknowledged_write(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(env=ROUTER_ENV).start()
    router.create("big")
    write_big_snapshot(router, "big", tables=80, records=1500)  # ~30 MB of segments
    expected = {f"t{t}": 1500 for t in range(80)}
    with router.client() as client:
        for round_ in range(3):
            # The cold start answers after loading one table; the rest loads after it.
            answer = get_ok(client, f"/t/big/api/tables/t{round_}/records?limit=1")
            assert answer.json()["total"] == 1500
            add(client, "big", f"t{30 + round_}", {"round": round_})  # acknowledged
            expected[f"t{30 + round_}"] += 1
            kill_worker(client, "big")
        assert "loaded in the background" not in router.log()  # killed in the middle of it
        assert counts(client, "big") == expected
        wait_until(lambda: "loaded in the background" in router.log(), 30)


@pytest.mark.slow
def test_a_damaged_segment_answers_503_then_the_older_generation_serves_everything(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(env=ROUTER_ENV).start()
    router.create("dmg")
    acked: dict[str, set[int]] = {"a": set(), "b": set()}
    with router.client() as client:
        for i in range(5):
            acked["a"].add(add(client, "dmg", "a", {"i": i}))
            acked["b"].add(add(client, "dmg", "b", {"i": i}))
        assert router.cli("checkpoint", "dmg").stdout.strip() == "1"
        acked["a"].add(add(client, "dmg", "a", {"i": 5}))
        assert router.cli("checkpoint", "dmg").stdout.strip() == "2"
        acked["b"].add(add(client, "dmg", "b", {"i": 6}))  # only in the journal
        kill_worker(client, "dmg")  # no final checkpoint: generation 2 is the newest

        snapshots = router.data_dir / "tenants" / "dmg" / "snapshots"
        inspect = router.cli("snapshot", "inspect", str(snapshots / f"{2:012d}.snap"),
                             "--json")
        segment = _json(inspect.stdout)["segments"]["tables/a"]
        blob = snapshots / segment["stored"].removeprefix("segment file ")
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x20
        blob.write_bytes(bytes(data))

        damaged = client.get("/t/dmg/api/tables/a/records?limit=100")
        assert damaged.status_code == 503, damaged.text
        assert "restarting from an older snapshot" in damaged.json()["error"]
        assert damaged.headers["retry-after"] == "1"
        assert Path(f"{blob}.corrupt").exists() and not blob.exists()

        def ids(table: str) -> set[int]:
            answer = client.get(f"/t/dmg/api/tables/{table}/records?limit=100")
            assert answer.status_code in (200, 503), answer.text
            return {r["id"] for r in answer.json().get("records", [])}

        wait_until(lambda: ids("a") == acked["a"], 30)
        assert ids("b") == acked["b"]
        assert router.tenant("dmg")["state"] == "running"
        assert "restored an older generation (1)" in router.log()


@pytest.mark.slow
def test_a_migrated_segmented_tenant_restores_on_the_target(
    make_router: Callable[..., Router],
) -> None:
    a = make_router("a").start()
    b = host_sharing_keys(make_router, a, "b")
    a.create("acme")
    with a.client() as client:
        for t in range(4):
            for i in range(3):
                add(client, "acme", f"t{t}", {"i": i})
        assert a.cli("checkpoint", "acme").stdout.strip() == "1"
        add(client, "acme", "t1", {"tail": True})  # in the journal tail
        expected = counts(client, "acme")
    migrate(a, "acme", "--to", b.admin_url)
    with b.client() as client:
        assert counts(client, "acme") == expected
        add(client, "acme", "t9", {"on": "b"})
        expected["t9"] = 1
    b.cli("stop", "acme")  # its final checkpoint writes the segments as b's own files
    snapshots = b.data_dir / "tenants" / "acme" / "snapshots"
    assert len(list(snapshots.glob("*.seg"))) == 6  # t0..t3, t9 and the sessions
    with b.client() as client:
        assert counts(client, "acme") == expected


def _json(text: str) -> dict[str, Any]:
    import json

    value: dict[str, Any] = json.loads(text)
    return value
