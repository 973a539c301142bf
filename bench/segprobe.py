"""`python -m bench.segprobe CMD ...`: the in-process parts of the segmented-snapshot bench,
in a clean interpreter (bench/cases/segments.py). Each command prints one JSON object.

  build DATA_DIR TENANT MB TABLES KEY_FILE segmented|whole RAW_OUT
        make a bench.segapp state; write it as the tenant's snapshot through
        tenant.checkpoint.Checkpointer (in-process), signed with KEY_FILE's key; segmented:
        time and bytes of that full checkpoint, then of one after changing one record. The
        whole state's raw msgpack goes to RAW_OUT (for `raw`).
  raw   RAW_OUT   msgpack.unpackb of the whole state, GC off, the fastest of three
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgpack


def build(data_dir: str, tenant: str, mb: float, tables: int, key_file: str, mode: str,
          raw_out: str) -> dict[str, Any]:
    from bench.segapp import app, make_state, whole_app
    from contract.worker import WorkerSpec
    from snapshots.mac import WriterIdentity, load_key
    from snapshots.store import LocalStore
    from tenant.checkpoint import Checkpointer
    from tenant.runtime import restore

    the_app = app if mode == "segmented" else whole_app
    state = make_state(mb, tables)
    raw = msgpack.packb(state)
    Path(raw_out).write_bytes(raw)
    gc.collect()
    gc.freeze()
    store = LocalStore.in_data_dir(data_dir, keep_generations=2,
                                   identity=WriterIdentity(key=load_key(key_file)))
    spec = WorkerSpec(tenant=tenant, port=0, data_dir=data_dir, app="bench.segapp:app")

    async def checkpoints() -> dict[str, Any]:
        restored = restore(the_app, spec, store)
        context = restored.context
        from tenant.segments import adopt

        context.state = adopt(state, the_app.segment_groups)
        checkpointer = Checkpointer(context, store, restored.journal, generation=None)
        context.commands_since_checkpoint = 1
        started = time.perf_counter()
        full = await checkpointer.checkpoint(fork=False)
        full_s = time.perf_counter() - started
        out = {"payload_bytes": len(raw), "full_checkpoint_s": full_s,
               "full_checkpoint_bytes": full.bytes}
        if mode == "segmented":
            await context.execute("touch", table=f"t{tables // 2}", value=-1.0)
            started = time.perf_counter()
            one = await checkpointer.checkpoint(fork=False)
            out.update(one_record_checkpoint_s=time.perf_counter() - started,
                       one_record_checkpoint_bytes=one.bytes)
        await restored.journal.close()
        return out

    return asyncio.run(checkpoints())


def raw(raw_out: str) -> dict[str, Any]:
    payload = Path(raw_out).read_bytes()
    best = float("inf")
    for _ in range(3):
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        state = msgpack.unpackb(payload)
        best = min(best, time.perf_counter() - started)
        del state
        gc.enable()
    return {"payload_bytes": len(payload), "unpack_gc_off_s": best}


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "build":
        result = build(args[0], args[1], float(args[2]), int(args[3]), args[4], args[5],
                       args[6])
    elif command == "raw":
        result = raw(args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
