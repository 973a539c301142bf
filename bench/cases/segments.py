"""Segmented snapshots (issue 16): a 100 MB tenant of 100 tables, in one run.

The same state (bench.segapp.make_state) as two tenants on two routers: "seg" runs the app
that declares one segment per table (tenant/segments.py), "whole" the same app without
segments (today's whole-state snapshot). Snapshots are written by `bench.segprobe build`
(in-process checkpoints through tenant.checkpoint.Checkpointer, signed with the router's key).

- segmented_cold_start_one_table_ms: GET /tables/t42/count to the swapped-out "seg" tenant
  through the router, until the response (the fastest of its rounds), against
  segmented_raw_unpack_ms, msgpack.unpackb of the whole state's payload with the GC off (goal
  <= 0.1x), and against whole_restore_cold_start_ms, the same request to "whole";
- segmented_fully_loaded_ms: from the same request until GET /loaded says no segment is left
  (the background load), against whole_restore_cold_start_ms;
- checkpoint_one_record_bytes / _ms: a checkpoint after one command changed one record, against
  the full checkpoint of the same state (goal: bytes < 2% of it).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.cases import Context
from bench.harness import BenchError, BenchRouter, http_get
from bench.report import Figure, Goal

TABLES = 100
READ_TABLE = "t42"


def probe(ctx: Context, *args: str, timeout: float = 600) -> dict[str, Any]:
    result = ctx.procs.run([sys.executable, "-m", "bench.segprobe", *args], timeout)
    if result.returncode != 0:
        raise BenchError(f"bench.segprobe {args[0]} failed: {result.stderr.decode()[-800:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def segments(ctx: Context) -> list[Figure]:
    mb = ctx.sizes.restore_mb
    rounds = 2 if ctx.quick else 3
    raw_out = str(ctx.work / "segments-raw.msgpack")
    seg = _router(ctx, "seg", "bench.segapp:app", "32500-32599")
    try:
        ctx.log(f"segments: building a {mb:g} MB state of {TABLES} tables, segmented")
        built = _build(ctx, seg, "seg", mb, "segmented", raw_out)
        raw_s = probe(ctx, "raw", raw_out)["unpack_gc_off_s"]
        cold, loaded = [], []
        for _ in range(rounds):
            first, full = _cold_start(seg, "seg", until_loaded=True)
            cold.append(first)
            loaded.append(full)
    finally:
        seg.stop()
    whole = _router(ctx, "whole", "bench.segapp:whole_app", "32600-32699")
    try:
        ctx.log(f"segments: the same {mb:g} MB state, one whole-state snapshot")
        _build(ctx, whole, "whole", mb, "whole", raw_out)
        whole_cold = [_cold_start(whole, "whole", until_loaded=False)[0] for _ in range(rounds)]
    finally:
        whole.stop()

    cold_ms, loaded_ms, whole_ms = min(cold) * 1000, min(loaded) * 1000, min(whole_cold) * 1000
    payload_mb = built["payload_bytes"] / 1e6
    return [
        Figure.vs("segmented_cold_start_one_table_ms", cold_ms, "ms", "segmented_raw_unpack_ms",
                  raw_s * 1000, "segmented_cold_start_vs_raw_unpack",
                  goal=Goal("ratio", "<=", 0.1, "issue 16"),
                  note=f"msgpack.unpackb of the whole {payload_mb:.0f} MB state, GC off"),
        Figure.vs("segmented_cold_start_one_table_vs_whole_ms", cold_ms, "ms",
                  "whole_restore_cold_start_ms", whole_ms,
                  "segmented_cold_start_vs_whole_restore",
                  note="the same request to the same state in one whole-state snapshot"),
        Figure.vs("segmented_fully_loaded_ms", loaded_ms, "ms", "whole_restore_cold_start_ms",
                  whole_ms, "segmented_fully_loaded_vs_whole_restore",
                  note="until every segment is loaded (background load after the response)"),
        Figure.vs("checkpoint_one_record_bytes", built["one_record_checkpoint_bytes"], "B",
                  "checkpoint_full_bytes", built["full_checkpoint_bytes"],
                  "checkpoint_one_record_bytes_ratio",
                  goal=Goal("ratio", "<=", 0.02, "issue 16"),
                  note="a full checkpoint of the same segmented state"),
        Figure.vs("checkpoint_one_record_ms", built["one_record_checkpoint_s"] * 1000, "ms",
                  "checkpoint_full_ms", built["full_checkpoint_s"] * 1000,
                  "checkpoint_one_record_time_ratio",
                  note="in-process checkpoints: pack + write + fsync"),
    ]


def _router(ctx: Context, name: str, app: str, ports: str) -> BenchRouter:
    router = BenchRouter(ctx.procs, ctx.work / f"segments-{name}", max_resident=4,
                         port_range=ports)
    router.app = app
    return router.start()


def _build(ctx: Context, router: BenchRouter, tenant: str, mb: float, mode: str,
           raw_out: str) -> dict[str, Any]:
    router.create(tenant)
    data_dir = str(router.data_dir)
    return probe(ctx, "build", data_dir, tenant, str(mb), str(TABLES),
                 str(router.data_dir / "snapshot.key"), mode, raw_out)


def _cold_start(router: BenchRouter, tenant: str, *, until_loaded: bool) -> tuple[float, float]:
    """(seconds until the first response, seconds until every segment is loaded)."""
    if router.tenant(tenant)["state"] != "stopped":
        router.stop_tenant(tenant)
    wall_started = time.time()  # the worker says when it finished loading, in wall time
    started = time.perf_counter()
    status, body = http_get(router.port, f"/t/{tenant}/tables/{READ_TABLE}/count")
    first = time.perf_counter() - started
    if status != 200 or not json.loads(body)["records"]:
        raise BenchError(f"{tenant} answered {status} {body[:200]!r}")
    if not until_loaded:
        return first, first
    deadline = started + 60
    while time.perf_counter() < deadline:
        time.sleep(0.05)  # coarse: the figure is the worker's own time, not this poll's
        status, body = http_get(router.port, f"/t/{tenant}/loaded")
        answer = json.loads(body) if status == 200 else {}
        if answer.get("pending") == 0 and answer.get("loaded_at") is not None:
            return first, float(answer["loaded_at"]) - wall_started
    raise BenchError(f"{tenant} was not fully loaded within 60 s")
