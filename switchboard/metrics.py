"""The router's counters and their Prometheus text exposition (format 0.0.4).

`Counters` is written by the tenant processes and the spawner as things happen; `render()`
reads them with the tenants' states when `/metrics` is scraped. Nothing here decides anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from switchboard.states import TenantState


@dataclass
class Counters:
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


class _Tenant(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def state(self) -> TenantState: ...

    @property
    def requests(self) -> int: ...


def render(counters: Counters, tenants: Iterable[_Tenant], *, zygote_spawns: int,
           fresh_spawns: int) -> str:
    states = {state.value: 0 for state in TenantState}
    requests: list[tuple[str, int]] = []
    for tenant in tenants:
        states[tenant.state.value] += 1
        if tenant.requests:
            requests.append((tenant.name, tenant.requests))
    lines = ["# TYPE switchboard_tenants gauge"]
    lines += [f'switchboard_tenants{{state="{k}"}} {v}' for k, v in states.items()]
    for key, value in dataclasses.asdict(counters).items():
        lines += [f"# TYPE switchboard_{key}_total counter", f"switchboard_{key}_total {value}"]
    lines += ["# TYPE switchboard_tenant_requests_total counter"]
    lines += [f'switchboard_tenant_requests_total{{tenant="{name}"}} {count}'
              for name, count in requests]
    lines += ["# TYPE switchboard_spawns_total counter",
              f'switchboard_spawns_total{{via="zygote"}} {zygote_spawns}',
              f'switchboard_spawns_total{{via="fresh"}} {fresh_spawns}']
    return "\n".join(lines) + "\n"
