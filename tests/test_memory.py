"""Memory of zygote-forked workers, read from /proc/<pid>/smaps_rollup (Linux).

A worker forked from the zygote shares the preloaded interpreter (uvicorn, starlette, the
runtime, the app) with it copy-on-write; what it owns alone (USS = Private_Clean +
Private_Dirty) must stay a small fraction of the zygote's memory, also after a full garbage
collection in the worker: the zygote's `gc.freeze()` keeps the preloaded objects out of the
child's collections, which would otherwise write to (and so copy) every page holding one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.conftest import Router, cmdline, group_pids, wait_until

MakeRouter = Callable[..., Router]
MEMPROBE = "tests.apps.memprobe:app"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Rollup:
    rss: int
    pss: int
    uss: int  # Private_Clean + Private_Dirty
    shared: int  # Shared_Clean + Shared_Dirty


def smaps_rollup(pid: int) -> Rollup:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    return Rollup(rss=fields["Rss"], pss=fields["Pss"],
                  uss=fields["Private_Clean"] + fields["Private_Dirty"],
                  shared=fields["Shared_Clean"] + fields["Shared_Dirty"])


def ready_zygote(router: Router) -> int:
    assert router.proc is not None
    group = router.proc.pid

    def ready() -> int | None:
        pids = [int(p) for p in re.findall(r"zygote for \S+ ready \(pid (\d+)\)", router.log())]
        live = [p for p in group_pids(group) if cmdline(p).startswith("switchboard: zygote")]
        return next((p for p in reversed(pids) if p in live), None)

    pid: int = wait_until(ready, 30)
    return pid


def test_smaps_rollup_reads_this_process() -> None:
    import os

    mine = smaps_rollup(os.getpid())
    assert 0 < mine.uss <= mine.rss and 0 < mine.pss <= mine.rss
    assert mine.uss + mine.shared == mine.rss


def test_a_forked_worker_owns_a_small_fraction_of_the_zygotes_memory_even_after_a_full_gc(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=MEMPROBE).start()
    zygote_pid = ready_zygote(router)
    router.create("acme")
    with router.client() as client:
        for _ in range(20):  # a worker that has served, not one that only booted
            response = client.get("/t/acme/count")
            assert response.status_code == 200, response.text
        pid = response.json()["pid"]
        time.sleep(0.2)
        zygote = smaps_rollup(zygote_pid)
        before = smaps_rollup(pid)

        collected = client.post("/t/acme/gc")
        assert collected.status_code == 200 and collected.json()["pid"] == pid
        assert collected.json()["frozen"] > 10_000  # the preloaded heap is frozen
        client.post("/t/acme/gc")
        time.sleep(0.2)
        after = smaps_rollup(pid)

    # Most of what the worker maps is still the zygote's pages, shared.
    assert before.shared > before.uss
    assert before.uss < 0.5 * zygote.rss, (before, zygote)
    # A full collection walks only the worker's own objects: a collection that walked the
    # preloaded heap would copy most of it (the zygote's Python heap is over half its RSS).
    assert after.uss < 0.5 * zygote.rss, (after, zygote)
    assert after.uss - before.uss < 0.1 * zygote.rss, (before, after, zygote)
