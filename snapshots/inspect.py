"""Describe and verify snapshot files, for `switchboard snapshot inspect|verify`.

Runs in the operator CLI, on any file an operator points it at. It never unpickles: a
pickle payload is verified by its checksum only, since unpickling runs code from the file.

`check(path, key)` is what `snapshot verify` reports: one Verdict per file, whose status is

    signed       "OK (signed)": intact, and its MAC verifies under this deployment's key
    unsigned     "OK (unsigned)": intact, unsigned (format 1, or 2 without mac), msgpack:
                 a restore loads it (msgpack runs no code) and the next checkpoint signs it
    not_signed   "not signed by this deployment: ...": signed under another key (or there
                 is no key to check it with), or an unsigned pickle file, which a restore
                 refuses unless --allow-unsigned (it would run code from the file)
    corrupt      "corrupt: ...": fails its CRC, checksum, length or field checks, or a
                 payload that should be msgpack does not decode
    unreadable   "unreadable: ...": cannot be read at all, or a newer format version

in that order of precedence: a file that is both damaged and foreign is reported by the first
check it fails (header, then MAC, then payload), so the payload of a file whose MAC fails is
never decoded. Only signed and unsigned are OK. `check_generations` judges a tenant's files
together, as a restore does: an unsigned file after one signed by this key is not_signed
(planted: a writer with the key never goes back to unsigned). `verify(path)` is the integrity
check alone.

A segmented file (snapshots/segments.py) is intact when its header and payload are and every
segment it names is there and matches its checksum (and, msgpack, decodes); `describe` lists
its segments (name, bytes, where they are) instead of decoding a whole state.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshots.codec import CODEC_NAMES, get_codec
from snapshots.errors import (
    CodecError,
    SnapshotCorrupt,
    SnapshotNotSigned,
    SnapshotVersionError,
)
from snapshots.format import SnapshotHeader, authenticate, read_header, read_snapshot
from snapshots.segment_files import open_index
from snapshots.segments import SegmentedIndex, is_segmented, read_segment
from snapshots.store import DATA_CODECS

# A dict root may have a key per record; past this many keys the summary stops listing them.
MAX_SUMMARY_KEYS = 100
_CONTAINERS = (dict, list, tuple, set, frozenset)


OK_STATUSES = ("signed", "unsigned")


@dataclass(frozen=True)
class Verdict:
    """What `snapshot verify` says about one file (see the module docstring)."""

    path: str
    status: str  # signed | unsigned | not_signed | corrupt | unreadable
    problem: str | None = None
    signed: bool | None = None  # whether the header carries a MAC; None when unreadable

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def summary(self) -> str:
        """"OK (signed)", "OK (unsigned)", "not signed by this deployment: ...", "corrupt:
        ...", "unreadable: ..."."""
        if self.ok:
            return f"OK ({self.status})"
        if self.status == "not_signed":
            return str(self.problem)  # starts with "not signed by this deployment"
        return f"{self.status}: {self.problem}"


def check(path: str | os.PathLike[str], key: bytes | None) -> Verdict:
    """The file's verdict under `key` (the deployment's snapshot key; None: none was found,
    so a signed file cannot be checked and is not OK). Never decodes pickle, and decodes a
    msgpack payload only once the header's MAC (when signed) and the payload's checksum
    have verified."""
    source = os.fspath(path)
    signed: bool | None = None
    try:
        with open(path, "rb") as f:
            header = read_header(f, source=source)
        signed = header.signed
        authenticate(header, key, source)
        verify(path)
    except SnapshotNotSigned as exc:
        return Verdict(source, "not_signed", exc.problem, signed)
    except SnapshotCorrupt as exc:
        return Verdict(source, "corrupt", exc.problem, signed)
    except CodecError as exc:
        return Verdict(source, "corrupt", _without_source(str(exc), source), signed)
    except SnapshotVersionError as exc:
        return Verdict(source, "unreadable", _without_source(str(exc), source), signed)
    except OSError as exc:
        return Verdict(source, "unreadable", exc.strerror or str(exc), signed)
    if not header.signed and header.codec not in DATA_CODECS:
        return Verdict(source, "not_signed", _unsigned_code(header), False)
    return Verdict(source, "signed" if header.signed else "unsigned", None, header.signed)


