"""How the CLI shows things to people: tables, `key: value` lines, relative times.

Scripts use `--json` instead; nothing here is meant to be parsed.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchboard.config import Config

TENANT_COLUMNS = ("NAME", "STATE", "PID", "ADDRESS", "RESTARTS", "LAST REQUEST", "IN-FLIGHT",
                  "VERSION")


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
            _or_dash(t.get("code_version")),
        )
        for t in tenants
    ]
    if any(t.get("host") for t in tenants):  # cluster mode: which host owns each tenant
        return table((*TENANT_COLUMNS, "HOST"),
                     [(*row, _or_dash(t.get("host"))) for row, t in zip(rows, tenants,
                                                                       strict=True)])
    return table(TENANT_COLUMNS, rows)


SORT_KEYS = ("name", "state", "last_request", "rss", "restarts")
_SORT_FIELDS = {"last_request": "last_request_at", "rss": "rss_bytes", "restarts": "restarts"}


def select_tenants(tenants: Sequence[dict[str, Any]], states: Collection[str] | None,
                   sort: str) -> list[dict[str, Any]]:
    """`ls --state ... --sort ...`: the tenants in `states` (all when None), in `sort` order:
    name and state A-Z, the others highest first with the unknown (never, not running) last;
    ties by name."""
    chosen = [t for t in tenants if states is None or t.get("state") in states]
    chosen.sort(key=lambda t: str(t.get("name", "")))
    if sort == "state":
        chosen.sort(key=lambda t: str(t.get("state", "")))
    elif sort in _SORT_FIELDS:
        field = _SORT_FIELDS[sort]
        chosen.sort(key=lambda t: (t.get(field) is None, -float(t.get(field) or 0)))
    return chosen


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


def tenant_status(info: Mapping[str, Any], now: float | None = None) -> str:
    """`switchboard status NAME` for people: what runs, how it has been, what is unsaved."""
    now = time.time() if now is None else now
    running = info.get("pid") is not None
    lines: dict[str, Any] = {
        "name": info.get("name"),
        "state": info.get("state"),
        "pid": info.get("pid"),
        "address": _address(info),
        "uptime": _uptime(info.get("started_at"), now) if running else None,
        "restarts": _with_note(info.get("restarts"), "last exit", info.get("last_exit")),
        "last request": relative_time(info.get("last_request_at"), now),
        "requests": f"{info.get('in_flight') or 0} in flight, {info.get('waiting') or 0} "
                    f"waiting, {info.get('requests') or 0} since the router started",
        "memory": (f"{format_bytes(info['rss_bytes'])} RSS"
                   + (f", {format_bytes(info['uss_bytes'])} USS" if info.get("uss_bytes") else "")
                   if info.get("rss_bytes") else None),
        "snapshot": _snapshot(info, now),
        "journal": _journal(info),
        "unsaved changes": _unsaved(info),
        "last error": _with_note(info.get("last_error"), "",
                                 relative_time(info.get("last_error_at"), now)
                                 if info.get("last_error_at") else None),
    }
    for key, note in (("retry_at", "next try"), ("moved_to", "moved to"),
                      ("writes_unavailable", "writes refused"), ("host", "host")):
        if info.get(key):
            lines[note] = relative_time(info[key], now) if key == "retry_at" else info[key]
    if info.get("busy"):
        lines["busy with"] = info["busy"]
    if info.get("code_version"):
        lines["code version"] = info["code_version"]
    if info.get("attached"):
        lines["console attached"] = ", ".join(info["attached"])
    return key_values(lines)


def format_bytes(size: int | float) -> str:
    """`512 B`, `48.2 MiB`, `1.5 GiB`."""
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"  # pragma: no cover - the loop returns


def _uptime(started_at: Any, now: float) -> str | None:
    if not isinstance(started_at, int | float):
        return None
    seconds = max(0, int(now - started_at))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours or days)
    parts += [f"{minutes}m"] * bool(minutes or hours or days) + [f"{secs}s"]
    return " ".join(parts)


def _with_note(value: Any, label: str, note: Any) -> Any:
    if value is None or not note:
        return value
    return f"{value} ({label + ': ' if label else ''}{note})"


def _snapshot(info: Mapping[str, Any], now: float) -> str:
    generation = info.get("generation")
    if generation is None:
        return "none yet"
    written = info.get("last_checkpoint_at")
    age = f", written {relative_time(written, now)}" if written else ""
    return f"generation {generation}{age}"


def _journal(info: Mapping[str, Any]) -> str | None:
    since, position = info.get("journal_since_snapshot"), info.get("journal_pos")
    if since is None and position is None:
        return None
    return f"{_or_dash(since)} records since the snapshot (position {_or_dash(position)})"


def _unsaved(info: Mapping[str, Any]) -> str | None:
    if info.get("unsaved"):
        return "yes: the last checkpoint failed and changes are only in the journal"
    if info.get("dirty"):
        return "in the journal, not yet in a snapshot"
    return "no" if info.get("dirty") is not None else None


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


CONFIG_COLUMNS = ("SETTING", "VALUE", "SOURCE")
# Shown as "(set)" or "(empty)", never printed: they let their holder into the admin surface.
_SECRET_SETTINGS = frozenset({"metrics_token"})


def config_rows(config: Config, sources: Mapping[str, str]) -> list[dict[str, Any]]:
    """`config show`: each setting, its effective value (JSON-ready) and its source."""
    import dataclasses
    from pathlib import Path

    rows = []
    for item in dataclasses.fields(config):
        if item.name not in sources:
            continue  # not a setting (`extra`)
        value = getattr(config, item.name)
        if item.name in _SECRET_SETTINGS:
            value = "(set)" if value else "(empty)"
        elif isinstance(value, Path) or type(value).__name__ == "HostPort":
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        rows.append({"name": item.name, "value": value, "source": sources[item.name]})
    return rows


def config_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return table(CONFIG_COLUMNS, [
        (str(r["name"]), _or_dash(r["value"]) if r["value"] != "" else '""', str(r["source"]))
        for r in rows])
