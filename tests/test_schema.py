"""Schema evolution: old snapshots are upgraded 1 -> 2 -> 3 on restore and the next checkpoint
writes version 3; a snapshot newer than the code is refused with a clear message; replaying
the same journal in two fresh processes gives byte-identical snapshots."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contract.worker import WorkerSpec
from snapshots.codec import get_codec
from snapshots.format import read_snapshot
from snapshots.store import LocalStore
from tenant.checkpoint import Checkpointer
from tenant.errors import UpgradeError
from tenant.runtime import restore
from tests.apps import schema_v3
from tests.conftest import ROOT, Router

APP_SPEC = "tests.apps.schema_v3:app"
V1_STATE = {"items": {"apple": 3, "pear": 0, "fig": 12}}
V2_STATE = {"items": {"apple": {"qty": 3}, "pear": {"qty": 0}}}
UPGRADED = {"apple": {"qty": 3, "tags": []}, "pear": {"qty": 0, "tags": []},
            "fig": {"qty": 12, "tags": []}}


def write_snapshot(data_dir: Path, tenant: str, state: Any, schema_version: int) -> Path:
    store = LocalStore.in_data_dir(data_dir)
    info = store.save(tenant, get_codec("msgpack").dumps(state), codec="msgpack",
                      app_version=f"schema-{schema_version}", schema_version=schema_version,
                      journal_pos=0)
    return info.path


def spec_for(data_dir: Path, tenant: str = "acme") -> WorkerSpec:
    return WorkerSpec(tenant=tenant, port=0, data_dir=str(data_dir), app=APP_SPEC)


@pytest.mark.parametrize(("old_state", "version", "expected"), [
    (V1_STATE, 1, UPGRADED),
    (V2_STATE, 2, {k: v for k, v in UPGRADED.items() if k != "fig"}),
])
def test_an_old_snapshot_is_upgraded_and_the_next_checkpoint_writes_version_3(
    tmp_path: Path, old_state: dict[str, Any], version: int, expected: dict[str, Any],
) -> None:
    write_snapshot(tmp_path, "acme", old_state, version)
    store = LocalStore.in_data_dir(tmp_path)
    restored = restore(schema_v3.app, spec_for(tmp_path), store)
    assert schema_v3.view(restored.context.state) == expected
    assert restored.context.state["log"] == []
    assert restored.context.dirty  # the upgrade is not on disk yet

    async def checkpoint() -> None:
        await restored.context.execute("put", name="kiwi", qty=1, tags=["new"])
        checkpointer = Checkpointer(restored.context, store, restored.journal, generation=1)
        outcome = await checkpointer.checkpoint(fork=False)
        assert outcome.generation == 2
        await restored.journal.close()

    asyncio.run(checkpoint())
    header, payload = read_snapshot(store.path_for("acme", 2))
    assert header.schema_version == 3 and header.app_version == "schema-3"
    state = get_codec("msgpack").loads(payload)
    assert schema_v3.view(state) == {**expected, "kiwi": {"qty": 1, "tags": ["new"]}}
    # And it restores as is now: no upgrade runs on a version 3 snapshot.
    again = restore(schema_v3.app, spec_for(tmp_path), store)
    asyncio.run(again.journal.close())
    assert not again.context.dirty
    assert schema_v3.view(again.context.state) == schema_v3.view(state)


def test_a_snapshot_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    write_snapshot(tmp_path, "acme", {"items": {}, "log": [], "v4": True}, 4)
    with pytest.raises(UpgradeError, match="schema version 4 but this code knows only up to 3"):
        restore(schema_v3.app, spec_for(tmp_path), LocalStore.in_data_dir(tmp_path))


@pytest.mark.slow
def test_a_real_tenant_is_upgraded_and_a_newer_one_fails_with_the_reason(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(app=APP_SPEC).start()
    router.create("old", "future")
    data_dir = router.data_dir
    write_snapshot(data_dir, "old", V1_STATE, 1)
    write_snapshot(data_dir, "future", {"items": {}, "log": []}, 4)
    with router.client() as client:
        response = client.get("/t/old/items")
        assert response.status_code == 200, response.text
        assert response.json()["items"] == UPGRADED
        assert response.json()["schema_version"] == 3
        assert client.post("/t/old/put", json={"name": "kiwi", "qty": 5}).status_code == 201
        assert router.cli("checkpoint", "old").stdout.strip() == "2"
        header, _ = read_snapshot(LocalStore.in_data_dir(data_dir).path_for("old", 2))
        assert header.schema_version == 3

        response = client.get("/t/future/items")
        assert response.status_code == 503
        status = router.tenant("future")
        assert status["state"] == "failed"
        assert "schema version 4" in status["last_error"], status
        assert "newer app version" in status["last_error"]
        # The refused snapshot is left alone, for newer code to load.
        assert [i.generation for i in LocalStore.in_data_dir(data_dir).generations("future")] == [1]


# Runs in a fresh interpreter: restore the tenant (snapshot + journal replay) and checkpoint.
REPLAY_CHILD = """
    import asyncio, sys
    from pathlib import Path
    from snapshots.store import LocalStore
    from tenant.checkpoint import Checkpointer
    from contract.worker import WorkerSpec
    from tenant.runtime import restore
    from tests.apps.schema_v3 import app

    data_dir = sys.argv[1]
    spec = WorkerSpec(tenant="acme", port=0, data_dir=data_dir, app="tests.apps.schema_v3:app")
    store = LocalStore.in_data_dir(data_dir)
    restored = restore(app, spec, store)

    async def main():
        checkpointer = Checkpointer(restored.context, store, restored.journal,
                                    generation=restored.generation)
        outcome = await checkpointer.checkpoint(fork=False)
        await restored.journal.close()
        print(outcome.generation)

    asyncio.run(main())
"""


def test_replaying_the_same_journal_twice_gives_byte_identical_snapshots(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_snapshot(source, "acme", V1_STATE, 1)
    store = LocalStore.in_data_dir(source)
    restored = restore(schema_v3.app, spec_for(source), store)

    async def commands() -> None:
        ctx = restored.context
        for i in range(60):
            tags = [f"tag-{(i * 7 + j) % 23}" for j in range(i % 9)]
            await ctx.execute("put", name=f"item-{i % 17}", qty=i, tags=tags)
            if i % 5 == 4:
                await ctx.execute("delete", name=f"item-{i % 17}")
        await restored.journal.close()

    asyncio.run(commands())
    payloads = []
    for seed in ("1", "2"):
        trial = tmp_path / f"seed-{seed}"
        shutil.copytree(source, trial)
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(REPLAY_CHILD), str(trial)],
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed},
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "2"
        header, payload = read_snapshot(LocalStore.in_data_dir(trial).path_for("acme", 2))
        assert header.schema_version == 3 and header.journal_pos == 72
        payloads.append(payload)
    assert payloads[0] == payloads[1]
    # What the live process held is what both replays rebuilt.
    assert get_codec("msgpack").loads(payloads[0]) == restored.context.state
