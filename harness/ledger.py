"""What each counter tenant must hold while the soak (harness/soak.py) runs, and what every
request of it got.

A counter tenant (tests/apps/counter.py) answers a write with 201 {"count"}: the count its
`add` command produced. The journal replays commands in order, so once a 201 says N, the
tenant must count at least N from then on, through kills and restarts (`acked` is the highest
N). Counts are also bounded above: no more writes can have been applied than were sent
(`sent`), so a count above it is a write applied twice. A tenant being removed and re-created
is withdrawn first: no request is sent to it until it is given back, with both reset.

Internal: not part of the `switchboard` command's interface.
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
from collections import Counter
from dataclasses import dataclass

import httpx

MAX_PROBLEMS = 40  # the first ones are kept with their details; the counters count them all


@dataclass
class TenantEntry:
    name: str
    acked: int = 0  # the highest count a 201 returned since the tenant was (re)created
    sent: int = 0  # writes sent since then: no count may exceed it
    in_flight: int = 0
    withdrawn: bool = False  # being removed and re-created: the load leaves it alone


class Ledger:
    """Per-tenant acknowledged writes, and the counters of the run, under one lock."""

    def __init__(self, names: list[str], zipf_s: float) -> None:
        self.lock = threading.Lock()
        self.tenants = [TenantEntry(name) for name in names]
        weights = [1 / (rank + 1) ** zipf_s for rank in range(len(names))]
        self._cumulative = list(itertools.accumulate(weights))
        self.statuses: Counter[str] = Counter()
        self.latencies_s: list[float] = []
        self.writes_acked = 0
        self.reads = 0
        self.hung = 0
        self.stale_reads = 0
        self.excess_writes = 0
        self.problems: list[str] = []

    def draw(self, rng: random.Random) -> TenantEntry:
        """A tenant by the skewed distribution (hot ones first in the list)."""
        index = bisect.bisect_left(self._cumulative, rng.random() * self._cumulative[-1])
        return self.tenants[min(index, len(self.tenants) - 1)]

    def take(self, rng: random.Random, write: bool) -> tuple[TenantEntry, int] | None:
        """A tenant for one request, and what was acknowledged for it before it is sent."""
        with self.lock:
            for _ in range(20):
                tenant = self.draw(rng)
                if not tenant.withdrawn:
                    tenant.in_flight += 1
                    tenant.sent += write
                    return tenant, tenant.acked
        return None

    def problem(self, message: str) -> None:
        """Called with the lock held, or from one thread at a time."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)

    def answered(self, tenant: TenantEntry, write: bool, acked_before: int,
                 response: httpx.Response | None, outcome: str, elapsed_s: float,
                 timeout_s: float) -> None:
        """Record one request's outcome and give the tenant back."""
        with self.lock:
            tenant.in_flight -= 1
            self.statuses[outcome] += 1
            if outcome == "timeout" or elapsed_s > timeout_s:
                self.hung += 1
                self.problem(f"{'POST /add' if write else 'GET /count'} to {tenant.name}: "
                             f"{outcome} after {elapsed_s:.1f}s")
            if response is None:
                return
            self.latencies_s.append(elapsed_s)
            if response.status_code not in (200, 201):
                return
            try:
                count = int(response.json()["count"])
            except (ValueError, KeyError, TypeError):
                self.problem(f"{tenant.name}: unreadable answer {response.text[:200]!r}")
                return
            if write:
                self.writes_acked += 1
                tenant.acked = max(tenant.acked, count)
            else:
                self.reads += 1
                if count < acked_before:
                    self.stale_reads += 1
                    self.problem(f"{tenant.name}: read {count} after {acked_before} "
                                 "were acknowledged")
            if count > tenant.sent:
                self.excess_writes += 1
                self.problem(f"{tenant.name}: count {count} but only {tenant.sent} writes sent")

    def withdraw(self, rng: random.Random) -> TenantEntry | None:
        """A tenant for the cycler, taken out of the load (None if the draws keep hitting
        withdrawn ones: only tenants whose re-create failed stay withdrawn)."""
        with self.lock:
            for _ in range(1000):
                tenant = self.draw(rng)
                if not tenant.withdrawn:
                    tenant.withdrawn = True
                    return tenant
        return None

    def drained(self, tenant: TenantEntry) -> bool:
        with self.lock:
            return tenant.in_flight == 0

    def give_back(self, tenant: TenantEntry, *, recreated: bool) -> None:
        with self.lock:
            if recreated:
                tenant.acked = tenant.sent = 0
            tenant.withdrawn = False

    def in_flight(self) -> int:
        with self.lock:
            return sum(t.in_flight for t in self.tenants)


def status_label(response: httpx.Response) -> str:
    if response.status_code == 503 and "retry-after" not in response.headers:
        return "503-no-retry-after"
    return str(response.status_code)
