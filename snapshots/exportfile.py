"""The export file format, "switchboard-export" version 1: a tenant's data as plain data.

An export is what `switchboard export` writes and `switchboard import` reads: a compact,
self-describing extract of one tenant's data for backups, moves and upgrades. Unlike a snapshot
it is not the Python object layout of the state: it holds what the app's `export_data(state)`
hook returns (by default the state itself), in msgpack, so any language with a msgpack library
can read it. All integers are big-endian.

    offset   size  field
    0        8     magic b"SBEXPT\\r\\n"
    8        4     header length H, u32, 1 <= H <= 64 KiB
    12       H     header: one UTF-8 JSON object (keys below), readable with `head -c`
    12+H     4     CRC32 (zlib.crc32) of bytes 0 .. 12+H
    16+H     D     data: zlib-compressed msgpack of the exported data; D = data_length
    16+H+D         end of file: a trailing byte makes the file corrupt

Header keys (a reader looks them up by name and ignores keys it does not know):

    format          "switchboard-export"
    version         1 (this code writes 1 and reads up to 1)
    tenant          the tenant it was exported from (the rule in contract/names.py)
    app             the app (MODULE:ATTR) that exported it
    app_version     that app's code version
    schema_version  the app's schema version of the data (import runs the upgrades from it)
    exported_at     Unix seconds, float
    journal_pos     the journal position the data includes (every command up to it)
    generation      the snapshot generation the export started from, or null
    encoding        "msgpack+zlib": the data is zlib(msgpack(data)) with the extension types
                    of snapshots.codec (datetime, date, time, timedelta, Decimal, UUID, set,
                    frozenset, tuple, big int; type codes documented there)
    data_length     D, the compressed length
    raw_length      the msgpack length before compression (at most 4 GiB)
    data_sha256     hex SHA-256 of the D compressed bytes

Limits: header at most 64 KiB; raw data at most 4 GiB (decompression stops there, so a
crafted file cannot make a reader allocate without bound).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from contract.names import is_valid_name
from snapshots.codec import MsgpackCodec
from snapshots.durable import write_atomic
from snapshots.errors import CodecError, ExportFileError

MAGIC = b"SBEXPT\r\n"
FORMAT_NAME = "switchboard-export"
VERSION = 1
ENCODING = "msgpack+zlib"
MAX_HEADER_LENGTH = 64 * 1024
MAX_RAW_LENGTH = 4 * 1024**3
_FIXED = struct.Struct(">8sI")
_CRC = struct.Struct(">I")


@dataclass(frozen=True)
class ExportHeader:
    tenant: str
    app: str
    app_version: str
    schema_version: int
    exported_at: float
    journal_pos: int
    generation: int | None
    data_length: int
    raw_length: int
    data_sha256: str
    format: str = FORMAT_NAME
    version: int = VERSION
    encoding: str = ENCODING

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def encode_export(
    data: Any,
    *,
    tenant: str,
    app: str,
    app_version: str,
    schema_version: int,
    journal_pos: int,
    generation: int | None,
    exported_at: float | None = None,
) -> tuple[ExportHeader, bytes]:
    """The whole export file for `data`. CodecError if data is not plain data msgpack packs."""
    raw = MsgpackCodec().dumps(data)
    if len(raw) > MAX_RAW_LENGTH:
        raise CodecError(f"exported data is {len(raw)} bytes, over the {MAX_RAW_LENGTH} limit")
    packed = zlib.compress(raw, 6)
    header = ExportHeader(
        tenant=tenant, app=app, app_version=app_version, schema_version=schema_version,
        exported_at=time.time() if exported_at is None else float(exported_at),
        journal_pos=journal_pos, generation=generation, data_length=len(packed),
        raw_length=len(raw), data_sha256=hashlib.sha256(packed).hexdigest(),
    )
    problem = _header_problem(header.to_json())
    if problem is not None:
        raise ValueError(f"refusing to write an unreadable export header: {problem}")
    text = json.dumps(header.to_json(), sort_keys=True, separators=(",", ":")).encode()
    head = _FIXED.pack(MAGIC, len(text)) + text
    return header, head + _CRC.pack(zlib.crc32(head)) + packed


def write_export(path: str | os.PathLike[str], blob: bytes) -> None:
    """Write an encoded export file to path, mode 0600.

    When this returns, the whole file is on stable storage under `path`; a reader never
    sees it half written (snapshots.durable.write_atomic). OSError on failure.
    """
    write_atomic(path, blob, mode=0o600)


def read_export_header(f: BinaryIO, *, source: str) -> ExportHeader:
    """Read and check the header from f (at offset 0); f is left at the data."""
    fixed = f.read(_FIXED.size)
    if len(fixed) < _FIXED.size:
        raise ExportFileError(f"{source}: not a switchboard export: only {len(fixed)} bytes")
    magic, length = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise ExportFileError(f"{source}: not a switchboard export (bad magic {magic!r})")
    if not 1 <= length <= MAX_HEADER_LENGTH:
        raise ExportFileError(f"{source}: export header length {length} is out of range")
    rest = f.read(length + _CRC.size)
    if len(rest) < length + _CRC.size:
        raise ExportFileError(f"{source}: truncated export header")
    (stored,) = _CRC.unpack_from(rest, length)
    computed = zlib.crc32(rest[:length], zlib.crc32(fixed))
    if stored != computed:
        raise ExportFileError(
            f"{source}: export header CRC mismatch: stored 0x{stored:08x}, "
            f"computed 0x{computed:08x}"
        )
    try:
        fields = json.loads(rest[:length])
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ExportFileError(f"{source}: export header is not JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise ExportFileError(f"{source}: export header is not a JSON object")
    if fields.get("format") != FORMAT_NAME:
        raise ExportFileError(f"{source}: format is {fields.get('format')!r}, not {FORMAT_NAME!r}")
    version = fields.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ExportFileError(
            f"{source}: export format version {version} is newer than this code reads "
            f"(up to {VERSION}); import it with newer Switchboard code"
        )
    problem = _header_problem(fields)
    if problem is not None:
        raise ExportFileError(f"{source}: {problem}")
    return ExportHeader(**{k: fields[k] for k in ExportHeader.__dataclass_fields__})


def read_export(
    path_or_bytes: str | os.PathLike[str] | bytes, *, source: str | None = None
) -> tuple[ExportHeader, Any]:
    """Read, verify and decode a whole export. ExportFileError on any problem."""
    if isinstance(path_or_bytes, bytes):
        blob = path_or_bytes
        name = source or "<export>"
    else:
        name = source or os.fspath(path_or_bytes)
        with open(path_or_bytes, "rb") as f:
            blob = f.read()
    stream = io.BytesIO(blob)
    header = read_export_header(stream, source=name)
    packed = blob[stream.tell():]
    if len(packed) != header.data_length:
        raise ExportFileError(
            f"{name}: header says {header.data_length} data bytes, the file has {len(packed)}"
        )
    if hashlib.sha256(packed).hexdigest() != header.data_sha256:
        raise ExportFileError(f"{name}: data checksum mismatch (the file is damaged)")
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(packed, header.raw_length + 1)
    except zlib.error as exc:
        raise ExportFileError(f"{name}: data does not decompress: {exc}") from exc
    if len(raw) != header.raw_length or decompressor.unconsumed_tail:
        raise ExportFileError(f"{name}: data is not {header.raw_length} bytes uncompressed")
    try:
        data = MsgpackCodec().loads(raw)
    except CodecError as exc:
        raise ExportFileError(f"{name}: data does not decode: {exc}") from exc
    return header, data


_FIELDS: dict[str, tuple[type, ...]] = {
    "tenant": (str,), "app": (str,), "app_version": (str,), "schema_version": (int,),
    "exported_at": (float, int), "journal_pos": (int,), "data_length": (int,),
    "raw_length": (int,), "data_sha256": (str,), "version": (int,), "encoding": (str,),
}


def _header_problem(fields: dict[str, Any]) -> str | None:
    for name, types in _FIELDS.items():
        value = fields.get(name)
        if isinstance(value, bool) or not isinstance(value, types):
            return f"export header field {name!r} is missing or not a {types[0].__name__}"
    if "generation" not in fields:
        return "export header field 'generation' is missing"
    generation = fields["generation"]
    if generation is not None and (isinstance(generation, bool) or not isinstance(generation, int)):
        return "export header field 'generation' is not an int or null"
    if not is_valid_name(fields["tenant"]):
        return f"export header tenant {fields['tenant']!r} is not a valid name"
    if fields["encoding"] != ENCODING:
        return f"unknown data encoding {fields['encoding']!r} (this code reads {ENCODING!r})"
    for name in ("schema_version", "journal_pos", "data_length", "raw_length"):
        if fields[name] < 0:
            return f"export header field {name!r} is negative"
    if fields["raw_length"] > MAX_RAW_LENGTH:
        return f"raw data length {fields['raw_length']} is over the {MAX_RAW_LENGTH} limit"
    return None
