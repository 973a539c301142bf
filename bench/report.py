"""Figures, their baselines and goals; the table and the JSON they are printed as.

A `Figure` is one measured value with the baseline it is compared with (measured in the same
run) and the ratio between them. `goal` is a check on the ratio (or on the value when the goal
is absolute), from issue 5 and DESIGN.md "Performance goals".
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Goal:
    on: str  # "ratio" or "value"
    op: str  # "<=" or ">="
    limit: float
    source: str = "issue 5"

    def met(self, figure: Figure) -> bool | None:
        x = figure.ratio if self.on == "ratio" else figure.value
        if x is None or math.isnan(x):
            return None
        return x <= self.limit if self.op == "<=" else x >= self.limit

    def __str__(self) -> str:
        return f"{self.on} {self.op} {self.limit:g}"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    ratio_name: str | None = None
    ratio: float | None = None
    goal: Goal | None = None
    note: str = ""  # what the baseline is, in a few words

    @classmethod
    def vs(cls, name: str, value: float, unit: str, baseline_name: str, baseline: float,
           ratio_name: str, *, goal: Goal | None = None, note: str = "",
           inverse: bool = False) -> Figure:
        """A figure with ratio value/baseline (baseline/value when `inverse`)."""
        num, den = (baseline, value) if inverse else (value, baseline)
        ratio = num / den if den else float("nan")
        return cls(name, value, unit, baseline_name, baseline, ratio_name, ratio, goal, note)

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self)


def flatten(figures: list[Figure]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for f in figures:
        out[f.name] = _clean(f.value)
        if f.baseline_name:
            out[f.baseline_name] = _clean(f.baseline)
        if f.ratio_name:
            out[f.ratio_name] = _clean(f.ratio)
    return out


def _clean(x: float | None) -> float | None:
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return round(x, 4) if abs(x) < 1000 else round(x, 1)


def _fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) >= 0.01 else f"{x:.2g}"


def table(figures: list[Figure], errors: dict[str, str]) -> str:
    rows = [("figure", "value", "baseline", "ratio", "goal", "")]
    for f in figures:
        met = f.met
        mark = "" if met is None else ("ok" if met else "MISSED")
        rows.append((f.name, f"{_fmt(f.value)} {f.unit}",
                     f"{_fmt(f.baseline)} ({f.baseline_name})" if f.baseline_name else "",
                     _fmt(f.ratio) if f.ratio_name else "", str(f.goal) if f.goal else "", mark))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", "baselines:", *notes]
    if errors:
        lines += ["", "cases that failed:", *(f"  {k}: {v}" for k, v in errors.items())]
    return "\n".join(lines)


def document(figures: list[Figure], errors: dict[str, str], machine: dict[str, Any],
             quick: bool, elapsed_s: float) -> dict[str, Any]:
    doc: dict[str, Any] = dict(flatten(figures))
    doc["goals"] = {f.name: {"goal": str(f.goal), "source": f.goal.source, "met": f.met}
                    for f in figures if f.goal is not None}
    doc["errors"] = errors
    doc["machine"] = machine
    doc["quick"] = quick
    doc["elapsed_s"] = round(elapsed_s, 1)
    doc["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return doc


def save(doc: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = stamp + ("-quick" if doc.get("quick") else "")
    if doc.get("label"):
        name += "-" + "".join(c if c.isalnum() else "-" for c in doc["label"])[:40]
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path