def check_generations(paths: list[str | os.PathLike[str]], key: bytes | None) -> list[Verdict]:
    """check() of each of a tenant's snapshot files, given oldest generation first, with the
    restore's rule that an unsigned file newer than a signed one is planted."""
    verdicts: list[Verdict] = []
    signed_before: str | None = None
    for path in paths:
        verdict = check(path, key)
        if verdict.status == "unsigned" and signed_before is not None:
            verdict = Verdict(verdict.path, "not_signed",
                              f"not signed by this deployment: unsigned, yet the older "
                              f"{signed_before} is signed, and this deployment never writes an "
                              "unsigned snapshot after a signed one (planted?)", False)
        elif verdict.status == "signed":
            signed_before = verdict.path
        verdicts.append(verdict)
    return verdicts


def _unsigned_code(header: SnapshotHeader) -> str:
    return (f"not signed by this deployment: an unsigned {header.codec} snapshot (loading it "
            "would run code from the file; a restore refuses it unless --allow-unsigned)")


def _without_source(message: str, source: str) -> str:
    return message[len(source) + 2:] if message.startswith(source + ": ") else message


def describe(path: str | os.PathLike[str], key: bytes | None = None) -> dict[str, Any]:
    """Every header field, the sizes, whether the file verifies and who signed it, and a
    summary of the state.

    Raises SnapshotCorrupt or SnapshotVersionError when the header itself is bad (there is
    nothing to describe then). A bad payload is reported in "valid" and "problem" instead,
    with the header still shown; "signature" says whether the MAC verified under `key`
    ("verified", "not signed by this deployment: ...", "unsigned", or "not checked: no
    snapshot key"). A payload is decoded for its summary only when it is msgpack and its MAC
    did not fail. The result is JSON-serialisable.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header = read_header(f, source=source)
    signature, foreign = _signature(header, key, source)
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
        "epoch": header.epoch,
        "creation_id": header.creation_id,
        "signed": header.signed,
        "signature": signature,
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
        if is_segmented(header):
            index = open_index(header, Path(source))
            info["segments"] = _segments(index)
            info["segments_bytes"] = index.stored_bytes
            info["summary"] = {"segments": len(index.entries), "groups": list(index.groups)}
            for entry in index.entries:
                read_segment(entry)
            return info
    except SnapshotCorrupt as exc:
        info.update(valid=False, problem=exc.problem)
        return info
    if header.codec == "pickle":
        info["summary"] = "pickle payload not decoded"
    elif foreign:
        info["summary"] = "payload not decoded: not signed by this deployment"
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


def _signature(header: SnapshotHeader, key: bytes | None, source: str) -> tuple[str, bool]:
    """describe's "signature" text, and whether the MAC failed."""
    if not header.signed:
        return "unsigned", False
    if key is None:
        return "not checked: no snapshot key", False
    try:
        authenticate(header, key, source)
    except SnapshotNotSigned as exc:
        return exc.problem, True
    return "verified", False


def verify(path: str | os.PathLike[str]) -> None:
    """Raise a SnapshotError subclass if the file is not intact: its integrity only, not who
    wrote it (`check` says that).

    Checks the header, its CRC, the payload length, trailing bytes and the checksum; for
    msgpack also that the payload decodes. Pickle payloads are not decoded.
    """
    source = os.fspath(path)
    header, payload = read_snapshot(path)
    if header.codec not in CODEC_NAMES:
        raise CodecError(f"{source}: unknown codec {header.codec!r}")
    parts = ([read_segment(e) for e in open_index(header, Path(source)).entries]
             if is_segmented(header) else [payload])
    if header.codec == "pickle":
        return
    try:
        for part in parts:
            get_codec(header.codec, allow_pickle=False).loads(part)
    except CodecError as exc:
        raise CodecError(f"{source}: {exc}") from exc


def _segments(index: SegmentedIndex) -> dict[str, dict[str, Any]]:
    """describe's "segments": name -> its size and where its bytes are, in index order."""
    return {e.name: {"bytes": e.length, "codec": e.codec,
                     "stored": f"segment file {e.ref}.seg" if e.ref else "in this file"}
            for e in index.entries}


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
