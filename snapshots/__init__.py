"""Snapshot files and the stores that keep them.

format     the file format (byte layout, versions, limits) and its reader and writer
codec      msgpack (default) and pickle codecs for the payload
mac        the snapshot key, and the MACs that sign snapshots and journal segments
store      SnapshotStore, and LocalStore: generations in a local directory, written durably
layout     DataLayout: the paths of a data dir (tenants, snapshots, journal), listing, deletion
durable    fsync a folder, write a file atomically, create a secret file: the durable-file rules
inspect    describe and verify a file, for `switchboard snapshot inspect|verify`
exportfile the "switchboard-export" file format
errors     the exception hierarchy

Imports neither `switchboard` nor `tenant`: both depend on this package, never the reverse.

The names below are imported lazily (PEP 562): `import snapshots.layout` in the router or the
CLI must not load the codecs and msgpack, which only the modules that read or write snapshot
payloads need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from snapshots.layout import DataLayout
    from snapshots.store import LoadedSnapshot, LocalStore, SnapshotInfo, SnapshotStore

# exported name -> the submodule that defines it
_EXPORTS = {
    "Codec": "codec", "MsgpackCodec": "codec", "PickleCodec": "codec", "get_codec": "codec",
    "CodecError": "errors", "InvalidTenantName": "errors", "NoValidSnapshot": "errors",
    "SnapshotCorrupt": "errors", "SnapshotError": "errors", "SnapshotVersionError": "errors",
    "SnapshotWriteError": "errors", "UnsafeCodec": "errors",
    "FORMAT_VERSION": "format", "SnapshotHeader": "format", "make_header": "format",
    "read_snapshot": "format",
    "DataLayout": "layout",
    "LoadedSnapshot": "store", "LocalStore": "store", "SnapshotInfo": "store",
    "SnapshotStore": "store",
}

__all__ = [
    "FORMAT_VERSION",
    "Codec",
    "CodecError",
    "DataLayout",
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'snapshots' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"snapshots.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
