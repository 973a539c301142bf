"""The issue 9 soak: many tenants mapped, few resident, mixed traffic, workers killed and
tenants removed and re-created while it runs; afterwards nothing acknowledged may be missing.

`run_soak(router, SoakSettings(...))` drives a started router that serves `SOAK_APP`
(tests/apps/counter.py: POST /add {"amount": 1} -> 201 {"count"}, GET /count -> {"count"})
with `SOAK_ROUTER_ENV` in its environment. The tests run it for 20 s (tests/test_soak.py),
the benchmarks for 60 s (bench/cases/soak.py). The caller owns the router and kills its
process group afterwards, whatever happened.

What runs at once, every part bounded by the duration, a request cap and a per-request
timeout:
- `clients` load threads, each with its own keep-alive connection to the router. Each request
  is a write (POST /add, amount 1) or a read (GET /count) of a tenant drawn from a Zipf
  distribution: a few tenants are hot, most are cold, so workers keep being swapped in and out
  past `max_resident`;
- every `kill_every_s`, SIGKILL to a random worker of this router, found by process group and
  title and signalled through a pidfd, so a pid recycled in between cannot be hit;
- every `cycle_every_s`, `rm` then `create` of a tenant that no request is using (it is taken
  out of the load first, and given back afterwards with its ledger reset); the new tenant must
  count 0;
- every second, the router's VmRSS and its number of workers.

What is checked:
- Acknowledged writes. Each 201 carries the count its command produced; the journal replays in
  order, so the highest count acknowledged is a lower bound the tenant must keep. A read must
  see at least what was acknowledged before it was sent (`stale_reads`), and no count may
  exceed the writes sent (`excess_writes`: a write applied twice). At the end every tenant is
  read, and `lost_writes` sums acknowledged minus count wherever the count fell short.
- Hung requests: a client timeout, or an answer slower than `request_timeout_s`. The router
  bounds its own waits below that (a start waits at most `start_timeout_s`, 15 s, then 503).
- Stray workers: once the load has stopped, a tenant-titled process in the router's group
  whose tenant is not listed, or whose pid is not the listed one. A checkpoint child (its
  parent is its tenant's worker, and it carries the same title) is not a worker.
- RSS flat: end <= warm x 1.2 + 5 MiB, warm being the sample at `warm_fraction` of the run.

The ledger of acknowledged writes is harness/ledger.py; finding, killing and checking the
router's workers is harness/workers.py.

Internal: not part of the `switchboard` command's interface.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from harness.errors import AdminCallFailed
from harness.ledger import Ledger, status_label
from harness.procs import cmdline
from harness.router import RouterProcess
from harness.workers import kill_worker, rss_mb, stray_workers, tenant_workers

SOAK_APP = "tests.apps.counter:app"
SOAK_MAX_RESIDENT = 30
SOAK_ROUTER_ENV = {"SWITCHBOARD_CRASH_LOOP_CRASHES": "1000"}  # workers are killed on purpose
RSS_SLACK_MB = 5.0
RSS_GROWTH_LIMIT = 1.2
SETTLE_S = 20.0  # after the load: for stray workers to go, for a tenant to answer its count

Log = Callable[[str], None]


@dataclass(frozen=True)
class SoakSettings:
    duration_s: float = 60.0
    tenants: int = 500
    clients: int = 8  # load threads, one request in flight each
    write_fraction: float = 0.5
    zipf_s: float = 1.1  # with 500 tenants: the 30 hottest get ~2/3 of the requests
    kill_every_s: float = 2.0
    cycle_every_s: float = 5.0
    request_timeout_s: float = 20.0
    max_requests: int = 500_000
    warm_fraction: float = 0.25
    seed: int | None = None  # None: a random one, reported in the result
    name_prefix: str = "soak-"


@dataclass(frozen=True)
class Sample:
    """One look at the router, taken every second of the load."""

    t_s: float  # since the load started
    rss_mb: float  # the router's VmRSS
    workers: int  # tenant workers in its process group
    answered: int  # requests answered so far


@dataclass
class SoakResult:
    seed: int
    duration_s: float
    tenants: int
    requests: int  # answered with an HTTP status
    writes_acked: int
    reads: int  # answered 200
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    kills: int
    rm_create_cycles: int
    lost_writes: int
    hung_requests: int
    stray_workers: int
    status_counts: dict[str, int]
    rss_warm_mb: float
    rss_end_mb: float
    stale_reads: int = 0
    excess_writes: int = 0
    dirty_recreates: int = 0  # a re-created tenant that did not count 0
    unreadable_tenants: int = 0  # no count within SETTLE_S at the end
    failed_cycles: int = 0  # rm or create refused, or the tenant never drained
    max_workers_seen: int = 0
    create_s: float = 0.0  # creating the tenants through the admin API
    timeline: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def rss_growth_ratio(self) -> float:
        return self.rss_end_mb / self.rss_warm_mb if self.rss_warm_mb else float("nan")

    @property
    def rss_flat(self) -> bool:
        return self.rss_end_mb <= self.rss_warm_mb * RSS_GROWTH_LIMIT + RSS_SLACK_MB

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.status_counts.items()))
        lines = [
            f"soak {self.duration_s:.0f}s, {self.tenants} tenants, seed {self.seed}: "
            f"{self.requests} requests ({self.throughput_rps:.0f}/s), "
            f"{self.writes_acked} writes acknowledged, {self.reads} reads; "
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms",
            f"faults: {self.kills} workers killed, {self.rm_create_cycles} rm/create cycles "
            f"({self.failed_cycles} failed); statuses {{{statuses}}}",
            f"lost writes {self.lost_writes}, hung requests {self.hung_requests}, "
            f"stray workers {self.stray_workers}, stale reads {self.stale_reads}, "
            f"excess writes {self.excess_writes}, dirty re-creates {self.dirty_recreates}, "
            f"unreadable tenants {self.unreadable_tenants}",
            f"router RSS warm {self.rss_warm_mb:.1f} MiB -> end {self.rss_end_mb:.1f} MiB "
            f"(x{self.rss_growth_ratio:.3f}, {'flat' if self.rss_flat else 'GROWING'}); "
            f"at most {self.max_workers_seen} workers seen; {self.tenants} creates took "
            f"{self.create_s:.1f}s",
        ]
        lines.append(f"every 5 s: {self.timeline_text(5)}")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def timeline_text(self, step_s: float) -> str:
        """`t: RSS MiB, workers, requests/s since the previous point`, every `step_s`."""
        points, last, next_t = [], None, 0.0
        for sample in self.timeline:
            if sample.t_s + 0.5 < next_t and sample is not self.timeline[-1]:
                continue
            rate = "" if last is None else (
                f", {(sample.answered - last.answered) / max(sample.t_s - last.t_s, 1e-9):.0f}/s")
            points.append(f"{sample.t_s:.0f}s {sample.rss_mb:.1f} MiB {sample.workers}w{rate}")
            last, next_t = sample, sample.t_s + step_s
        return "; ".join(points)


class _Budget:
    """The request cap, shared by the load threads."""

    def __init__(self, limit: int) -> None:
        self._left = limit
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left >= 0


# --- the parts that run at once --------------------------------------------------------------


@dataclass
class _Run:
    router: RouterProcess
    settings: SoakSettings
    ledger: Ledger
    end: float  # monotonic
    stop: threading.Event = field(default_factory=threading.Event)
    kills: int = 0
    cycles: int = 0
    failed_cycles: int = 0
    dirty_recreates: int = 0
    retired: set[str] = field(default_factory=set)  # removed and not created again

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.end


def _client(run: _Run, seed: int, budget: _Budget) -> None:
    """One load thread: one request at a time until the end, the cap or a stop."""
    rng = random.Random(seed)
    settings = run.settings
    with httpx.Client(base_url=run.router.url, timeout=settings.request_timeout_s,
                      trust_env=False) as client:
        while run.running() and budget.take():
            write = rng.random() < settings.write_fraction
            taken = run.ledger.take(rng, write)
            if taken is None:
                time.sleep(0.01)
                continue
            tenant, acked_before = taken
            response: httpx.Response | None = None
            started = time.monotonic()
            try:
                if write:
                    response = client.post(f"/t/{tenant.name}/add", json={"amount": 1})
                else:
                    response = client.get(f"/t/{tenant.name}/count")
                outcome = status_label(response)
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.HTTPError as exc:  # no answer: the connection broke, or worse
                outcome = f"client-error {type(exc).__name__}"
            run.ledger.answered(tenant, write, acked_before, response, outcome,
                                time.monotonic() - started, settings.request_timeout_s)


def read_count(client: httpx.Client, name: str, timeout_s: float) -> tuple[int | None, str]:
    """A counter tenant's count, retrying while it restarts (502, 503, no connection);
    (None, the last problem) past the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = client.get(f"/t/{name}/count")
            if response.status_code == 200:
                return int(response.json()["count"]), ""
            problem = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            problem = repr(exc)
        if time.monotonic() > deadline:
            return None, problem
        time.sleep(0.05)


