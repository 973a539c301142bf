"""The snapshot file format, version 1.

A snapshot file is a verified prefix followed by the payload (the tenant's state, packed by
a codec). All integers are big-endian.

    offset       size  field
    0            8     magic b"SBSNAP\\r\\n" (the CR LF catches text-mode transfers)
    8            2     format version, u16 (this code writes 1 and reads up to 1)
    10           4     header length H, u32, 1 <= H <= 1 MiB
    14           H     header: one msgpack map with str keys (below)
    14+H         4     CRC32 (zlib.crc32) of bytes 0 .. 14+H: magic, version, length and
                       header together
    18+H         P     payload, exactly P = header["payload_length"] bytes
    18+H+P             end of file: any trailing byte makes the file corrupt

The header map (packed in this order; readers look keys up by name):

    tenant          str    a tenant name (the rule in contract/names.py)
    generation      int    >= 0; the store numbers generations from 1
    codec           str    "msgpack" or "pickle" (see snapshots.codec)
    app_version     str    the tenant app's code version that wrote the state
    schema_version  int    the app's schema version of the state, for upgrade functions
    journal_pos     int    >= 0; the number of journal commands the state includes, so
                           restore replays the journal from this position on
    payload_length  int    >= 0; P above
    checksum        str    "blake2b-256:" + 64 lowercase hex digits, of the payload
    created_at      float  Unix time the snapshot was made
    index           any    None in version 1 writers. Reserved for segmented snapshots: a
                           later writer may put a segment index here (one independently
                           packed segment per top-level part of the state), so a worker can
                           load only what a request touches.

Any other key is kept in SnapshotHeader.extra and written back unchanged, so a version 1
reader tolerates keys added by later version 1 writers.

Stable across versions: bytes 0-13, the header limit and the CRC after the header. Only the
header keys and the payload layout may change in a later version. That lets a reader check
the CRC before the version, and so tell a file written by newer code (valid CRC, higher
version: SnapshotVersionError) from a flipped version byte (bad CRC: SnapshotCorrupt).

Limits: header at most 1 MiB (MAX_HEADER_LENGTH); payload up to what the disk and memory
hold (hundreds of MB is the expected top). The header CRC guards the fields the reader acts
on before it reads the payload; the BLAKE2b checksum guards the payload.

Two readers:
- read_snapshot copies the payload into memory and verifies it: the bytes it returns are
  verified, whatever happens to the file afterwards.
- open_snapshot + load_state (what a restore uses) map the file instead of copying it, and
  for a codec that is safe on unverified input (msgpack: it runs no code named by its input,
  and allocates in proportion to it) hash the payload in a thread while the codec decodes
  it; a state whose payload then fails its checksum is discarded, never returned. Any other
  codec (pickle) is handed a private copy only after that copy verified. Mapping relies on
  the store's rule that a snapshot file is never modified or truncated once it has its name
  (a save writes a temp file and renames it); an in-place edit during a restore could show
  the hash and the decoder different bytes, and a truncation would fault the reader (SIGBUS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import msgpack

from contract.names import is_valid_name
from snapshots.codec import gc_paused
from snapshots.errors import SnapshotCorrupt, SnapshotVersionError
from snapshots.layout import validate_tenant_name

MAGIC = b"SBSNAP\r\n"
FORMAT_VERSION = 1
MAX_HEADER_LENGTH = 1024 * 1024
CHECKSUM_PREFIX = "blake2b-256:"

# magic, version, header length
_FIXED = struct.Struct(">8sHI")
_CRC = struct.Struct(">I")
_CHECKSUM_RE = re.compile(r"blake2b-256:[0-9a-f]{64}")

Payload = bytes | bytearray | memoryview
# Below this a payload is hashed before it is decoded: a thread costs more than it saves.
PARALLEL_VERIFY_MIN_BYTES = 1024 * 1024

# name -> accepted types; bool is excluded separately because it is an int subclass
_REQUIRED: dict[str, tuple[type, ...]] = {
    "tenant": (str,),
    "generation": (int,),
    "codec": (str,),
    "app_version": (str,),
    "schema_version": (int,),
    "journal_pos": (int,),
    "payload_length": (int,),
    "checksum": (str,),
    "created_at": (float, int),
}
_KNOWN_KEYS = frozenset(_REQUIRED) | {"index"}


@dataclass(frozen=True)
class SnapshotHeader:
    tenant: str
    generation: int
    codec: str
    app_version: str
    schema_version: int
    journal_pos: int
    payload_length: int
    checksum: str
    created_at: float
    index: Any = field(default=None, hash=False)
    format_version: int = FORMAT_VERSION
    # Offset of the payload in the file (18 + H); 0 until the header is encoded or read.
    header_bytes: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)


def payload_checksum(payload: Payload) -> str:
    return CHECKSUM_PREFIX + hashlib.blake2b(payload, digest_size=32).hexdigest()


def make_header(
    tenant: str,
    generation: int,
    codec: str,
    app_version: str,
    schema_version: int,
    journal_pos: int,
    payload: Payload,
    *,
    created_at: float | None = None,
    index: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> SnapshotHeader:
    """Build the header for payload: its length, checksum and the prefix size.

    Reads the payload once to hash it; never copies it. ValueError for a field the reader
    would refuse (a negative journal_pos, a str generation, ...).
    """
    validate_tenant_name(tenant)
    header = SnapshotHeader(
        tenant=tenant,
        generation=generation,
        codec=codec,
        app_version=app_version,
        schema_version=schema_version,
        journal_pos=journal_pos,
        payload_length=memoryview(payload).nbytes,
        checksum=payload_checksum(payload),
        created_at=time.time() if created_at is None else float(created_at),
        index=index,
        extra=dict(extra or {}),
    )
    return dataclasses.replace(header, header_bytes=len(encode_prefix(header)))


def encode_prefix(header: SnapshotHeader) -> bytes:
    """Magic, version, header length, header and CRC: everything before the payload."""
    if header.format_version != FORMAT_VERSION:
        raise ValueError(f"this code writes format version {FORMAT_VERSION} only")
    fields: dict[str, Any] = {
        "tenant": header.tenant,
        "generation": header.generation,
        "codec": header.codec,
        "app_version": header.app_version,
        "schema_version": header.schema_version,
        "journal_pos": header.journal_pos,
        "payload_length": header.payload_length,
        "checksum": header.checksum,
        "created_at": float(header.created_at),
        "index": header.index,
    }
    clash = _KNOWN_KEYS.intersection(header.extra)
    if clash:
        raise ValueError(f"extra header keys clash with format keys: {sorted(clash)}")
    fields.update(header.extra)
    problem = _fields_problem(fields)
    if problem is not None:
        raise ValueError(f"refusing to write an unreadable snapshot header: {problem}")
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    if len(packed) > MAX_HEADER_LENGTH:
        raise ValueError(f"snapshot header is {len(packed)} bytes, over the 1 MiB limit")
    head = _FIXED.pack(MAGIC, header.format_version, len(packed)) + packed
    return head + _CRC.pack(zlib.crc32(head))


def write_to(fileobj: BinaryIO, header: SnapshotHeader, payload: Payload) -> None:
    """Write the prefix, then the payload itself (no copy, whatever its size).

    Works with raw (unbuffered) files, whose write() may be short.
    """
    view = memoryview(payload).cast("B")
    if view.nbytes != header.payload_length:
        raise ValueError(
            f"payload is {view.nbytes} bytes but the header says {header.payload_length}"
        )
    _write_all(fileobj, memoryview(encode_prefix(header)))
    _write_all(fileobj, view)


def _write_all(fileobj: BinaryIO, view: memoryview) -> None:
    while view.nbytes:
        written = fileobj.write(view)
        if not written:
            # A blocking file that writes nothing and raises nothing: never loop on it.
            raise OSError(f"write returned {written!r} with {view.nbytes} bytes left")
        view = view[written:]


def encode(header: SnapshotHeader, payload: Payload) -> bytes:
    """The whole file as bytes; copies the payload, so for small states and tests."""
    return encode_prefix(header) + bytes(payload)


def read_header(f: BinaryIO, *, source: str) -> SnapshotHeader:
    """Read and verify the prefix from f (positioned at offset 0).

    On return f is positioned at the payload. source names the file in errors.
    """
    fixed = f.read(_FIXED.size)
    if len(fixed) < _FIXED.size:
        what = "empty file" if not fixed else f"file is only {len(fixed)} bytes"
        raise SnapshotCorrupt(source, f"truncated: {what}, shorter than the 14-byte prefix")
    magic, version, length = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise SnapshotCorrupt(
            source, f"bad magic {magic!r} (expected {MAGIC!r}): not a Switchboard snapshot"
        )
    if length == 0 or length > MAX_HEADER_LENGTH:
        raise SnapshotCorrupt(
            source, f"header length {length} is outside 1..{MAX_HEADER_LENGTH} bytes"
        )
    rest = f.read(length + _CRC.size)
    if len(rest) < length + _CRC.size:
        raise SnapshotCorrupt(
            source,
            f"truncated: header of {length} bytes plus 4-byte CRC expected after offset 14, "
            f"only {len(rest)} bytes present",
        )
    raw_header = memoryview(rest)[:length]
    (stored_crc,) = _CRC.unpack_from(rest, length)
    computed_crc = zlib.crc32(raw_header, zlib.crc32(fixed))
    if stored_crc != computed_crc:
        raise SnapshotCorrupt(
            source,
            f"header CRC mismatch: stored 0x{stored_crc:08x}, computed 0x{computed_crc:08x}",
        )
    # Checked after the CRC on purpose: see "Stable across versions" above.
    if version > FORMAT_VERSION:
        raise SnapshotVersionError(source, version, FORMAT_VERSION)
    if version < 1:
        raise SnapshotCorrupt(source, f"format version {version} does not exist")
    return _parse_header(raw_header, version, _FIXED.size + length + _CRC.size, source)


def _parse_header(raw: memoryview, version: int, header_bytes: int, source: str) -> SnapshotHeader:
    try:
        fields = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise SnapshotCorrupt(source, f"header is not a valid msgpack map: {exc}") from exc
    if not isinstance(fields, dict):
        raise SnapshotCorrupt(source, f"header is a {type(fields).__name__}, not a map")
    problem = _fields_problem(fields)
    if problem is not None:
        raise SnapshotCorrupt(source, problem)
    return SnapshotHeader(
        tenant=fields["tenant"],
        generation=fields["generation"],
        codec=fields["codec"],
        app_version=fields["app_version"],
        schema_version=fields["schema_version"],
        journal_pos=fields["journal_pos"],
        payload_length=fields["payload_length"],
        checksum=fields["checksum"],
        created_at=float(fields["created_at"]),
        index=fields.get("index"),
        format_version=version,
        header_bytes=header_bytes,
        extra={k: v for k, v in fields.items() if k not in _KNOWN_KEYS},
    )


def _fields_problem(fields: Mapping[str, Any]) -> str | None:
    """What is wrong with a header's fields, or None.

    The writer applies the reader's rules too, so it never writes a header it would refuse.
    """
    for name, types in _REQUIRED.items():
        if name not in fields:
            return f"header field {name!r} is missing"
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            return f"header field {name!r} is {type(value).__name__} {value!r}, expected {expected}"
    for name in ("generation", "journal_pos", "payload_length"):
        if fields[name] < 0:
            return f"header field {name!r} is negative: {fields[name]}"
    if not is_valid_name(fields["tenant"]):
        return f"header tenant {fields['tenant']!r} is not a valid name"
    if _CHECKSUM_RE.fullmatch(fields["checksum"]) is None:
        return f"header checksum {fields['checksum']!r} is not 'blake2b-256:<64 hex>'"
    return None


def read_snapshot(path: str | os.PathLike[str]) -> tuple[SnapshotHeader, bytes]:
    """Read and fully verify a snapshot file; return its header and payload.

    Raises SnapshotCorrupt or SnapshotVersionError on any problem, OSError when the file
    cannot be read at all. Never returns unverified bytes.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_sized_header(f, source)
        # BufferedReader.read(n) allocates n bytes once and reads straight into them.
        payload = f.read(header.payload_length)
        if len(payload) != header.payload_length or f.read(1):
            raise SnapshotCorrupt(
                source, "file changed size while being read (payload length mismatch)"
            )
    verify_payload(header, payload, source)
    return header, payload


