"""Cold start: a request to a swapped-out small tenant, against a fresh `python -m uvicorn`.

Router side: the tenant has a snapshot and a journal (it served a write and was checkpointed
at stop). Each round stops it through the admin API, then times one request on a new
connection until the whole response is in: routing, the zygote's fork, restore, and the
first response. Baseline: `python -m uvicorn` of the same tiny Starlette route, from spawn
until its first 200 (polled every millisecond), as a server without a zygote would pay.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.app import HELLO, UVICORN_APP_SOURCE
from bench.cases import Context, median
from bench.harness import BenchError, free_port, http_get, http_post, python_env
from bench.memory import smaps_rollup
from bench.report import Figure, Goal


def spawn_uvicorn(ctx: Context) -> tuple[float, subprocess.Popen[bytes], int]:
    """Start a fresh uvicorn; (seconds until its first 200, the process, its port)."""
    app_dir = ctx.work / "uvicorn_app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "sbbench_app.py").write_text(UVICORN_APP_SOURCE)
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "sbbench_app:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    started = time.perf_counter()
    proc = ctx.procs.start(args, cwd=app_dir, env=python_env())
    deadline = started + 30
    while True:
        try:
            status, _ = http_get(port, "/hello", timeout=5)
            if status == 200:
                return time.perf_counter() - started, proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() > deadline:
            ctx.procs.kill(proc)
            raise BenchError("uvicorn did not answer 200 within 30s")
        time.sleep(0.001)


def uvicorn_baseline(ctx: Context) -> float:
    """Median spawn-to-first-200 of a fresh uvicorn; keeps the last one's memory in ctx."""
    times = []
    for i in range(ctx.sizes.uvicorn_spawns):
        elapsed, proc, port = spawn_uvicorn(ctx)
        times.append(elapsed)
        if i == ctx.sizes.uvicorn_spawns - 1:
            for _ in range(20):  # a few requests so its memory is that of a serving worker
                http_get(port, "/hello")
            time.sleep(0.2)
            ctx.shared["fresh_uvicorn_memory"] = smaps_rollup(proc.pid)
        ctx.procs.kill(proc)
    return median(times)


def cold_start(ctx: Context) -> list[Figure]:
    ctx.log("cold start: fresh uvicorn spawns")
    baseline_s = uvicorn_baseline(ctx)
    router = ctx.main_router()
    router.create("cold")
    router.start_tenant("cold")
    if http_post(router.port, "/t/cold/add") != 201:
        raise BenchError("the cold tenant refused a write")
    ctx.log("cold start: swapped-out tenant through the router")
    times = []
    for _ in range(ctx.sizes.cold_starts):
        router.stop_tenant("cold")  # checkpoints when dirty; then the tenant is swapped out
        started = time.perf_counter()
        status, body = http_get(router.port, "/t/cold/hello")
        elapsed = time.perf_counter() - started
        if status != 200 or b"world" not in body:
            raise BenchError(f"cold start answered {status} {body[:200]!r}")
        times.append(elapsed)
    if router.tenant("cold")["generation"] is None:
        raise BenchError("the cold tenant has no snapshot: the figure would not include a restore")
    ctx.shared["cold_start_samples_ms"] = [round(t * 1000, 2) for t in times]
    assert HELLO == {"hello": "world"}
    return [
        Figure.vs("cold_start_ms", median(times) * 1000, "ms",
                  "cold_start_baseline_ms", baseline_s * 1000, "cold_start_ratio",
                  goal=Goal("ratio", "<=", 0.1),
                  note="fresh `python -m uvicorn` of the same route, spawn to first 200"),
        Figure("cold_start_min_ms", min(times) * 1000, "ms",
               goal=None, note="fastest of the cold starts above"),
    ]
