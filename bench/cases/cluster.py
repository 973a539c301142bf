"""Cluster mode on PostgreSQL (issue 14), against local mode in the same run.

One PostgreSQL of its own (harness/postgres.py: fsync on, synchronous_commit on) on this
machine, so a commit costs a local WAL fsync plus a round trip over loopback.

- Journal writes/s at 1, 8 and 64 concurrent writers: a worker's cluster journal
  (tenant/pgjournal.py: local file without fsync + one PostgreSQL transaction per group
  commit, fenced) in this process, against the local journal (policy "always", group commit
  fsync), both signed, both on uvloop.
- Cold start of a 1 MB and a 100 MB tenant: the first request to a stopped tenant through a
  cluster host (claim, stream the snapshot out of PostgreSQL, restore) against the same
  snapshot restored from the local disk by a standalone router; the fastest of a few.
- Migration pause: `switchboard migrate NAME --to HOST_ID` between two cluster hosts, as the
  source reports it (requests held: drain, stop, compare-and-set, the target's start from
  PostgreSQL), for the 1 MB and the 100 MB tenant.
- Failover recovery: a host holding a tenant is killed (SIGKILL of its process group) while a
  client writes through another host; the time from the kill to the first write
  acknowledged again (lease_ttl_s = 3: the goal is at most lease_ttl_s + 2 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from bench.cases import Context
from bench.cases.bigstate import probe
from bench.cases.journal import appends_per_s, group_commit
from bench.harness import BenchError, BenchRouter, http_call, http_get
from bench.report import Figure, Goal
from harness.cluster import SHARED_KEYS
from harness.postgres import LocalPostgres

WRITER_COUNTS = (1, 8, 64)
COLD_SIZES_MB = {"small": 1.0, "100mb": 100.0}
LEASE_TTL_S = 3.0
ARGS = {"amount": 1}


def cluster(ctx: Context) -> list[Figure]:
    postgres = LocalPostgres(max_connections=100).start()
    try:
        from switchboard.cluster.schema import upgrade

        upgrade(postgres.url)
        figures = _journal(ctx, postgres.url)
        figures += _hosts(ctx, postgres.url)
        return figures
    finally:
        postgres.destroy()


# ---- journal ----

async def _cluster_appends(url: str, data_dir: Path, tenant: str, writers: int,
                           seconds: float) -> float:
    from contract.worker import WorkerSpec
    from snapshots.mac import WriterIdentity
    from snapshots.store import LocalStore
    from switchboard.cluster.pgdirectory import PgDirectory
    from tenant.pgjournal import ClusterSide
    from tenant.recovery import journal_signing

    directory = PgDirectory(url)
    try:
        await directory.register("bench", router_url="http://127.0.0.1:1",
                                 admin_url="http://127.0.0.1:2", ttl_s=3600, max_resident=1)
        await directory.create(tenant)
        record = await directory.claim(tenant, "bench", expect_epoch=1)
    finally:
        await directory.close_async()
    spec = WorkerSpec(tenant=tenant, port=0, data_dir=str(data_dir), app="bench.app:app",
                      epoch=record.epoch, host_id="bench", cluster_url=url,
                      creation_id=record.creation_id)
    store = LocalStore.in_data_dir(str(data_dir), identity=WriterIdentity(
        key=os.urandom(32), epoch=record.epoch, creation_id=record.creation_id))
    side = ClusterSide(spec, store)
    journal = side.open_journal(store.layout.journal_dir(tenant), next_seq=1,
                                signing=journal_signing(store, tenant))
    return await appends_per_s(journal, "add", ARGS, writers, seconds)


def _journal(ctx: Context, url: str) -> list[Figure]:
    import uvloop

    base = ctx.work / "cluster-journal"
    base.mkdir(exist_ok=True)
    seconds = ctx.sizes.journal_s
    figures = []
    for writers in WRITER_COUNTS:
        ctx.log(f"cluster: journal, {writers} writers, local then PostgreSQL")
        local = uvloop.run(group_commit(str(base / f"local{writers}"), writers, seconds))
        remote = uvloop.run(_cluster_appends(url, base / f"pg{writers}", f"j{writers}",
                                             writers, seconds))
        figures.append(Figure.vs(
            f"cluster_journal_writes_per_s_{writers}", remote, "writes/s",
            f"cluster_local_journal_writes_per_s_{writers}", local,
            f"cluster_journal_ratio_{writers}",
            note="the local journal (fsync group commit) in the same run"))
    return figures


# ---- routers: cold start, migration, failover ----

def _cluster_host(ctx: Context, url: str, host_id: str, keys_from: Path | None,
                  port_range: str) -> BenchRouter:
    data_dir = ctx.work / f"cluster-{host_id}"
    data_dir.mkdir(mode=0o700)
    if keys_from is not None:
        for name in SHARED_KEYS:
            shutil.copyfile(keys_from / name, data_dir / name)
            (data_dir / name).chmod(0o600)
    host = BenchRouter(ctx.procs, data_dir, max_resident=8, port_range=port_range)
    host.extra_args = ["--cluster", url, "--host-id", host_id, "--lease-ttl", f"{LEASE_TTL_S:g}"]
    return host.start()


def _upload(ctx: Context, url: str, name: str, mb: float) -> int:
    """Build a `mb` MB bench state (bench.probe) and store it as the tenant's snapshot in
    PostgreSQL; the number of records in it."""
    from snapshots.store import LocalStore
    from tenant.pgstore import PgTenantStore

    scratch = ctx.work / f"cluster-build-{name}"
    scratch.mkdir(mode=0o700)
    built = probe(ctx, "build", str(scratch), name, str(mb))
    newest = LocalStore.in_data_dir(str(scratch)).generations(name)[0]
    assert newest.header is not None
    store = PgTenantStore(url, name, epoch=1, host_id=None)
    try:
        store.save_snapshot(newest.path, newest.generation, newest.header.journal_pos)
    finally:
        store.close()
    shutil.rmtree(scratch, ignore_errors=True)
    records: int = built["records"]
    return records


def _cold_ms(router: BenchRouter, name: str, records: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        if router.tenant(name)["state"] not in ("stopped", "moved"):
            router.stop_tenant(name)
        started = time.perf_counter()
        status, body = http_get(router.port, f"/t/{name}/count", timeout=300)
        times.append(time.perf_counter() - started)
        if status != 200 or json.loads(body)["records"] != records:
            raise BenchError(f"{name} answered {status} {body[:200]!r}")
    return min(times) * 1000


def _hosts(ctx: Context, url: str) -> list[Figure]:
    rounds = 2 if ctx.quick else 3
    local = BenchRouter(ctx.procs, ctx.work / "cluster-local", max_resident=8,
                        port_range="34000-34199").start()
    hosts: list[BenchRouter] = []
    try:
        h1 = _cluster_host(ctx, url, "h1", None, "34200-34399")
        hosts.append(h1)
        h2 = _cluster_host(ctx, url, "h2", h1.data_dir, "34400-34599")
        hosts.append(h2)
        cold: dict[str, tuple[float, float]] = {}
        for label, mb in COLD_SIZES_MB.items():
            name = f"cold-{label}"
            ctx.log(f"cluster: cold start of a {mb:g} MB tenant, local then PostgreSQL")
            local.create(name)
            records = probe(ctx, "build", str(local.data_dir), name, str(mb))["records"]
            local_ms = _cold_ms(local, name, records, rounds)
            h1.create(name)
            _upload(ctx, url, name, mb)
            cold[label] = (_cold_ms(h1, name, records, rounds), local_ms)
        pauses = {}
        for label in COLD_SIZES_MB:
            name = f"cold-{label}"
            ctx.log(f"cluster: migrating the {label} tenant h1 -> h2")
            http_call(h1.port, "POST", f"/t/{name}/add")  # a journal tail on top
            moved = json.loads(h1.cli("migrate", name, "--to", "h2", "--json").stdout)
            pauses[label] = float(moved["pause_ms"])
        recovery_s = _failover(ctx, h1, h2)
    finally:
        local.stop()
        for host in hosts:
            host.stop()
    figures = []
    for label, (cluster_ms, local_ms) in cold.items():
        figures.append(Figure.vs(
            f"cluster_cold_start_{label}_ms", cluster_ms, "ms",
            f"cluster_local_cold_start_{label}_ms", local_ms, f"cluster_cold_start_{label}_ratio",
            note="the same snapshot restored by a standalone router from its disk"))
    for label, pause_ms in pauses.items():
        figures.append(Figure(f"cluster_migrate_pause_ms_{label}", pause_ms, "ms",
                              note="requests held: drain, stop, owner CAS, target's start"))
    figures.append(Figure("cluster_failover_recovery_s", recovery_s, "s",
                          goal=Goal("value", "<=", LEASE_TTL_S + 2, "issue 14"),
                          note=f"kill -9 of the owner to the next acknowledged write, "
                               f"lease_ttl_s = {LEASE_TTL_S:g}"))
    return figures


def _failover(ctx: Context, h1: BenchRouter, h2: BenchRouter) -> float:
    """h2 owns cold-small now; make h1 own a fresh tenant, kill h1, write through h2."""
    name = "failover"
    h1.create(name)
    status, _ = http_call(h1.port, "POST", f"/t/{name}/add")  # h1 claims it
    if status != 201:
        raise BenchError(f"{name} answered {status} on h1")
    ctx.log("cluster: killing h1 under writes through h2")
    assert h1.proc is not None
    killed = time.monotonic()
    os.killpg(h1.proc.pid, signal.SIGKILL)
    deadline = killed + LEASE_TTL_S + 30
    while time.monotonic() < deadline:
        try:
            status, _ = http_call(h2.port, "POST", f"/t/{name}/add", timeout=5)
        except (OSError, BenchError):
            status = 0
        if status == 201:
            return time.monotonic() - killed
        time.sleep(0.02)
    raise BenchError(f"{name} was not served again within {LEASE_TTL_S + 30:g}s")


