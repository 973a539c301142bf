"""Memory: an idle worker's USS, 50 resident tenants, 10,000 mapped tenants.

- idle_worker_uss_mb: a zygote-forked worker that has served a few requests, then sat idle;
  baseline: a fresh `python -m uvicorn` of the same route after the same requests.
- resident_50_*: 50 running tenants plus zygote plus router. PSS adds up to what the set
  costs; RSS counts shared pages once per process (what `ps` sums would say). Baselines:
  50 fresh uvicorns, estimated from the one measured (USS each, shared pages once, and for RSS
  simply 50 times its RSS).
- router_bytes_per_mapped_tenant: growth of the router's RSS while 10,000 tenants are created
  through the signed admin API, divided by 10,000; baseline: the bytes per entry of the
  smallest Python mapping of the same names to ports (a dict of str -> int), by tracemalloc.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.cases import Context
from bench.cases.coldstart import spawn_uvicorn
from bench.harness import BenchError, BenchRouter, http_get
from bench.memory import Memory, rss_bytes, smaps_rollup
from bench.report import Figure, Goal
from ops.client import AdminAuth
from switchboard.signing import load_key


def fresh_uvicorn_memory(ctx: Context) -> Memory:
    memory: Memory | None = ctx.shared.get("fresh_uvicorn_memory")
    if memory is None:
        _, proc, port = spawn_uvicorn(ctx)
        for _ in range(20):
            http_get(port, "/hello")
        time.sleep(0.2)
        memory = smaps_rollup(proc.pid)
        ctx.procs.kill(proc)
    return memory


def idle_worker(ctx: Context) -> list[Figure]:
    router = ctx.main_router()
    router.create("idle")
    info = router.start_tenant("idle")
    for _ in range(20):
        http_get(router.port, "/t/idle/hello")
    time.sleep(0.3)
    worker = smaps_rollup(info["pid"])
    fresh = fresh_uvicorn_memory(ctx)
    zygote_pid = router.zygote_pid()
    if zygote_pid is None:
        raise BenchError("no zygote in the router's process group")
    zygote = smaps_rollup(zygote_pid)
    ctx.shared["zygote_memory"] = zygote
    return [
        Figure.vs("idle_worker_uss_mb", worker.uss_mb, "MiB", "fresh_worker_uss_mb", fresh.uss_mb,
                  "idle_worker_uss_ratio", goal=Goal("ratio", "<=", 0.3),
                  note="fresh `python -m uvicorn` of the same route, after the same 20 requests"),
        Figure.vs("idle_worker_rss_mb", worker.rss_mb, "MiB", "zygote_rss_mb", zygote.rss_mb,
                  "idle_worker_rss_vs_zygote", note="the zygote it was forked from"),
    ]


def resident(ctx: Context) -> list[Figure]:
    router = ctx.main_router()
    for tenant in router.admin_call("GET", "/v1/tenants")["tenants"]:
        if tenant["state"] == "running":
            router.stop_tenant(tenant["name"])
    n = ctx.sizes.resident
    names = [f"r{i:03d}" for i in range(n)]
    for name in names:
        router.create(name)
    ctx.log(f"memory: starting {n} resident tenants")
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda name: http_get(router.port, f"/t/{name}/hello")[0], names))
    if set(statuses) != {200}:
        raise BenchError(f"resident tenants answered {sorted(set(statuses))}")
    time.sleep(0.5)
    workers = router.worker_pids()
    if len(workers) != n:
        raise BenchError(f"{len(workers)} workers resident, expected {n}")
    memories = [smaps_rollup(pid) for pid in router.group()]
    pss = sum(m.pss for m in memories) / 2**20
    rss = sum(m.rss for m in memories) / 2**20
    fresh = fresh_uvicorn_memory(ctx)
    fresh_pss_estimate = n * fresh.uss_mb + (fresh.rss_mb - fresh.uss_mb)
    return [
        Figure.vs(f"resident_{n}_rss_total_mb", rss, "MiB", f"fresh_{n}_rss_total_mb",
                  n * fresh.rss_mb, f"resident_{n}_rss_ratio",
                  note=f"{n} x a fresh uvicorn's RSS"),
        Figure.vs(f"resident_{n}_pss_total_mb", pss, "MiB", f"fresh_{n}_pss_total_mb",
                  fresh_pss_estimate, f"resident_{n}_pss_ratio",
                  note=f"{n} x a fresh uvicorn's USS + its shared pages once"),
    ]


def dict_bytes_per_entry(names: list[str]) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mapping = {str(name): 20000 + i for i, name in enumerate(names)}  # fresh str objects
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del mapping
    return size / len(names)


async def create_one_by_one(router: BenchRouter, names: list[str], concurrency: int) -> None:
    queue = list(reversed(names))

    async def creator(client: httpx.AsyncClient) -> None:
        while queue:
            name = queue.pop()
            response = await client.post("/v1/tenants", json={"name": name})
            if response.status_code != 201:
                raise BenchError(f"creating {name}: {response.status_code} {response.text[:200]}")

    auth = AdminAuth(load_key(router.key_file))
    async with httpx.AsyncClient(base_url=router.admin_url, timeout=60, auth=auth) as client:
        await asyncio.gather(*(creator(client) for _ in range(concurrency)))


def mapped(ctx: Context) -> list[Figure]:
    n = ctx.sizes.mapped
    router = BenchRouter(ctx.procs, ctx.work / "mapped", max_resident=4,
                         port_range="9000-19999").start()
    try:
        assert router.proc is not None
        router.create("warmup")  # first-call imports and caches are not per-tenant costs
        router.admin_call("GET", "/v1/tenants/warmup")
        time.sleep(0.3)
        before = rss_bytes(router.proc.pid)
        names = [f"m{i:05d}" for i in range(n)]
        ctx.log(f"memory: mapping {n} tenants through the admin API")
        started = time.perf_counter()
        asyncio.run(create_one_by_one(router, names, concurrency=8))
        elapsed = time.perf_counter() - started
        time.sleep(0.3)
        after = rss_bytes(router.proc.pid)
        listed = len(router.admin_call("GET", "/v1/tenants")["tenants"])
        if listed != n + 1:
            raise BenchError(f"the router lists {listed} tenants, expected {n + 1}")
    finally:
        router.stop()
    per_tenant = (after - before) / n
    return [
        Figure.vs("router_bytes_per_mapped_tenant", per_tenant, "B", "dict_bytes_per_entry",
                  dict_bytes_per_entry(names), "mapped_tenant_vs_dict",
                  goal=Goal("value", "<=", 2048),
                  note=f"a plain dict name -> port of the same {n} names (tracemalloc)"),
        Figure("mapped_tenants", n, "tenants",
               note="--quick maps fewer than 10,000 to stay under a minute; the cost is linear"),
        Figure("router_rss_before_mapping_mb", before / 2**20, "MiB"),
        Figure("mapped_creates_per_s", n / elapsed, "creates/s",
               note="admin API POST /v1/tenants, 8 concurrent signed requests"),
    ]
