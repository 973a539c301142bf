"""Eviction churn (issue 15): 30 tenants over 4 resident slots, writes round robin.

Every request goes to a tenant that is swapped out, on a host where all 4 slots are taken,
so each one is a cold start that needs a slot: an idle tenant must be checkpointed (it took a
write) and stopped. Baseline, in the same run on the same router: cold starts of the same
tenants with a slot already free (each stopped through the admin API first). The goal is the
churn's p99 within 3x the baseline's p99: a cold start should not wait for a victim.
"""

from __future__ import annotations

import time

from bench.cases import Context, median
from bench.harness import BenchError, BenchRouter, http_call
from bench.report import Figure, Goal

TENANTS = 30
SLOTS = 4


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _write(router: BenchRouter, name: str) -> float:
    started = time.perf_counter()
    status, body = http_call(router.port, "POST", f"/t/{name}/add")
    elapsed = time.perf_counter() - started
    if status != 201:
        raise BenchError(f"a write to {name} answered {status}: {body[:200]!r}")
    return elapsed


def eviction_churn(ctx: Context) -> list[Figure]:
    router = BenchRouter(ctx.procs, ctx.work / "churn", max_resident=SLOTS).start()
    try:
        names = [f"churn-{i:02d}" for i in range(TENANTS)]
        router.cli("create", *names)
        ctx.log(f"churn: {TENANTS} cold starts with a free slot (baseline)")
        free_slot = []
        for name in names:
            _write(router, name)  # each tenant has data, so an eviction must checkpoint it
            router.stop_tenant(name)
            free_slot.append(_write(router, name))
            router.stop_tenant(name)
        rounds = 2 if ctx.quick else 4
        ctx.log(f"churn: {rounds} rounds of writes over {TENANTS} tenants, {SLOTS} slots")
        churn = [_write(router, name) for _ in range(rounds) for name in names]
    finally:
        router.stop()
    cold_p99 = _percentile(free_slot, 0.99) * 1000
    churn_p50 = median(churn) * 1000
    churn_p99 = _percentile(churn, 0.99) * 1000
    return [
        Figure.vs("churn_p99_ms", churn_p99, "ms", "cold_start_free_slot_p99_ms", cold_p99,
                  "churn_p99_vs_cold_start_p99", goal=Goal("ratio", "<=", 3.0, "issue 15"),
                  note=f"{TENANTS} cold starts with a slot free, each after a stop"),
        Figure("churn_p50_ms", churn_p50, "ms",
               note=f"{rounds * TENANTS} writes round robin over {TENANTS} tenants, "
                    f"{SLOTS} slots"),
        Figure("churn_p99_over_p50", churn_p99 / churn_p50, "x"),
    ]
