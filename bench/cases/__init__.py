"""The benchmark cases. Each is `fn(ctx) -> list[Figure]`, measured with its own baselines.

Order matters only for cost: the cases that share the main router (cold start, proxy,
memory) run one after another on it; the big-state and 10k-tenant cases get their own.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import BenchRouter, Processes
from bench.report import Figure


@dataclass
class Sizes:
    """How much work each case does; --quick shrinks it to stay under a minute."""

    cold_starts: int = 15
    uvicorn_spawns: int = 7
    load_s: float = 5.0
    load_rounds: int = 3
    latency_load_s: float = 2.0
    resident: int = 50
    mapped: int = 10_000
    journal_s: float = 3.0
    restore_mb: float = 100.0
    restore_repeats: int = 5
    big_cold_starts: int = 3
    checkpoint_mb: float = 200.0
    checkpoint_sample_s: float = 3.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(cold_starts=7, uvicorn_spawns=3, load_s=2.0, load_rounds=1, latency_load_s=1.0,
                   mapped=3000, journal_s=0.8, restore_repeats=2, big_cold_starts=2,
                   checkpoint_mb=100.0, checkpoint_sample_s=2.0)


@dataclass
class Context:
    procs: Processes
    work: Path  # a temp dir on the same disk as a data dir would be
    sizes: Sizes
    quick: bool
    shared: dict[str, Any] = field(default_factory=dict)
    _main: BenchRouter | None = None

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def main_router(self) -> BenchRouter:
        """The router shared by the cold start, proxy and memory cases."""
        if self._main is None:
            self.log("starting the main router")
            self._main = BenchRouter(self.procs, self.work / "main").start()
        return self._main


Case = Callable[[Context], list[Figure]]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
