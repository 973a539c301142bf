"""The router's numbers, and the Prometheus collector that reads them when `/metrics` is scraped.

Writers only count. The tenant processes, the supervisor and the proxy add to `Counters`:
plain integers, and `Buckets`, a histogram kept as an array of integers (a bisect and two
additions per observation, cheap enough for the request path; no prometheus_client object is
touched there). `RouterCollector` reads them, with the tenants' states and the spawner's
counters, at scrape time and yields prometheus_client metric families; `render()` is the
text exposition (format 0.0.4) the admin API serves.

Per-tenant series (label `tenant`) exist only for resident tenants (starting, running,
checkpointing, stopping), so a host with 10,000 mapped tenants and 5 running exposes 5 label
sets, however many tenants ever had a request.

Families (all prefixed `switchboard_`):

    tenants{state}                 gauge      mapped tenants by lifecycle state
    resident_tenants               gauge      tenants with a worker
    <counter>_total                counter    one per int field of Counters (crashes, ...)
    spawns_total{via}              counter    workers spawned by the zygote or a fresh exec
    start_seconds                  histogram  cold start: first request (or start) to ready
    restore_seconds, restore_bytes histogram  the worker's restore, as its `ready` reports
    checkpoint_seconds, checkpoint_bytes
                                   histogram  checkpoints that landed (`checkpointed` events)
    journal_fsync_seconds          histogram  workers' journal fsyncs, reported with each ping
                                              (those of a ping that timed out are lost)
    requests_total{code}           counter    front-listener answers by class: 1xx..5xx, other
    request_seconds                histogram  request start to the end of its answer
    requests_waiting               gauge      requests waiting for their tenant to start
    start_wait_seconds             histogram  how long those waits lasted
    unavailable_total{reason}      counter    503s the router answered, by UNAVAILABLE_REASONS
    tenant_requests_total{tenant}  counter    resident tenants only
    tenant_in_flight{tenant}       gauge      resident tenants only
    worker_rss_bytes{tenant}       gauge      resident tenants with a health ping behind them
    worker_uss_bytes{tenant}       gauge      the same, private memory only (smaps_rollup)
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from contract.worker import FSYNC_BOUNDS_S
from switchboard.states import LIVE, TenantState

SECONDS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0, 30.0)
BYTES_BOUNDS = tuple(float(1 << shift) for shift in range(10, 34, 2))  # 1 KiB .. 8 GiB
# Why the router answered 503 (switchboard.errors.TenantUnavailable.kind); anything else
# counts as "other", so the label set stays this small.
UNAVAILABLE_REASONS = ("start_timeout", "queue_full", "no_room", "boot_failed", "backoff",
                       "failed", "moved", "shutting_down", "other")
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


class Buckets:
    """A histogram as plain integers: a count per bucket (the last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket (le is inclusive).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, reported: object) -> None:
        """Add a worker's histogram over the same bounds ({"counts": [...], "sum_s": float},
        contract/worker.py); anything else is ignored (a worker of another version)."""
        if not isinstance(reported, dict):
            return
        counts, total = reported.get("counts"), reported.get("sum_s")
        if (not isinstance(counts, list) or len(counts) != len(self.counts)
                or not all(isinstance(c, int) and c >= 0 for c in counts)
                or not isinstance(total, int | float)):
            return
        for i, count in enumerate(counts):
            self.counts[i] += count
        self.sum += total

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at or below it) for each bound and +Inf, as Prometheus wants."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


def _buckets(bounds: Sequence[float]) -> Callable[[], Buckets]:
    return lambda: Buckets(bounds)


@dataclass
class Counters:
    """What the router counts. Every int field is exposed as `switchboard_<field>_total`."""

    starts: int = 0
    boot_failures: int = 0
    crashes: int = 0
    evictions: int = 0
    idle_stops: int = 0
    checkpoints: int = 0
    checkpoint_failures: int = 0
    unresponsive_kills: int = 0
    rss_recycles: int = 0
    oom_kills: int = 0  # workers the kernel's OOM killer took
    writes_unavailable: int = 0  # journal failures that made a worker refuse writes
    start_seconds: Buckets = field(default_factory=_buckets(SECONDS_BOUNDS))
    restore_seconds: Buckets = field(default_factory=_buckets(SECONDS_BOUNDS))
    restore_bytes: Buckets = field(default_factory=_buckets(BYTES_BOUNDS))
    checkpoint_seconds: Buckets = field(default_factory=_buckets(SECONDS_BOUNDS))
    checkpoint_bytes: Buckets = field(default_factory=_buckets(BYTES_BOUNDS))
    start_wait_seconds: Buckets = field(default_factory=_buckets(SECONDS_BOUNDS))
    request_seconds: Buckets = field(default_factory=_buckets(REQUEST_BOUNDS))
    fsync_seconds: Buckets = field(default_factory=_buckets(FSYNC_BOUNDS_S))  # from pings
    # Index status // 100 (1..5); index 0 for a request that ended without an answer.
    responses: list[int] = field(default_factory=lambda: [0] * len(STATUS_CLASSES))
    unavailable: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(UNAVAILABLE_REASONS, 0))

    def count_response(self, status: int, seconds: float) -> None:
        """One request the front listener finished (the proxy's request path: keep it cheap)."""
        klass = status // 100
        self.responses[klass if 0 < klass < 6 else 0] += 1
        self.request_seconds.observe(seconds)

    def count_unavailable(self, kind: str) -> None:
        self.unavailable[kind if kind in self.unavailable else "other"] += 1


