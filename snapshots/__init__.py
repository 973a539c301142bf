"""Snapshot files and the stores that keep them.

format   the file format (byte layout, versions, limits) and its reader and writer
codec    msgpack (default) and pickle codecs for the payload
store    SnapshotStore, and LocalStore: generations in a local directory, written durably
inspect  describe and verify a file, for `switchboard snapshot inspect|verify`
errors   the exception hierarchy

Imports neither `switchboard` nor `tenant`: both depend on this package, never the reverse.
"""

from __future__ import annotations

from snapshots.codec import Codec, MsgpackCodec, PickleCodec, get_codec
from snapshots.errors import (
    CodecError,
    InvalidTenantName,
    NoValidSnapshot,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotVersionError,
    SnapshotWriteError,
    UnsafeCodec,
)
from snapshots.format import FORMAT_VERSION, SnapshotHeader, make_header, read_snapshot
from snapshots.store import LoadedSnapshot, LocalStore, SnapshotInfo, SnapshotStore

__all__ = [
    "FORMAT_VERSION",
    "Codec",
    "CodecError",
    "InvalidTenantName",
    "LoadedSnapshot",
    "LocalStore",
    "MsgpackCodec",
    "NoValidSnapshot",
    "PickleCodec",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotHeader",
    "SnapshotInfo",
    "SnapshotStore",
    "SnapshotVersionError",
    "SnapshotWriteError",
    "UnsafeCodec",
    "get_codec",
    "make_header",
    "read_snapshot",
]
