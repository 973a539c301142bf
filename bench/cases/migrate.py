"""Moving a tenant between two hosts (issue 13): the pause clients see, and the copy speed.

Two routers on this machine (their own data dirs, sharing admin.key and snapshot.key). For a
10 MB and a 100 MB tenant (built by `bench.probe build`, then written to once so the journal
has a tail): paced GETs through the source's URL (2 connections x 100 req/s, every request
timed) while `switchboard migrate` moves it; the pause is the longest request that overlapped
the switch (held requests wait for it, then are forwarded; the router reports the switch's
start and end on CLOCK_MONOTONIC, which the load generator's timings share), and the worst
is the longest anywhere in the move (the pre-copy competes for the CPU). The transfer rate is the
pre-copy's: the snapshot's bytes over the time from its first byte out to the target's
answer that it verified and staged it.

Baseline, in the same run and on the same tenant: a plain stop + start on one host (the
worker checkpoints its dirty state at the stop, the next request restores it), which is what
a client would wait for if the tenant were moved by stopping it and starting it elsewhere.
"""

from __future__ import annotations

import json
import shutil
import signal
import time

from bench.cases import Context
from bench.cases.bigstate import probe
from bench.harness import BenchError, BenchRouter, http_get, http_post
from bench.load import loadgen_args
from bench.report import Figure, Goal

SIZES_MB = (10, 100)


def migrate(ctx: Context) -> list[Figure]:
    a = BenchRouter(ctx.procs, ctx.work / "move-a", max_resident=4,
                    port_range="33000-33499").start()
    b: BenchRouter | None = None
    try:
        b_dir = ctx.work / "move-b"
        b_dir.mkdir(mode=0o700)
        for key in ("admin.key", "snapshot.key"):
            shutil.copy(a.data_dir / key, b_dir / key)
            (b_dir / key).chmod(0o600)
        b = BenchRouter(ctx.procs, b_dir, max_resident=4, port_range="33500-33999").start()
        figures: list[Figure] = []
        for mb in SIZES_MB:
            figures += _measure(ctx, a, b, mb)
        return figures
    finally:
        a.stop()
        if b is not None:
            b.stop()


def _measure(ctx: Context, a: BenchRouter, b: BenchRouter, mb: int) -> list[Figure]:
    name = f"move{mb}"
    a.create(name)
    ctx.log(f"migrate: building a {mb} MB tenant")
    probe(ctx, "build", str(a.data_dir), name, str(mb))
    _wake_and_write(a, name)

    ctx.log(f"migrate: stop + start of the {mb} MB tenant on one host (baseline)")
    started = time.perf_counter()
    a.stop_tenant(name)
    _wake_and_write(a, name, write=False)
    stop_start_ms = (time.perf_counter() - started) * 1000
    _wake_and_write(a, name)  # dirty again: a journal tail to ship

    ctx.log(f"migrate: moving the {mb} MB tenant under paced GETs")
    out = ctx.work / f"migrate-{name}.json"
    sampler = ctx.procs.start([*loadgen_args(a.port, f"/t/{name}/hello", connections=2,
                                             duration_s=600, rate=100, samples=True),
                               "--out", str(out)])
    time.sleep(0.5)
    began = time.monotonic()
    result = a.cli("migrate", name, "--to", b.admin_url, "--json")
    ended = time.monotonic()
    time.sleep(0.3)
    sampler.send_signal(signal.SIGTERM)
    if sampler.wait(30) != 0:
        raise BenchError("the latency sampler failed")
    ctx.procs.kill(sampler)
    load = json.loads(out.read_text())
    if load["errors"]:
        raise BenchError(f"requests failed during the move: {load['first_error']}")
    outcome = json.loads(result.stdout)
    if outcome.get("step") != "done":
        raise BenchError(f"the move failed: {outcome}")
    switch_began, switch_ended = outcome["switch_monotonic_s"]  # the router's; same clock
    window = [lat for start, lat in load["samples"]
              if start <= switch_ended and start + lat >= switch_began]
    whole = [lat for start, lat in load["samples"] if start <= ended and start + lat >= began]
    if not window:
        raise BenchError("no request overlapped the switch")
    pause_ms = max(window) * 1000
    transfer_mb_s = outcome["snapshot_bytes"] / 1e6 / max(outcome["transfer_s"], 1e-6)
    status, _ = http_get(a.port, f"/t/{name}/count")  # forwarded to B
    if status != 200:
        raise BenchError(f"{name} answered {status} through the source after the move")
    goal = Goal("value", "<=", 100.0, "issue 13") if mb == 10 else None
    return [
        Figure.vs(f"migrate_pause_ms_{mb}mb", pause_ms, "ms", f"stop_start_ms_{mb}mb",
                  stop_start_ms, f"migrate_pause_ratio_{mb}mb", goal=goal,
                  note="the longest GET overlapping the move, vs stop + first request on one "
                       "host"),
        Figure(f"migrate_held_ms_{mb}mb", float(outcome["pause_ms"]), "ms",
               note="how long the source held the tenant's requests (its own measure)"),
        Figure(f"migrate_worst_ms_{mb}mb", max(whole) * 1000, "ms",
               note="the longest GET anywhere in the move (the pre-copy shares the 2 cores)"),
        Figure(f"migrate_transfer_mb_s_{mb}mb", transfer_mb_s, "MB/s",
               note="pre-copy: snapshot bytes over send + verify + stage on the target"),
        Figure(f"migrate_total_s_{mb}mb", ended - began, "s",
               note="`switchboard migrate` from call to answer"),
    ]


def _wake_and_write(router: BenchRouter, name: str, *, write: bool = True) -> None:
    status, body = http_get(router.port, f"/t/{name}/count")
    if status != 200:
        raise BenchError(f"{name} answered {status}: {body[:200]!r}")
    if write and http_post(router.port, f"/t/{name}/add") != 201:
        raise BenchError(f"{name} refused a write")
