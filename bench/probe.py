"""In-process measurements that need a clean interpreter: `python -m bench.probe CMD ...`.

Runs in a child of the bench, so the bench's own heap (and its garbage collector) never
weighs on a timing. Each command prints one JSON object on stdout.

  build   DATA_DIR TENANT MB   make a bench-app state of about MB megabytes; time the raw
                               msgpack.packb of it, then an in-process checkpoint through
                               tenant.checkpoint.Checkpointer (codec + LocalStore.save: the
                               snapshot the other commands restore), then a forked one
  raw     DATA_DIR TENANT      msgpack.unpackb of that snapshot's payload, GC off and on
  restore DATA_DIR TENANT      tenant.runtime.restore: read + verify + decode + journal open
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from typing import Any

import msgpack


def _spec(data_dir: str, tenant: str) -> Any:
    from bench.app import APP_VERSION  # noqa: F401 - the bench app must be importable here
    from contract.worker import WorkerSpec

    return WorkerSpec(tenant=tenant, port=0, data_dir=data_dir, app="bench.app:app")


def build(data_dir: str, tenant: str, mb: float) -> dict[str, Any]:
    from bench.app import app, make_state
    from snapshots.store import LocalStore
    from tenant.checkpoint import Checkpointer
    from tenant.context import TenantContext
    from tenant.journal import Journal

    state = make_state(mb)
    gc.collect()
    gc.freeze()  # as the runtime does after a restore: the state is long-lived
    raw_pack_s = float("inf")
    for _ in range(3):  # the fastest of three: on a shared machine work only gets slower
        started = time.perf_counter()
        raw = msgpack.packb(state)
        raw_pack_s = min(raw_pack_s, time.perf_counter() - started)
        size = len(raw)
        del raw
    store = LocalStore.in_data_dir(data_dir, keep_generations=2)

    async def checkpoints() -> tuple[float, float]:
        journal = Journal.open(store.layout.journal_dir(tenant), next_seq=1)
        context = TenantContext(app, tenant, state, journal=journal, journal_pos=0)
        checkpointer = Checkpointer(context, store, journal, generation=None)
        in_process = float("inf")
        for _ in range(2):
            context.commands_since_checkpoint = 1
            started = time.perf_counter()
            await checkpointer.checkpoint(fork=False)
            in_process = min(in_process, time.perf_counter() - started)
        context.commands_since_checkpoint = 1
        started = time.perf_counter()
        await checkpointer.checkpoint(fork=True)
        forked = time.perf_counter() - started
        await journal.close()
        return in_process, forked

    checkpoint_s, checkpoint_fork_s = asyncio.run(checkpoints())
    return {"payload_bytes": size, "records": len(state["records"]), "raw_pack_s": raw_pack_s,
            "checkpoint_s": checkpoint_s, "checkpoint_fork_s": checkpoint_fork_s}


def raw(data_dir: str, tenant: str) -> dict[str, Any]:
    from snapshots.store import LocalStore

    loaded = LocalStore.in_data_dir(data_dir).load_newest_valid(tenant)
    assert loaded is not None, f"no snapshot for {tenant} in {data_dir}"
    payload = loaded.payload
    gc.collect()
    gc.disable()
    started = time.perf_counter()
    state = msgpack.unpackb(payload)
    gc_off = time.perf_counter() - started
    del state
    gc.enable()
    gc.collect()
    started = time.perf_counter()
    state = msgpack.unpackb(payload)
    gc_on = time.perf_counter() - started
    del state
    return {"payload_bytes": len(payload), "unpack_gc_off_s": gc_off, "unpack_gc_on_s": gc_on}


def restore(data_dir: str, tenant: str) -> dict[str, Any]:
    from bench.app import app
    from snapshots.store import LocalStore
    from tenant.runtime import restore as runtime_restore

    spec = _spec(data_dir, tenant)
    store = LocalStore.in_data_dir(data_dir)
    gc.collect()
    started = time.perf_counter()
    restored = runtime_restore(app, spec, store)
    elapsed = time.perf_counter() - started
    records = len(restored.context.state["records"])
    asyncio.run(restored.journal.close())
    return {"restore_s": elapsed, "records": records, "generation": restored.generation}


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "build":
        result = build(args[0], args[1], float(args[2]))
    elif command == "raw":
        result = raw(args[0], args[1])
    elif command == "restore":
        result = restore(args[0], args[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
