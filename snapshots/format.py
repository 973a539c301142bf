"""The snapshot file format, version 2 (reads versions 1 and 2).

A snapshot file is a verified prefix followed by the payload (the tenant's state, packed by
a codec). All integers are big-endian. Both versions share this layout:

    offset       size  field
    0            8     magic b"SBSNAP\\r\\n" (the CR LF catches text-mode transfers)
    8            2     format version, u16 (this code writes 2 and reads 1 and 2)
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
    -- version 2 adds:
    epoch           int    >= 0; the tenant's fencing token when it was written (1 for a
                           tenant that never changed owner; DESIGN.md "Between hosts")
    creation_id     str    which incarnation of the tenant's name wrote it ("" if unknown)
    index           list   the segment index, [] (below)
    ...             any    keys of later version 2 writers (kept, see below)
    mac             bin    32 bytes, only in a signed file, and then always the map's last
                           entry (below)

In version 1, `index` was any value (None from every writer) and there is no epoch,
creation_id or mac: a version 1 file is unsigned.

The MAC (version 2, signed files). mac = keyed BLAKE2b-256 under the deployment's snapshot
key (snapshots.mac: person b"sb-snapshot-v2") of bytes 0 .. 14+H-32, that is everything in
the file before the 32 bytes of the mac value: magic, version, header length and every header
entry (the mac's key and bin marker included), i.e. every header field except the MAC itself.
The payload is covered through the header's `checksum`, its BLAKE2b-256 (collision resistant,
so a changed payload cannot keep it): the MAC is one cheap pass over a small header instead of
a second pass over a payload of hundreds of MB. The CRC is computed last and covers the mac
bytes too, so damage to them reads as corrupt, never as "not signed". A reader (the store,
snapshots.inspect) checks, in this order, before any byte of the payload reaches a decoder:
the CRC, the header's fields, the MAC (`authenticate`: the header's last 32 bytes must be
the mac entry), then the payload's checksum: before decoding for any codec that can run code
(pickle), and alongside decoding for msgpack, whose result is dropped unless the checksum
matches (see "Two readers"). A signed file whose MAC does not verify is "not signed by this
deployment" (SnapshotNotSigned), distinct from a corrupt one (SnapshotCorrupt); what a restore
then does (fall back a generation) and which unsigned files it accepts is the store's policy
(snapshots/store.py). A writer without a key writes version 2 without mac: unsigned.

The segment index (version 2): a list of entries, one per independently packed segment of
the state, whose shape and meaning snapshots/segments.py documents (segmented snapshots,
issue 16). An unsegmented file leaves it empty, and its payload is then the whole state. This
module checks the entries' shape (`snapshots.segments.index_entry_problem`); reading a
segmented file's segments is the store's job (snapshots/segment_files.py).

Any other key is kept in SnapshotHeader.extra and written back unchanged, so a reader
tolerates keys added by later writers of the same version.

Stable across versions: bytes 0-13, the header limit and the CRC after the header. Only the
header keys and the payload layout may change in a later version. That lets a reader check
the CRC before the version, and so tell a file written by newer code (valid CRC, higher
version: SnapshotVersionError) from a flipped version byte (bad CRC: SnapshotCorrupt).

Limits: header at most 1 MiB (MAX_HEADER_LENGTH); payload up to what the disk and memory
hold (hundreds of MB is the expected top). The header CRC guards the fields the reader acts
on before it reads the payload; the BLAKE2b checksum guards the payload; the MAC says who
wrote both.

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
Neither checks the MAC: call `authenticate` on the header first (the store does).
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
from snapshots.errors import SnapshotCorrupt, SnapshotNotSigned, SnapshotVersionError
from snapshots.layout import validate_tenant_name
from snapshots.mac import MAC_BYTES, WriterIdentity, macs_equal, snapshot_mac
from snapshots.segments import index_entry_problem

MAGIC = b"SBSNAP\r\n"
FORMAT_VERSION = 2
MAX_HEADER_LENGTH = 1024 * 1024
CHECKSUM_PREFIX = "blake2b-256:"

# magic, version, header length
_FIXED = struct.Struct(">8sHI")
_CRC = struct.Struct(">I")
_CHECKSUM_RE = re.compile(r"blake2b-256:[0-9a-f]{64}")
# How a signed header ends: the key "mac" (fixstr 3), a bin 8 marker of 32 bytes, the MAC.
_MAC_ENTRY = b"\xa3mac\xc4" + bytes([MAC_BYTES])
_NO_MAC = b"\0" * MAC_BYTES  # the placeholder a signed header is packed with to be MACed

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
_REQUIRED_V2: dict[str, tuple[type, ...]] = {
    "epoch": (int,),
    "creation_id": (str,),
    "index": (list,),
}
_KNOWN_KEYS = {
    1: frozenset(_REQUIRED) | {"index"},
    2: frozenset(_REQUIRED) | frozenset(_REQUIRED_V2) | {"mac"},
}


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
    # Version 1: whatever the file held (None from every writer); version 2: a list ([]).
    index: Any = field(default_factory=list, hash=False)
    format_version: int = FORMAT_VERSION
    # Offset of the payload in the file (18 + H); 0 until the header is encoded or read.
    header_bytes: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    epoch: int = 1
    creation_id: str = ""
    # The MAC of a signed version 2 file; None when unsigned (every version 1 file).
    mac: bytes | None = field(default=None, repr=False)
    # Bytes 0 .. 14+H-32 of a signed file, what `mac` covers (kept to authenticate it).
    signed_bytes: bytes = field(default=b"", repr=False, compare=False, hash=False)

    @property
    def signed(self) -> bool:
        return self.mac is not None


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
    index: list[Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    identity: WriterIdentity | None = None,
    checksum: str | None = None,
) -> SnapshotHeader:
    """Build the version 2 header for payload: its length, checksum, the prefix size, and
    its MAC when `identity` has a key (unsigned without one).

    Reads the payload once to hash it (unless given its `checksum`, from payload_checksum);
    never copies it. ValueError for a field the reader would refuse (a negative journal_pos,
    a str generation, ...).
    """
    validate_tenant_name(tenant)
    identity = identity or WriterIdentity()
    header = SnapshotHeader(
        tenant=tenant,
        generation=generation,
        codec=codec,
        app_version=app_version,
        schema_version=schema_version,
        journal_pos=journal_pos,
        payload_length=memoryview(payload).nbytes,
        checksum=payload_checksum(payload) if checksum is None else checksum,
        created_at=time.time() if created_at is None else float(created_at),
        index=[] if index is None else index,
        extra=dict(extra or {}),
        epoch=identity.epoch,
        creation_id=identity.creation_id,
    )
    if identity.key is not None:
        placeholder = _encode_head(dataclasses.replace(header, mac=_NO_MAC))
        signed_bytes = placeholder[:-MAC_BYTES]
        header = dataclasses.replace(header, mac=snapshot_mac(identity.key, signed_bytes),
                                     signed_bytes=signed_bytes)
    return dataclasses.replace(header, header_bytes=len(encode_prefix(header)))


def encode_prefix(header: SnapshotHeader) -> bytes:
    """Magic, version, header length, header and CRC: everything before the payload."""
    head = _encode_head(header)
    return head + _CRC.pack(zlib.crc32(head))


def _encode_head(header: SnapshotHeader) -> bytes:
    """Magic, version, header length and header (the header's mac entry last, if signed)."""
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
        "epoch": header.epoch,
        "creation_id": header.creation_id,
        "index": header.index,
    }
    clash = _KNOWN_KEYS[FORMAT_VERSION].intersection(header.extra)
    if clash:
        raise ValueError(f"extra header keys clash with format keys: {sorted(clash)}")
    fields.update(header.extra)
    if header.mac is not None:
        fields["mac"] = bytes(header.mac)  # last: see "The MAC" above
    problem = _fields_problem(fields, FORMAT_VERSION)
    if problem is not None:
        raise ValueError(f"refusing to write an unreadable snapshot header: {problem}")
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    if len(packed) > MAX_HEADER_LENGTH:
        raise ValueError(f"snapshot header is {len(packed)} bytes, over the 1 MiB limit")
    return _FIXED.pack(MAGIC, header.format_version, len(packed)) + packed