def _cycle_one(run: _Run, rng: random.Random, client: httpx.Client) -> None:
    """Withdraw a tenant from the load, wait until nothing is in flight for it, rm, create,
    check that it counts 0, and give it back with a fresh ledger."""
    ledger, router = run.ledger, run.router
    tenant = ledger.withdraw(rng)
    if tenant is None:
        return
    deadline = time.monotonic() + run.settings.request_timeout_s + 5
    while not ledger.drained(tenant):
        if time.monotonic() > deadline:
            run.failed_cycles += 1
            with ledger.lock:
                ledger.problem(f"cycle of {tenant.name}: requests still in flight")
            ledger.give_back(tenant, recreated=False)
            return
        time.sleep(0.005)
    try:
        router.admin_call("DELETE", f"/v1/tenants/{tenant.name}")
    except (AdminCallFailed, httpx.HTTPError) as exc:
        run.failed_cycles += 1
        with ledger.lock:
            ledger.problem(f"rm {tenant.name}: {exc}")
        ledger.give_back(tenant, recreated=False)
        return
    try:
        router.admin_call("POST", "/v1/tenants", {"name": tenant.name})
    except (AdminCallFailed, httpx.HTTPError) as exc:
        run.failed_cycles += 1
        run.retired.add(tenant.name)  # stays withdrawn: it no longer exists
        with ledger.lock:
            ledger.problem(f"create {tenant.name} after rm: {exc}")
        return
    count, problem = read_count(client, tenant.name, run.settings.request_timeout_s)
    if count != 0:
        run.dirty_recreates += 1
        with ledger.lock:
            ledger.problem(f"{tenant.name} re-created counts {count} (expected 0) {problem}")
    run.cycles += 1
    ledger.give_back(tenant, recreated=True)