def verify_payload(header: SnapshotHeader, payload: Payload, source: str) -> None:
    """SnapshotCorrupt unless payload matches the header's checksum."""
    _check_digest(header, payload_checksum(payload), source)


def _check_digest(header: SnapshotHeader, actual: str, source: str) -> None:
    if actual != header.checksum:
        raise SnapshotCorrupt(
            source, f"payload checksum mismatch: header has {header.checksum}, payload is {actual}"
        )


def _read_sized_header(f: BinaryIO, source: str) -> SnapshotHeader:
    """read_header, then check the file is exactly as long as the header says."""
    header = read_header(f, source=source)
    file_size = os.fstat(f.fileno()).st_size
    # Compare sizes before reading, so a truncated 300 MB file is not read for nothing.
    expected = header.header_bytes + header.payload_length
    if file_size < expected:
        raise SnapshotCorrupt(
            source,
            f"truncated: header says the payload is {header.payload_length} bytes, "
            f"only {max(file_size - header.header_bytes, 0)} bytes follow the header",
        )
    if file_size > expected:
        raise SnapshotCorrupt(
            source,
            f"{file_size - expected} trailing bytes after the "
            f"{header.payload_length}-byte payload",
        )
    return header


@dataclass(frozen=True)
class OpenSnapshot:
    """A snapshot file whose prefix and size verified, its payload mapped but NOT verified.

    payload is valid only inside the open_snapshot block that made it. Pass it to load_state
    (or verify_payload) before trusting a byte of it.
    """

    header: SnapshotHeader
    source: str
    payload: memoryview


