"""Describe and verify snapshot files, for `switchboard snapshot inspect|verify`.

Runs in the operator CLI, on any file an operator points it at. It never unpickles: a
pickle payload is verified by its checksum only, since unpickling runs code from the file.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
from typing import Any

from snapshots.codec import CODEC_NAMES, get_codec
from snapshots.errors import CodecError, SnapshotCorrupt
from snapshots.format import read_header, read_snapshot

# A dict root may have a key per record; past this many keys the summary stops listing them.
MAX_SUMMARY_KEYS = 100
_CONTAINERS = (dict, list, tuple, set, frozenset)


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every header field, the sizes, whether the file verifies, and a summary of the state.

    Raises SnapshotCorrupt or SnapshotVersionError when the header itself is bad (there is
    nothing to describe then). A bad payload is reported in "valid" and "problem" instead,
    with the header still shown. The result is JSON-serialisable.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header = read_header(f, source=source)
    info: dict[str, Any] = {
        "path": source,
        "file_size": file_size,
        "format_version": header.format_version,
        "header_bytes": header.header_bytes,
        "tenant": header.tenant,
        "generation": header.generation,
        "codec": header.codec,
        "app_version": header.app_version,
        "schema_version": header.schema_version,
        "journal_pos": header.journal_pos,
        "payload_length": header.payload_length,
        "payload_size": file_size - header.header_bytes,
        "checksum": header.checksum,
        "created_at": header.created_at,
        "created_at_utc": _utc(header.created_at),
        "index": _jsonable(header.index),
        "extra": _jsonable(dict(header.extra)),
        "valid": True,
        "problem": None,
        "summary": None,
    }
    try:
        _, payload = read_snapshot(path)
    except SnapshotCorrupt as exc:
        info.update(valid=False, problem=exc.problem)
        return info
    if header.codec == "pickle":
        info["summary"] = "pickle payload not decoded"
    elif header.codec not in CODEC_NAMES:
        info.update(valid=False, problem=f"unknown codec {header.codec!r}")
    else:
        try:
            state = get_codec(header.codec, allow_pickle=False).loads(payload)
        except CodecError as exc:
            info.update(valid=False, problem=str(exc))
        else:
            info["summary"] = summarize(state)
    return info


def verify(path: str | os.PathLike[str]) -> None:
    """Raise a SnapshotError subclass if anything about the file is wrong.

    Checks the header, its CRC, the payload length, trailing bytes and the checksum; for
    msgpack also that the payload decodes. Pickle payloads are not decoded.
    """
    source = os.fspath(path)
    header, payload = read_snapshot(path)
    if header.codec not in CODEC_NAMES:
        raise CodecError(f"{source}: unknown codec {header.codec!r}")
    if header.codec == "pickle":
        return
    try:
        get_codec(header.codec, allow_pickle=False).loads(payload)
    except CodecError as exc:
        raise CodecError(f"{source}: {exc}") from exc


def summarize(state: Any) -> dict[str, Any]:
    """Top-level shape of a decoded state: container sizes, not contents."""
    summary: dict[str, Any] = {"root_type": type(state).__name__}
    if isinstance(state, dict):
        shown = list(state.items())[:MAX_SUMMARY_KEYS]
        summary["length"] = len(state)
        summary["counts"] = {_key(k): len(v) for k, v in shown if isinstance(v, _CONTAINERS)}
        summary["types"] = {_key(k): type(v).__name__ for k, v in shown}
        if len(state) > len(shown):
            summary["keys_not_shown"] = len(state) - len(shown)
    elif isinstance(state, _CONTAINERS):
        summary["length"] = len(state)
        kinds = collections.Counter(type(x).__name__ for x in state)
        summary["element_types"] = dict(sorted(kinds.items()))
    return summary


def _key(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def _utc(timestamp: float) -> str | None:
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)