def _cycler(run: _Run, seed: int) -> None:
    rng = random.Random(seed)
    every = run.settings.cycle_every_s
    next_at = time.monotonic() + every
    with httpx.Client(base_url=run.router.url, timeout=run.settings.request_timeout_s,
                      trust_env=False) as client:
        while not run.stop.wait(max(0.0, next_at - time.monotonic())):
            if time.monotonic() >= run.end:
                return
            _cycle_one(run, rng, client)
            next_at = max(next_at + every, time.monotonic())


def _kill_random_worker(run: _Run, rng: random.Random) -> None:
    workers = sorted(tenant_workers(run.router.pid))
    if workers and kill_worker(run.router.pid, rng.choice(workers)):
        run.kills += 1


# --- the run ---------------------------------------------------------------------------------


def _percentile_ms(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index] * 1000


def _create_tenants(router: RouterProcess, names: list[str]) -> None:
    for name in names:
        router.admin_call("POST", "/v1/tenants", {"name": name})


def _final_counts(run: _Run, names: list[str]) -> dict[str, tuple[int | None, str]]:
    clients = run.settings.clients
    with httpx.Client(base_url=run.router.url, timeout=run.settings.request_timeout_s,
                      limits=httpx.Limits(max_connections=clients),
                      trust_env=False) as client, ThreadPoolExecutor(clients) as pool:
        results = pool.map(lambda name: read_count(client, name, SETTLE_S), names)
        return dict(zip(names, results, strict=True))


def _settled_strays(router: RouterProcess) -> dict[int, str]:
    deadline = time.monotonic() + SETTLE_S
    while True:
        strays = stray_workers(router)
        if not strays or time.monotonic() > deadline:
            return strays
        time.sleep(0.2)


