"""The segment index of a format 2 snapshot, and reading one segment's bytes.

A segmented snapshot (issue 16; DESIGN.md "Later: restore that does not wait for the whole
state") stores the tenant's state as independently packed *segments*: named parts of the
state (tenant/segments.py says which parts an app's state has). Its header (snapshots/format.py)
carries:

    index           list of entries, one per segment (below), in the state's order
    segment_groups  list of str (an "extra" header key): the top-level keys whose values are
                    groups of segments. Its presence is what marks a file as segmented, so a
                    segmented state with no segment at all is still one.

An index entry is a msgpack map:

    name      str   the segment's name: a top-level key of the state root ("sessions"), or
                    "<group>/<key>" for a value inside a group ("tables/customers")
    offset    int   where its bytes start: in the payload of this file (ref "") or in the
                    segment file (always 0)
    length    int   how many bytes
    checksum  str   "blake2b-256:<64 hex>" of those bytes
    codec     str   the codec they are packed with (the file's codec)
    ref       str   "" -- the bytes are in this file's payload, at payload[offset:offset+length]
                    (a self-contained file: what a migration ships, snapshots/segment_files.py)
                    "<64 hex>" -- the bytes are a segment file the store keeps under that name,
                    the hex of their checksum (content-addressed: a segment that did not change
                    keeps its name, so a later generation refers to the same file instead of
                    writing it again). LocalStore: `<ref>.seg` in the tenant's snapshots folder.

The header's MAC covers the index, and each entry's checksum covers its bytes, so a segment is
verified when it is read, independently of the others (`read_segment`). A segmented file
written by LocalStore has an empty payload: code that predates segments then fails to decode
it (CodecError, the worker refuses to start) instead of loading a wrong state.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapshots.errors import SegmentCorrupt

if TYPE_CHECKING:
    from snapshots.format import SnapshotHeader

GROUPS_KEY = "segment_groups"
CHECKSUM_PREFIX = "blake2b-256:"
SEGMENT_SUFFIX = ".seg"
_HEX = re.compile(r"[0-9a-f]{64}")
_CHECKSUM = re.compile(r"blake2b-256:[0-9a-f]{64}")
_ENTRY_TYPES: dict[str, type] = {
    "name": str, "offset": int, "length": int, "checksum": str, "codec": str,
}


def checksum_of(data: bytes | bytearray | memoryview) -> str:
    return CHECKSUM_PREFIX + hashlib.blake2b(data, digest_size=32).hexdigest()


@dataclass(frozen=True)
class SegmentEntry:
    """One index entry, plus where its bytes are on this host (`path`, `file_offset`: not
    written to the file; the store fills them in when it reads the index)."""

    name: str
    offset: int
    length: int
    checksum: str
    codec: str
    ref: str = ""
    path: str = field(default="", compare=False)
    file_offset: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "offset": self.offset, "length": self.length,
                "checksum": self.checksum, "codec": self.codec, "ref": self.ref}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], *, path: str = "",
                  file_offset: int = 0) -> SegmentEntry:
        return cls(entry["name"], entry["offset"], entry["length"], entry["checksum"],
                   entry["codec"], entry.get("ref", ""), path, file_offset)


def ref_for(checksum: str) -> str:
    """The content-addressed name of a segment file: its checksum's hex."""
    return checksum[len(CHECKSUM_PREFIX):]


def index_entry_problem(entry: Any, payload_length: int) -> str | None:
    """What is wrong with one index entry (the shape above), or None. snapshots.format calls
    it for every entry of a header it reads or writes."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not a map"
    for key, kind in _ENTRY_TYPES.items():
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"field {key!r} is {type(value).__name__} {value!r}, expected {kind.__name__}"
    ref = entry.get("ref", "")
    if not isinstance(ref, str) or (ref and _HEX.fullmatch(ref) is None):
        return f"ref {ref!r} is neither '' nor 64 lowercase hex digits"
    if not entry["name"]:
        return "the segment name is empty"
    offset, length = entry["offset"], entry["length"]
    if offset < 0 or length < 0:
        return f"offset {offset} or length {length} is negative"
    if not ref and offset + length > payload_length:
        return f"bytes {offset}..{offset + length} are outside the {payload_length}-byte payload"
    if ref and offset != 0:
        return f"a segment file's bytes start at offset 0, not {offset}"
    if _CHECKSUM.fullmatch(entry["checksum"]) is None:
        return f"checksum {entry['checksum']!r} is not 'blake2b-256:<64 hex>'"
    if ref and ref != ref_for(entry["checksum"]):
        return "ref is not the hex of the checksum"
    return None


def is_segmented(header: SnapshotHeader) -> bool:
    return GROUPS_KEY in header.extra


def groups_of(header: SnapshotHeader) -> tuple[str, ...]:
    groups = header.extra.get(GROUPS_KEY)
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return ()
    return tuple(groups)


@dataclass(frozen=True)
class SegmentedIndex:
    """What a restore of a segmented generation returns instead of a decoded state: the
    header, its entries (with their paths on this host), and the groups. Nothing is decoded
    yet; `read_segment(entry)` gives one segment's verified bytes."""

    header: SnapshotHeader
    path: str
    entries: tuple[SegmentEntry, ...]
    groups: tuple[str, ...]

    @property
    def stored_bytes(self) -> int:
        return sum(e.length for e in self.entries)


def read_segment(entry: SegmentEntry) -> bytes:
    """The segment's bytes, read from entry.path and verified against its checksum.
    SegmentCorrupt when they are missing, short or do not match."""
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise SegmentCorrupt(entry.path, entry.name, "its file is missing") from exc
    try:
        data = os.pread(fd, entry.length, entry.file_offset) if entry.length else b""
    finally:
        os.close(fd)
    if len(data) != entry.length:
        raise SegmentCorrupt(entry.path, entry.name,
                             f"only {len(data)} of its {entry.length} bytes are there")
    actual = checksum_of(data)
    if actual != entry.checksum:
        raise SegmentCorrupt(entry.path, entry.name,
                             f"checksum mismatch: the index has {entry.checksum}, "
                             f"the bytes are {actual}")
    return data