_TOTALS = [f.name for f in dataclasses.fields(Counters) if f.type in ("int", int)]


class _Tenant(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def state(self) -> TenantState: ...

    @property
    def requests(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def rss_bytes(self) -> int | None: ...

    @property
    def uss_bytes(self) -> int | None: ...


class _Spawns(Protocol):
    @property
    def zygote_spawns(self) -> int: ...

    @property
    def fresh_spawns(self) -> int: ...


def _histogram(name: str, doc: str, buckets: Buckets, unit: str = "") -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=buckets.cumulative(), sum_value=buckets.sum,
                                 unit=unit)


class RouterCollector(Collector):
    """Reads the router's numbers at scrape time (see the module docstring for the families)."""

    def __init__(self, counters: Counters, tenants: Callable[[], Iterable[_Tenant]],
                 spawner: _Spawns) -> None:
        self.counters = counters
        self.tenants = tenants
        self.spawner = spawner

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        states = {state.value: 0 for state in TenantState}
        waiting = 0
        resident: list[_Tenant] = []
        for tenant in self.tenants():
            states[tenant.state.value] += 1
            waiting += tenant.waiting
            if tenant.state in LIVE:
                resident.append(tenant)

        by_state = GaugeMetricFamily("switchboard_tenants", "Mapped tenants by lifecycle state.",
                                     labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily("switchboard_resident_tenants",
                                "Tenants with a worker process (starting to stopping).",
                                value=len(resident))
        for name in _TOTALS:
            yield CounterMetricFamily(f"switchboard_{name}", f"Count of {name.replace('_', ' ')}.",
                                      value=getattr(c, name))
        spawns = CounterMetricFamily("switchboard_spawns", "Workers spawned, by path.",
                                     labels=["via"])
        spawns.add_metric(["zygote"], self.spawner.zygote_spawns)
        spawns.add_metric(["fresh"], self.spawner.fresh_spawns)
        yield spawns
        yield _histogram("switchboard_start_seconds",
                         "Cold starts: from the start being asked for to the worker ready.",
                         c.start_seconds)
        yield _histogram("switchboard_restore_seconds",
                         "Workers' restores (snapshot load and journal replay).", c.restore_seconds)
        yield _histogram("switchboard_restore_bytes", "Snapshot bytes workers restored from.",
                         c.restore_bytes)
        yield _histogram("switchboard_checkpoint_seconds", "Checkpoints that landed.",
                         c.checkpoint_seconds)
        yield _histogram("switchboard_checkpoint_bytes", "Snapshot bytes checkpoints wrote.",
                         c.checkpoint_bytes)
        yield _histogram("switchboard_journal_fsync_seconds",
                         "Workers' journal group-commit fsyncs, as their health pings report.",
                         c.fsync_seconds)

        responses = CounterMetricFamily("switchboard_requests",
                                        "Requests the front listener answered, by status class.",
                                        labels=["code"])
        for klass, count in zip(STATUS_CLASSES, c.responses, strict=True):
            responses.add_metric([klass], count)
        yield responses
        yield _histogram("switchboard_request_seconds",
                         "Requests from their head read to the end of the answer.",
                         c.request_seconds)
        yield GaugeMetricFamily("switchboard_requests_waiting",
                                "Requests waiting for their tenant's worker to start.",
                                value=waiting)
        yield _histogram("switchboard_start_wait_seconds",
                         "How long requests waited for their tenant's worker to start.",
                         c.start_wait_seconds)
        unavailable = CounterMetricFamily("switchboard_unavailable",
                                          "503 answers of the router, by reason.",
                                          labels=["reason"])
        for reason, count in c.unavailable.items():
            unavailable.add_metric([reason], count)
        yield unavailable

        requests = CounterMetricFamily("switchboard_tenant_requests",
                                       "Requests admitted, per resident tenant.",
                                       labels=["tenant"])
        in_flight = GaugeMetricFamily("switchboard_tenant_in_flight",
                                      "Requests in flight, per resident tenant.",
                                      labels=["tenant"])
        rss = GaugeMetricFamily("switchboard_worker_rss_bytes",
                                "Worker resident memory at its last health ping.",
                                labels=["tenant"])
        uss = GaugeMetricFamily("switchboard_worker_uss_bytes",
                                "Worker private (unique) memory at its last health ping.",
                                labels=["tenant"])
        for tenant in resident:
            requests.add_metric([tenant.name], tenant.requests)
            in_flight.add_metric([tenant.name], tenant.in_flight)
            if tenant.rss_bytes is not None:
                rss.add_metric([tenant.name], tenant.rss_bytes)
            if tenant.uss_bytes is not None:
                uss.add_metric([tenant.name], tenant.uss_bytes)
        yield requests
        yield in_flight
        yield rss
        yield uss


def registry(collector: RouterCollector) -> CollectorRegistry:
    """A registry holding only the router's collector (no process or platform collectors:
    the router's own CPU and memory are the node exporter's business)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def render(reg: CollectorRegistry) -> str:
    return generate_latest(reg).decode("utf-8")