def run_soak(router: RouterProcess, settings: SoakSettings,
             log: Log | None = None) -> SoakResult:
    """Run the soak against a started router (see the module docstring) and return what it
    measured and found. Raises HarnessError if the tenants cannot be created."""
    say: Log = log or (lambda message: None)
    seed = settings.seed if settings.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    names = [f"{settings.name_prefix}{i:03d}" for i in range(settings.tenants)]
    created = time.monotonic()
    _create_tenants(router, names)
    create_s = time.monotonic() - created
    say(f"soak: {len(names)} tenants created in {create_s:.1f}s; "
        f"{settings.duration_s:g}s of load, seed {seed}")

    ledger = Ledger(names, settings.zipf_s)
    started = time.monotonic()
    run = _Run(router, settings, ledger, end=started + settings.duration_s)
    budget = _Budget(settings.max_requests)
    threads = [threading.Thread(target=_client, args=(run, rng.randrange(2**32), budget),
                                name=f"soak-client-{i}", daemon=True)
               for i in range(settings.clients)]
    threads.append(threading.Thread(target=_cycler, args=(run, rng.randrange(2**32)),
                                    name="soak-cycler", daemon=True))
    for thread in threads:
        thread.start()
    samples: list[Sample] = []

    def sample(now: float) -> None:
        samples.append(Sample(now - started, rss_mb(router.pid), len(tenant_workers(router.pid)),
                              len(ledger.latencies_s)))

    next_sample, next_kill = started, started + settings.kill_every_s
    try:
        while run.running() and any(t.is_alive() for t in threads[:-1]):
            now = time.monotonic()
            if now >= next_sample:
                sample(now)
                next_sample += 1.0
            if now >= next_kill:
                _kill_random_worker(run, rng)
                next_kill += settings.kill_every_s
            run.stop.wait(max(0.0, min(next_sample, next_kill, run.end) - time.monotonic()))
    finally:
        load_s = time.monotonic() - started
        sample(started + load_s)
        run.stop.set()
        join_deadline = time.monotonic() + settings.request_timeout_s + 10
        for thread in threads:
            thread.join(max(0.0, join_deadline - time.monotonic()))
    stuck = ledger.in_flight()  # still unanswered well past their timeout: hung
    if stuck:
        with ledger.lock:
            ledger.hung += stuck
            ledger.problem(f"{stuck} requests still unanswered "
                           f"{settings.request_timeout_s + 10:g}s after the load stopped")

    say(f"soak: load done ({load_s:.1f}s); reading every tenant's count")
    checked = [t for t in ledger.tenants if t.name not in run.retired]
    counts = _final_counts(run, [t.name for t in checked])
    lost = unreadable = 0
    for tenant in checked:
        count, problem = counts[tenant.name]
        if count is None:
            unreadable += 1
            ledger.problem(f"{tenant.name}: no count within {SETTLE_S:g}s: {problem}")
        elif count < tenant.acked:
            lost += tenant.acked - count
            ledger.problem(f"{tenant.name}: counts {count}, {tenant.acked} were acknowledged")
    strays = _settled_strays(router)
    for pid, name in sorted(strays.items()):
        ledger.problem(f"stray worker pid {pid} for {name}: {cmdline(pid)!r}")

    latencies = sorted(ledger.latencies_s)
    warm_at = settings.warm_fraction * settings.duration_s
    warm = next((s for s in samples if s.t_s >= warm_at), samples[-1])
    return SoakResult(
        seed=seed, duration_s=load_s, tenants=len(names), requests=len(latencies),
        writes_acked=ledger.writes_acked, reads=ledger.reads,
        throughput_rps=len(latencies) / load_s if load_s else 0.0,
        p50_ms=_percentile_ms(latencies, 50), p99_ms=_percentile_ms(latencies, 99),
        kills=run.kills, rm_create_cycles=run.cycles, lost_writes=lost,
        hung_requests=ledger.hung, stray_workers=len(strays),
        status_counts=dict(ledger.statuses), rss_warm_mb=warm.rss_mb,
        rss_end_mb=samples[-1].rss_mb,
        stale_reads=ledger.stale_reads, excess_writes=ledger.excess_writes,
        dirty_recreates=run.dirty_recreates, unreadable_tenants=unreadable,
        failed_cycles=run.failed_cycles, max_workers_seen=max(s.workers for s in samples),
        create_s=create_s,
        timeline=samples, problems=ledger.problems,
    )

