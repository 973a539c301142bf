"""Batch create (issue 15): 10,000 tenants with one `switchboard create` command.

`switchboard create NAME...` sends the names in batches (`POST /v1/tenants {"names": [...]}`,
about 1,000 a request under the admin API's body cap), each one transaction in the tenant
table and one fsync of the tenants folder. Baseline, in the same run: creating tenants one
signed request each, 8 requests at a time, as a script without the batch route would.
The batch figure includes the CLI's own start (about 0.2 s of imports).
"""

from __future__ import annotations

import asyncio
import time

from bench.cases import Context
from bench.cases.memory import create_one_by_one
from bench.harness import BenchError, BenchRouter
from bench.report import Figure, Goal

BATCH = 10_000


def batch_create(ctx: Context) -> list[Figure]:
    router = BenchRouter(ctx.procs, ctx.work / "create", max_resident=4).start()
    try:
        router.create("warmup")  # first-call imports and caches are not per-tenant costs
        singles = [f"one-{i:05d}" for i in range(200 if ctx.quick else 1000)]
        ctx.log(f"create: {len(singles)} tenants one request each")
        started = time.perf_counter()
        asyncio.run(create_one_by_one(router, singles, concurrency=8))
        one_by_one_per_s = len(singles) / (time.perf_counter() - started)

        names = [f"batch-{i:05d}" for i in range(BATCH)]
        ctx.log(f"create: {BATCH} tenants with one `switchboard create`")
        started = time.perf_counter()
        router.cli("create", *names)
        batch_s = time.perf_counter() - started
        listed = len(router.admin_call("GET", "/v1/tenants")["tenants"])
        if listed != 1 + len(singles) + BATCH:
            raise BenchError(f"the router lists {listed} tenants after the batch create")
    finally:
        router.stop()
    return [
        Figure("create_batch_10000_s", batch_s, "s",
               goal=Goal("value", "<=", 2.0, "issue 15"),
               note="`switchboard create` with 10,000 names, CLI start included"),
        Figure.vs("create_batch_per_s", BATCH / batch_s, "creates/s",
                  "create_one_by_one_per_s", one_by_one_per_s, "create_batch_speedup",
                  note="one signed POST /v1/tenants a tenant, 8 at a time"),
    ]
