"""How the CLI shows things to people: tables, `key: value` lines, relative times.

Scripts use `--json` instead; nothing here is meant to be parsed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

TENANT_COLUMNS = ("NAME", "STATE", "PID", "ADDRESS", "RESTARTS", "LAST REQUEST", "IN-FLIGHT")


def relative_time(moment: float | None, now: float | None = None) -> str:
    """`12s ago`, `5m ago`, `3h ago`, `2d ago`; `-` for never; `in 4s` for a future moment."""
    if moment is None:
        return "-"
    now = time.time() if now is None else now
    delta = now - moment
    seconds = abs(delta)
    if seconds < 1:
        return "just now"
    if seconds < 120:
        amount = f"{seconds:.0f}s"
    elif seconds < 2 * 3600:
        amount = f"{seconds // 60:.0f}m"
    elif seconds < 2 * 86400:
        amount = f"{seconds // 3600:.0f}h"
    else:
        amount = f"{seconds // 86400:.0f}d"
    return f"{amount} ago" if delta > 0 else f"in {amount}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing spaces."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    return "\n".join(lines)


def tenant_table(tenants: Sequence[Mapping[str, Any]], now: float | None = None) -> str:
    rows = [
        (
            str(t.get("name", "?")),
            str(t.get("state", "?")),
            _or_dash(t.get("pid")),
            _address(t),
            _or_dash(t.get("restarts")),
            relative_time(t.get("last_request_at"), now),
            _or_dash(t.get("in_flight")),
        )
        for t in tenants
    ]
    return table(TENANT_COLUMNS, rows)


def _address(tenant: Mapping[str, Any]) -> str:
    """Where its worker listens: `run/12.sock` for a Unix socket, `:20013` for a port."""
    if tenant.get("socket"):
        return "run/" + str(tenant["socket"]).rsplit("/", 1)[-1]
    return f":{tenant['port']}" if tenant.get("port") else "-"


# Fields shown by `status` even when empty; the rest only when set.
_ALWAYS_SHOWN = ("name", "state", "pid", "port", "restarts", "last_request_at", "in_flight")
_TIME_FIELDS = {"last_request_at", "created_at", "started_at", "last_checkpoint_at", "retry_at"}


def tenant_details(info: Mapping[str, Any], now: float | None = None) -> str:
    shown = {k: v for k, v in info.items() if k in _ALWAYS_SHOWN or v is not None}
    return key_values(
        {k: _time(v, now) if k in _TIME_FIELDS else v for k, v in shown.items()}
    )


def key_values(values: Mapping[str, Any]) -> str:
    """`key: value` lines, values aligned; nested mappings flattened as `outer.inner`."""
    flat = _flatten(values)
    width = max((len(k) for k in flat), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in flat.items())


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + str(key)] = _or_dash(value)
    return flat


def _time(moment: Any, now: float | None) -> Any:
    if not isinstance(moment, int | float):
        return moment
    stamp = datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")
    return f"{stamp} ({relative_time(moment, now)})"


def _or_dash(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, Mapping) and not value:
        return "-"
    # One line per key: a multi-line value (a traceback in last_error) is folded.
    return " ".join(str(value).splitlines())