def authenticate(header: SnapshotHeader, key: bytes | None, source: str) -> bool:
    """Whether the file is signed (True) or unsigned (False, every version 1 file); raises
    SnapshotNotSigned for a signed file whose MAC does not verify under `key`, or when there
    is no key to check it with. Reads nothing but the header: call it before the payload."""
    if header.mac is None:
        return False
    if key is None:
        raise SnapshotNotSigned(
            source, "not signed by this deployment: the file is signed and this process has "
                    "no snapshot key to check it with")
    if not macs_equal(snapshot_mac(key, header.signed_bytes), header.mac):
        raise SnapshotNotSigned(
            source, "not signed by this deployment: its MAC does not verify under this "
                    "deployment's snapshot key")
    return True


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

    On return f is positioned at the payload. source names the file in errors. The MAC is
    not checked here (there is no key here): `authenticate` does that.
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
    header = _parse_header(raw_header, version, _FIXED.size + length + _CRC.size, source)
    if header.mac is not None:
        if bytes(raw_header[-len(_MAC_ENTRY) - MAC_BYTES:]) != _MAC_ENTRY + header.mac:
            raise SnapshotCorrupt(source, "the header's mac is not its last entry")
        signed_bytes = fixed + bytes(raw_header[:-MAC_BYTES])
        header = dataclasses.replace(header, signed_bytes=signed_bytes)
    return header


