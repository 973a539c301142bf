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
    raw_length      the msgpack length before compression (limits below)
    data_sha256     hex SHA-256 of the D compressed bytes

An export file is not signed: it is meant to move between deployments, and holds plain msgpack
data (no code runs when it is read; import re-encodes it with the app's codec and the importing
deployment signs the snapshot it writes). So every reader treats it as hostile input.

Limits, checked before the data is decompressed or decoded (ExportFileError):
- header at most 64 KiB (MAX_HEADER_LENGTH);
- raw data at most raw_limit(D) = min(MAX_RAW_LENGTH, max(RAW_ALLOWANCE, MAX_COMPRESSION_RATIO *
  D)): any export may hold RAW_ALLOWANCE (32 MiB), a bigger one at most MAX_COMPRESSION_RATIO
  (128) times its compressed size, and none more than MAX_RAW_LENGTH (2 GiB). Real tenant data
  compresses 3-10x here (the demo app's records: 5.7x); zlib's own limit is about 1032x, which
  is what a "zlib bomb" uses (1 MB that inflates to 1 GB). The writer refuses data over the
  limit (CodecError: nothing could import it), so only a crafted file meets it at import;
- decompression is incremental, capped at the header's raw_length (itself within the limit):
  data that inflates past it is refused as soon as it does, never held whole;
- the decoded msgpack: sets, frozensets and tuples nest at most snapshots.codec.MAX_EXT_NESTING
  (32) deep (5,000-deep tuples used to crash the reader on its C stack); lists and maps are
  bounded by the msgpack decoder's own stack.
Decoding builds Python objects, which take more memory than their msgpack bytes (a few times
for real data, more for data crafted from empty maps); the raw limit bounds that too.
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
MAX_RAW_LENGTH = 2 * 1024**3
RAW_ALLOWANCE = 32 * 1024**2
MAX_COMPRESSION_RATIO = 128
_INFLATE_CHUNK = 1024 * 1024  # compressed bytes fed to the decompressor at a time
_FIXED = struct.Struct(">8sI")
_CRC = struct.Struct(">I")


def raw_limit(data_length: int) -> int:
    """The most raw (decompressed) bytes an export of `data_length` compressed bytes may hold
    (see "Limits" above)."""
    return min(MAX_RAW_LENGTH, max(RAW_ALLOWANCE, MAX_COMPRESSION_RATIO * data_length))


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
    if len(raw) > raw_limit(len(packed)):
        raise CodecError(
            f"exported data is {len(raw)} bytes and compresses {len(raw) // len(packed)}x, "
            f"past the {MAX_COMPRESSION_RATIO}x an import accepts above {RAW_ALLOWANCE} bytes "
            "(snapshots/exportfile.py, Limits)")
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
    """Read, verify and decode a whole export. ExportFileError on any problem, found as early
    as it can be: the header's limits before any data is read, the data's size before it is
    hashed, its checksum before it is decompressed, its size while it is (see "Limits")."""
    if isinstance(path_or_bytes, bytes):
        name = source or "<export>"
        stream: BinaryIO = io.BytesIO(path_or_bytes)
        header = read_export_header(stream, source=name)
        packed = memoryview(path_or_bytes)[stream.tell():]
        _check_data_length(header, len(packed), name)
    else:
        name = source or os.fspath(path_or_bytes)
        with open(path_or_bytes, "rb") as f:
            header = read_export_header(f, source=name)
            _check_data_length(header, os.fstat(f.fileno()).st_size - f.tell(), name)
            packed = memoryview(f.read())
    if hashlib.sha256(packed).hexdigest() != header.data_sha256:
        raise ExportFileError(f"{name}: data checksum mismatch (the file is damaged)")
    raw = _inflate(packed, header.raw_length, name)
    try:
        data = MsgpackCodec().loads(raw)
    except CodecError as exc:
        raise ExportFileError(f"{name}: data does not decode: {exc}") from exc
    return header, data


def _check_data_length(header: ExportHeader, present: int, name: str) -> None:
    if present != header.data_length:
        raise ExportFileError(
            f"{name}: header says {header.data_length} data bytes, the file has {present}"
        )


def _inflate(packed: memoryview, raw_length: int, name: str) -> bytearray:
    """Decompress `packed`, which must inflate to exactly `raw_length` bytes (within the
    limit, checked with the header). Fed in chunks with an output cap, so data that inflates
    past raw_length is refused once it has, holding at most raw_length + 1 bytes. (No flush():
    its length is a first buffer size, not a cap; every byte of input has been fed by then,
    and a stream that is not complete is refused by the eof check.)"""
    decompressor = zlib.decompressobj()
    raw = bytearray()
    try:
        for start in range(0, len(packed), _INFLATE_CHUNK):
            raw += decompressor.decompress(packed[start:start + _INFLATE_CHUNK],
                                           raw_length + 1 - len(raw))
            if len(raw) > raw_length or decompressor.unconsumed_tail:
                raise ExportFileError(f"{name}: data inflates past the {raw_length} bytes its "
                                      "header says (refused before inflating more)")
    except zlib.error as exc:
        raise ExportFileError(f"{name}: data does not decompress: {exc}") from exc
    if len(raw) != raw_length or not decompressor.eof or decompressor.unused_data:
        raise ExportFileError(f"{name}: data is not {raw_length} bytes uncompressed")
    return raw


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
    limit = raw_limit(fields["data_length"])
    if fields["raw_length"] > limit:
        return (f"raw data length {fields['raw_length']} is more than an export of "
                f"{fields['data_length']} compressed bytes may inflate to ({limit}: at most "
                f"{MAX_COMPRESSION_RATIO}x above {RAW_ALLOWANCE} bytes); refused before "
                "decompressing (a zlib bomb?)")
    return None
