"""`python -m tests.hold_checkpoint DATA_DIR TENANT`: a worker frozen mid-checkpoint.

It does what a worker does up to a checkpoint, with the real modules: takes the tenant's lock,
restores, applies one command (journaled and fsynced), then starts a forked checkpoint
(tenant/checkpoint.py) whose child stops after writing its temp file (the store's fault hook)
for up to HOLD_S. A test kills this process with SIGKILL there, as a worker crash in the
middle of a checkpoint, and checks what the lock does with the child.
"""

from __future__ import annotations

import asyncio
import sys
import time

from contract.worker import WorkerSpec
from snapshots.layout import DataLayout
from snapshots.store import LocalStore
from tenant.checkpoint import Checkpointer
from tenant.lock import TenantLock
from tenant.runtime import load_app, restore

APP = "tests.apps.workload:app"
HOLD_S = 120.0  # bounded: a child nobody kills still ends


def hang_after_temp_write(step: str) -> None:
    if step == "after_temp_write":
        time.sleep(HOLD_S)


async def main(data_dir: str, tenant: str) -> None:
    store = LocalStore(DataLayout(data_dir), fault=hang_after_temp_write)
    lock = TenantLock.acquire(store.layout, tenant)
    try:
        spec = WorkerSpec(tenant=tenant, port=0, data_dir=data_dir, app=APP)
        restored = restore(load_app(APP), spec, store)
        await restored.context.execute("add", amount=1)
        checkpointer = Checkpointer(restored.context, store, restored.journal,
                                    generation=restored.generation)
        await checkpointer.checkpoint(fork=True)
    finally:
        lock.release()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