def _parse_header(raw: memoryview, version: int, header_bytes: int, source: str) -> SnapshotHeader:
    try:
        fields = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise SnapshotCorrupt(source, f"header is not a valid msgpack map: {exc}") from exc
    if not isinstance(fields, dict):
        raise SnapshotCorrupt(source, f"header is a {type(fields).__name__}, not a map")
    problem = _fields_problem(fields, version)
    if problem is not None:
        raise SnapshotCorrupt(source, problem)
    v2 = version >= 2
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
        extra={k: v for k, v in fields.items() if k not in _KNOWN_KEYS[version]},
        epoch=fields["epoch"] if v2 else 1,
        creation_id=fields["creation_id"] if v2 else "",
        mac=fields.get("mac") if v2 else None,
    )


def _fields_problem(fields: Mapping[str, Any], version: int) -> str | None:
    """What is wrong with a header's fields, or None.

    The writer applies the reader's rules too, so it never writes a header it would refuse.
    """
    required = {**_REQUIRED, **_REQUIRED_V2} if version >= 2 else _REQUIRED
    problem = _types_problem(fields, required, "header field")
    if problem is not None:
        return problem
    for name in ("generation", "journal_pos", "payload_length"):
        if fields[name] < 0:
            return f"header field {name!r} is negative: {fields[name]}"
    if not is_valid_name(fields["tenant"]):
        return f"header tenant {fields['tenant']!r} is not a valid name"
    if _CHECKSUM_RE.fullmatch(fields["checksum"]) is None:
        return f"header checksum {fields['checksum']!r} is not 'blake2b-256:<64 hex>'"
    if version < 2:
        return None
    if fields["epoch"] < 0:
        return f"header field 'epoch' is negative: {fields['epoch']}"
    if "mac" in fields:
        mac = fields["mac"]
        if not isinstance(mac, bytes) or len(mac) != MAC_BYTES:
            return f"header field 'mac' is not {MAC_BYTES} bytes"
    for position, entry in enumerate(fields["index"]):
        problem = index_entry_problem(entry, fields["payload_length"])
        if problem is not None:
            return f"segment index entry {position}: {problem}"
    return None


def _types_problem(fields: Mapping[str, Any], required: Mapping[str, tuple[type, ...]],
                   what: str) -> str | None:
    for name, types in required.items():
        if name not in fields:
            return f"{what} {name!r} is missing"
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            return f"{what} {name!r} is {type(value).__name__} {value!r}, expected {expected}"
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
