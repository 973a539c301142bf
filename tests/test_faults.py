"""Fault injection: crashes at every step of a checkpoint, a journal cut at every byte of its
last record, flipped bytes in a real tenant's snapshots, a full disk under a real tenant.

Each fault is real: the process is SIGKILLed at the step (not a mocked exception), the files
are cut and flipped on disk, the disk is a small tmpfs mounted by the test. What is checked
is what a user sees: every acknowledged command is there afterwards, nothing else is.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.worker import WorkerSpec
from snapshots.format import read_header
from snapshots.store import SAVE_STEPS, LocalStore
from tenant.checkpoint import Checkpointer
from tenant.runtime import restore
from tests.apps import schema_v3
from tests.conftest import ROOT, Router, alive, fill, get_ok, tmpfs, wait_until

APP_SPEC = "tests.apps.schema_v3:app"
# The router must not count our kill -9s as boot failures and back the tenant off.
ROUTER_ENV = {"SWITCHBOARD_CRASH_LOOP_CRASHES": "1000"}  # these tests kill workers often


# ---- helpers: the schema_v3 app in-process ----------------------------------------------------


def spec_for(data_dir: Path, tenant: str = "acme") -> WorkerSpec:
    return WorkerSpec(tenant=tenant, port=0, data_dir=str(data_dir), app=APP_SPEC)


def restored_view(data_dir: Path, tenant: str = "acme") -> tuple[dict[str, Any], int, Any]:
    """Restore as a worker would; return (items view, number of logged commands, Restored)."""
    store = LocalStore.in_data_dir(data_dir)
    restored = restore(schema_v3.app, spec_for(data_dir, tenant), store)
    asyncio.run(restored.journal.close())
    state = restored.context.state
    return schema_v3.view(state), len(state["log"]), restored


def expected_view(acks: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    state = schema_v3.initial_state()
    for name, args in acks:
        schema_v3.app.apply(state, name, args, 0.0)
    return schema_v3.view(state)


def run_child(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          start_new_session=True)


# The child builds state through commands and a real journal, checkpoints once cleanly, adds
# more, then checkpoints with the fault hook armed: it SIGKILLs itself (inline mode) or its
# forked checkpoint child (fork mode) at the step. Every acknowledged command is printed as
# one JSON line, only after execute() returned (that is, once it was durable).
CHECKPOINT_CHILD = """
    import asyncio, json, os, signal, sys
    from pathlib import Path
    from snapshots.store import LocalStore
    from tenant.checkpoint import CheckpointFailed, Checkpointer
    from contract.worker import WorkerSpec
    from tenant.runtime import restore
    from tests.apps.schema_v3 import app

    step, data_dir, mode = sys.argv[1:4]
    spec = WorkerSpec(tenant="acme", port=0, data_dir=data_dir, app="tests.apps.schema_v3:app")

    def fault(at):
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    async def run(ctx, n, prefix):
        for i in range(n):
            args = {"name": f"{prefix}{i}", "qty": i, "tags": [f"t{i % 3}", prefix]}
            await ctx.execute("put", **args)
            print(json.dumps(["put", args]), flush=True)

    async def main():
        store = LocalStore.in_data_dir(data_dir)
        restored = restore(app, spec, store)
        ctx = restored.context
        checkpointer = Checkpointer(ctx, store, restored.journal, generation=restored.generation)
        await run(ctx, 20, "a")
        await checkpointer.checkpoint(fork=False)
        await run(ctx, 20, "b")
        await ctx.execute("delete", name="a3")
        print(json.dumps(["delete", {"name": "a3"}]), flush=True)
        store.fault = fault
        if mode == "inline":
            await checkpointer.checkpoint(fork=False)
            print("NOT KILLED", flush=True)
            return
        try:
            await checkpointer.checkpoint(fork=True)
            print("NOT KILLED", flush=True)
        except CheckpointFailed as exc:
            print(json.dumps(["failed", str(exc)]), flush=True)
        store.fault = None
        await run(ctx, 10, "c")
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
"""


def parse_acks(stdout: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    acks, other = [], []
    for line in stdout.splitlines():
        item = json.loads(line) if line.startswith("[") else None
        if item is not None and item[0] in {"put", "delete"}:
            acks.append((item[0], item[1]))
        else:
            other.append(line)
    return acks, other


# ---- 2a: a crash at every step of a checkpoint -------------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "fork"])
@pytest.mark.parametrize("step", SAVE_STEPS)
def test_a_crash_at_every_checkpoint_step_loses_nothing(
    tmp_path: Path, step: str, mode: str
) -> None:
    done = run_child(CHECKPOINT_CHILD, step, str(tmp_path), mode)
    assert done.returncode == -signal.SIGKILL, done.stderr
    acks, other = parse_acks(done.stdout)
    assert "NOT KILLED" not in other
    assert len(acks) == 41 + (10 if mode == "fork" else 0)
    if mode == "fork":
        assert other and "killed by signal 9" in other[0]

    view, logged, restored = restored_view(tmp_path)
    assert view == expected_view(acks)
    assert logged == len(acks)  # each acknowledged command applied exactly once
    assert restored.warnings == []  # a crash never leaves a file that looks damaged
    renamed = SAVE_STEPS.index(step) >= SAVE_STEPS.index("after_rename")
    # Before the rename the new generation does not exist; after it, it is complete and used.
    assert restored.generation == (2 if renamed else 1)

    # The next checkpoint cleans up the dead save's temp file and lands.
    store = LocalStore.in_data_dir(tmp_path)
    restored = restore(schema_v3.app, spec_for(tmp_path), store)

    async def checkpoint_again() -> None:
        checkpointer = Checkpointer(restored.context, store, restored.journal,
                                    generation=restored.generation)
        await restored.context.execute("put", name="later", qty=1)
        outcome = await checkpointer.checkpoint(fork=False)
        assert outcome.changed and outcome.generation == restored.generation + 1
        await restored.journal.close()

    asyncio.run(checkpoint_again())
    assert not list((tmp_path / "tenants" / "acme" / "snapshots").glob("*.tmp"))
    view_after, logged_after, again = restored_view(tmp_path)
    acks.append(("put", {"name": "later", "qty": 1}))
    assert (view_after, logged_after) == (expected_view(acks), logged + 1)
    assert again.generation == restored.generation + 1


# ---- 2b: the journal cut at every byte of its last record --------------------------------------


def test_a_journal_cut_anywhere_in_its_last_record_drops_only_that_record(tmp_path: Path) -> None:
    source = tmp_path / "source"
    store = LocalStore.in_data_dir(source)
    acks: list[tuple[str, dict[str, Any]]] = []

    async def build() -> tuple[Path, int, int]:
        restored = restore(schema_v3.app, spec_for(source), store)
        ctx = restored.context
        checkpointer = Checkpointer(ctx, store, restored.journal, generation=None)
        for i in range(8):
            args = {"name": f"x{i}", "qty": i, "tags": ["k"]}
            await ctx.execute("put", **args)
            acks.append(("put", args))
        await checkpointer.checkpoint(fork=False)
        for i in range(5):
            args = {"name": f"y{i}", "qty": 100 + i, "tags": ["k", "j"]}
            await ctx.execute("put", **args)
            acks.append(("put", args))
        segment = sorted((source / "tenants" / "acme" / "journal").glob("*.journal"))[-1]
        before = segment.stat().st_size
        last = {"name": "last", "qty": 7, "tags": ["z"] * 3}
        await ctx.execute("put", **last)
        acks.append(("put", last))
        after = segment.stat().st_size
        await restored.journal.close()
        return segment, before, after

    segment, start, end = asyncio.run(build())
    assert end - start > 20
    everything = expected_view(acks)
    all_but_last = expected_view(acks[:-1])
    relative = segment.relative_to(source)
    for cut in range(start, end + 1):
        trial = tmp_path / f"cut-{cut}"
        shutil.copytree(source, trial)
        os.truncate(trial / relative, cut)
        view, logged, restored = restored_view(trial)
        if cut == end:
            assert (view, logged) == (everything, len(acks)), cut
            assert restored.warnings == []
        else:
            assert (view, logged) == (all_but_last, len(acks) - 1), cut
            if cut > start:
                assert any("torn record" in w for w in restored.warnings), cut
        shutil.rmtree(trial)


# ---- helpers: a real router ---------------------------------------------------------------------


def add_record(client: httpx.Client, tenant: str, fields: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/t/{tenant}/api/tables/things/records", json=fields)
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


def records(client: httpx.Client, tenant: str) -> dict[int, dict[str, Any]]:
    response = get_ok(client, f"/t/{tenant}/api/tables/things/records?limit=1000")
    assert response.status_code == 200, response.text
    return {r["id"]: r["fields"] for r in response.json()["records"]}


def kill_worker(client: httpx.Client, tenant: str) -> int:
    pid = int(get_ok(client, f"/t/{tenant}/api/worker").json()["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10)
    return pid


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


# ---- 3: flipped bytes in a real tenant's newest snapshot ---------------------------------------


@pytest.mark.slow
def test_a_flipped_byte_in_the_newest_snapshot_falls_back_a_generation(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(env=ROUTER_ENV).start()
    router.create("flip")
    acked: dict[int, dict[str, Any]] = {}
    with router.client() as client:
        for i in range(10):
            fields = {"n": i, "part": "one"}
            acked[add_record(client, "flip", fields)["id"]] = fields
        assert router.cli("checkpoint", "flip").stdout.strip() == "1"
        for i in range(10, 20):
            fields = {"n": i, "part": "two"}
            acked[add_record(client, "flip", fields)["id"]] = fields
        assert router.cli("checkpoint", "flip").stdout.strip() == "2"
        for i in range(20, 25):  # only in the journal
            fields = {"n": i, "part": "three"}
            acked[add_record(client, "flip", fields)["id"]] = fields

        snapshots = router.data_dir / "tenants" / "flip" / "snapshots"
        newest = snapshots / f"{2:012d}.snap"
        original = newest.read_bytes()
        with open(newest, "rb") as f:
            payload_at = read_header(f, source=str(newest)).header_bytes
        size = len(original)
        # Sampled across the fixed prefix, the header, its CRC and the payload.
        # (A segmented generation's payload is empty: its segments are separate files, whose
        # damage tests/test_segments_worker.py covers; then every offset is in the header.)
        offsets = sorted({0, 7, 8, 9, 11, 13, 14, 20, payload_at // 2, payload_at - 5,
                          payload_at - 1, payload_at, payload_at + 1, (payload_at + size) // 2,
                          size - 2, size - 1} & set(range(size)))
        for offset in offsets:
            kill_worker(client, "flip")
            newest.write_bytes(original)
            flip(newest, offset)
            assert records(client, "flip") == acked, f"byte {offset}"
            fields = {"n": 100 + offset, "part": "after"}
            acked[add_record(client, "flip", fields)["id"]] = fields
            status = router.tenant("flip")
            assert status["state"] == "running"
            assert "damaged" in (status["last_error"] or ""), (offset, status)
        assert "restored an older generation" in router.log()

        # Nothing valid left: the tenant fails, with the reason, and never starts empty.
        kill_worker(client, "flip")
        flip(snapshots / f"{1:012d}.snap", 30)
        response = client.get("/t/flip/api/tables/things/records")
        assert response.status_code == 503, response.text
        status = router.tenant("flip")
        assert status["state"] == "failed"
        assert "none verifies" in status["last_error"], status
        verify = router.cli("snapshot", "verify", "flip", check=False)
        assert verify.returncode == 1 and "failed verification" in verify.stderr


# ---- 4: a full disk under the snapshots ---------------------------------------------------------


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_fails_and_the_tenant_keeps_serving(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(env=ROUTER_ENV).start()
    router.create("full")
    snapshots = router.data_dir / "tenants" / "full" / "snapshots"
    with tmpfs(snapshots, "2m"), router.client() as client:
        acked: dict[int, dict[str, Any]] = {}
        for i in range(5):
            acked[add_record(client, "full", {"n": i})["id"]] = {"n": i}
        assert router.cli("checkpoint", "full").stdout.strip() == "1"
        filler = fill(snapshots, leave_bytes=16 * 1024)
        for i in range(5, 30):  # ~60 KB of state: the next snapshot cannot fit in 16 KB
            fields = {"n": i, "blob": "x" * 2000}
            acked[add_record(client, "full", fields)["id"]] = fields

        failed = router.cli("checkpoint", "full", check=False)
        assert failed.returncode == 1
        assert "No space left on device" in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
        # Generation 1's segments (things, sessions); nothing of the failed one is left.
        assert len(list(snapshots.glob("*.seg"))) == 2
        assert sorted(p.name for p in snapshots.iterdir()
                      if p.suffix != ".seg") == [f"{1:012d}.snap", "filler"]

        # The tenant keeps serving writes (the journal is on another disk) ...
        for i in range(30, 35):
            acked[add_record(client, "full", {"n": i})["id"]] = {"n": i}
        assert records(client, "full") == acked
        # ... the old snapshot verifies, and the status says the state is unsaved.
        assert router.cli("snapshot", "verify", "full").returncode == 0
        status = router.tenant("full")
        assert status["state"] == "running" and status["generation"] == 1
        assert "checkpoint failed" in status["last_error"]
        # The worker retries on its own (2 s after the failure), and reports it.
        wait_until(lambda: router.log().count("checkpoint failed") >= 2, 20)

        filler.unlink()
        # The next retry (4 s after the first) lands without an operator.
        wait_until(lambda: router.tenant("full")["generation"] == 2, 30, step_s=0.5)
        assert router.tenant("full")["last_error"] is None
        acked[add_record(client, "full", {"n": 99})["id"]] = {"n": 99}
        assert router.cli("checkpoint", "full").stdout.strip() == "3"
        assert router.cli("snapshot", "verify", "full").returncode == 0

        kill_worker(client, "full")
        assert records(client, "full") == acked
        router.kill_group()


# ---- the fsync-failure rule: a journal that fails stops acknowledging ---------------------------


@pytest.mark.slow
def test_a_failed_journal_write_answers_503_and_writes_come_back_when_the_disk_grows(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(env=ROUTER_ENV).start()
    router.create("jfull")
    journal = router.data_dir / "tenants" / "jfull" / "journal"
    with tmpfs(journal, "128k"), router.client() as client:
        pid = int(get_ok(client, "/t/jfull/api/worker").json()["pid"])
        acked: dict[int, dict[str, Any]] = {}
        refused = None
        for i in range(200):  # 200 x 3 KB is far past 128 KB
            fields = {"n": i, "blob": "y" * 3000}
            response = client.post("/t/jfull/api/tables/things/records", json=fields)
            if response.status_code != 201:
                refused = response
                break
            acked[response.json()["id"]] = fields
        assert refused is not None and acked
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "cannot make writes durable: no space left on device"
        # The same worker keeps serving reads; writes wait for space.
        assert client.get("/t/jfull/api/tables/things/records").status_code == 200
        assert records(client, "jfull") == acked
        assert alive(pid) and router.state("jfull") == "running"
        assert "refusing writes" in router.log()

        subprocess.run(["mount", "-o", "remount,size=4m", str(journal)], check=True)
        added: list[dict[str, Any]] = []

        def write_accepted() -> bool:
            response = client.post("/t/jfull/api/tables/things/records", json={"n": "after"})
            if response.status_code == 201:
                added.append(response.json())
            return bool(added)

        wait_until(write_accepted, 10)
        acked[added[0]["id"]] = {"n": "after"}
        assert int(get_ok(client, "/t/jfull/api/worker").json()["pid"]) == pid
        kill_worker(client, "jfull")
        assert records(client, "jfull") == acked
        router.kill_group()