@contextmanager
def open_snapshot(path: str | os.PathLike[str]) -> Iterator[OpenSnapshot]:
    """Open a snapshot and map its payload read-only, without copying or hashing it.

    Raises what read_snapshot raises for a bad prefix or size. The memoryview and the
    mapping are released when the block ends, so nothing can point into an unmapped file:
    payload kept past the block is a released view (ValueError on use), and a slice of it
    still alive there makes the block's end raise BufferError instead of unmapping.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        header = _read_sized_header(f, source)
        if header.payload_length == 0:
            yield OpenSnapshot(header, source, memoryview(b""))
            return
        # The mapping stays valid after the file is closed, which the with block does next.
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if len(mapped) != header.header_bytes + header.payload_length:
            raise SnapshotCorrupt(source, "file changed size while being read")
        with memoryview(mapped) as whole, whole[header.header_bytes :] as payload:
            yield OpenSnapshot(header, source, payload)
    finally:
        mapped.close()


class Decoder(Protocol):
    """What load_state needs of a codec (snapshots.codec.Codec fits)."""

    def loads(self, data: Payload) -> Any: ...


def load_state(snapshot: OpenSnapshot, decoder: Decoder) -> Any:
    """Decode the payload of an open snapshot; return the state only if the payload verified.

    SnapshotCorrupt when the checksum fails, whatever the decoder did: a state decoded from
    bytes that then fail their checksum is dropped (reference counting frees it). A decoder
    error on a payload that verified propagates (a CodecError: the file is sound, this code
    cannot read it). A decoder whose `safe_on_unverified_input` attribute is not true (pickle,
    or any codec that does not say) only ever sees a private copy that verified first.
    """
    header, payload, source = snapshot.header, snapshot.payload, snapshot.source
    if not getattr(decoder, "safe_on_unverified_input", False):
        # A copy, so the bytes loaded are the bytes verified even if the file's pages change.
        private = bytes(payload)
        verify_payload(header, private, source)
        return decoder.loads(private)
    if payload.nbytes < PARALLEL_VERIFY_MIN_BYTES:
        verify_payload(header, payload, source)
        return decoder.loads(payload)
    checksum = _ChecksumThread(payload)
    # Paused here, not only in the decoder, so the GC resumes (and the state is frozen, see
    # snapshots.codec.gc_paused) only once the checksum has been seen to match.
    with gc_paused(freeze=True):
        try:
            state = decoder.loads(payload)
        except Exception as exc:
            # Corrupt bytes may fail to decode: then the file is corrupt, not the codec.
            try:
                _check_digest(header, checksum.result(), source)
            except SnapshotCorrupt as corrupt:
                raise corrupt from exc
            raise
        finally:
            checksum.join()  # also on KeyboardInterrupt: the thread reads the mapping
        try:
            _check_digest(header, checksum.result(), source)
        except SnapshotCorrupt:
            del state
            raise
        return state


class _ChecksumThread:
    """payload_checksum(view) in a thread. hashlib's BLAKE2b releases the GIL on large
    buffers, so on a second core it runs alongside a decoder that holds the GIL."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-checksum", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._digest = payload_checksum(self._view)
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc

    def join(self) -> None:
        # No timeout: it hashes a mapped local file of a known size and cannot block on
        # anything else; returning early would leave it reading a mapping about to close.
        self._thread.join()

    def result(self) -> str:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest
