"""Fuzz the three file readers with Hypothesis: snapshots (snapshots/format.py), the journal
(tenant/journal_format.py) and exports (snapshots/exportfile.py).

Each reader gets random bytes, a valid file made by the module's own writer cut at every
length, and that file with random flips, insertions and deletions. Damage to a file with a
checksum rarely gets past it, so each reader also gets "resealed" files: damaged headers and
payloads whose CRCs and checksums were recomputed afterwards, which reach the parsers behind
the checks (the codec included).

The property everywhere: the reader returns a result or raises its own module's documented
errors (SnapshotError, JournalError, ExportFileError), never a bare ValueError, KeyError,
struct.error, msgpack or zlib error, and never crashes or hangs (a per-example deadline,
and pytest-timeout for the whole test). A damaged file is never returned as data different
from what was written: the checksums catch every flipped byte. (The journal may drop its
damaged last record as a torn tail, as documented, but never returns a changed record.)
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from snapshots import format as snapshot_format
from snapshots.codec import MAX_EXT_NESTING, MsgpackCodec, get_codec
from snapshots.errors import (
    CodecError,
    ExportFileError,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotVersionError,
)
from snapshots.exportfile import encode_export, read_export
from snapshots.format import MAGIC as SNAPSHOT_MAGIC
from snapshots.format import (
    encode,
    load_state,
    make_header,
    open_snapshot,
    payload_checksum,
    read_header,
    read_snapshot,
)
from tenant.errors import JournalCorrupt, JournalError
from tenant.journal_format import (
    JournalRecord,
    create_segment,
    frame_record,
    prepare_record,
    read_records,
    scan_segment,
)

# Hypothesis caches things (constants from our modules, Unicode tables) in .hypothesis/ under
# the working directory even without an example database; keep the working tree clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir(), f"switchboard-hypothesis-{os.getuid()}"))
FUZZ = settings(
    max_examples=300,
    # Per example: each reads a file of a few hundred bytes in well under a millisecond, so
    # an example that takes seconds is a reader gone quadratic (or stuck), not a slow machine.
    deadline=timedelta(seconds=2),
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow],
)
# A reader stuck in a loop fails the test instead of eating the suite's 300 s budget.
no_hang = pytest.mark.timeout(120)

T = TypeVar("T")


def attempt(read: Callable[[], T], errors: type[Exception] | tuple[type[Exception], ...]
            ) -> T | Exception:
    """read()'s result, or the exception if it is one of `errors`; anything else propagates
    and fails the test with its own traceback."""
    try:
        return read()
    except errors as exc:
        return exc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh_dir(workdir: Path) -> tempfile.TemporaryDirectory[str]:
    """A directory for one Hypothesis example (tmp_path is one per test, not per example)."""
    return tempfile.TemporaryDirectory(dir=workdir)


# ---- damage -------------------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, blob: bytes) -> bytes:
    """blob with 1-4 random byte flips, insertions and deletions."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "insert" or not data:
            data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, 255)))
        elif kind == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        else:
            del data[draw(st.integers(0, len(data) - 1))]
    return bytes(data)


# Values msgpack packs, including extension types with random codes and random data, and
# the codec's own container extensions (set, frozenset, tuple: 7-9) holding random values.
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
    st.text(max_size=12), st.binary(max_size=12),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=24)),
)


def _packed_ext(code_and_value: tuple[int, Any]) -> msgpack.ExtType:
    code, value = code_and_value
    return msgpack.ExtType(code, msgpack.packb(value, use_bin_type=True))


msgpack_values = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-3, 3)), inner, max_size=4),
        st.tuples(st.integers(0, 12), inner).map(_packed_ext),
    ),
    max_leaves=12,
)
# ExtType refuses the reserved negative codes (-1 is msgpack's own timestamp): pack by hand.
_reserved_ext = st.builds(
    lambda code, data: b"\xc7" + bytes([len(data)]) + struct.pack(">b", code) + data,
    st.integers(-128, -1), st.binary(max_size=16),
)
msgpack_payloads = st.one_of(
    msgpack_values.map(lambda value: msgpack.packb(value, use_bin_type=True)), _reserved_ext
)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.sampled_from([-1, 0, 1, 2, 2**40, 4 * 1024**3 + 1, "acme", "Bad Name",
                               "msgpack+zlib", "switchboard-export", ""])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6,
)


@st.composite
def edited_fields(draw: st.DrawFn, fields: dict[str, Any], values: st.SearchStrategy[Any]
                  ) -> dict[str, Any]:
    """fields with a few keys deleted or given random values, and maybe an unknown key."""
    edited = dict(fields)
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        if draw(st.booleans()):
            edited.pop(key, None)
        else:
            edited[key] = draw(values)
    if draw(st.booleans()):
        edited[draw(st.text(max_size=6))] = draw(values)
    return edited


# ---- snapshots ----------------------------------------------------------------------------

STATE = {
    "tables": {"people": {1: {"name": "Ann", "born": datetime(1990, 5, 17, tzinfo=UTC)},
                          2: {"name": "Bo", "balance": Decimal("12.50"), "tags": {"a", "b"}}}},
    "pairs": [(1, "one"), (2, "two")],
    "blob": bytes(range(40)),
}
PAYLOAD = MsgpackCodec().dumps(STATE)
HEADER = make_header("acme", 7, "msgpack", "1.4.2", 3, 1200, PAYLOAD, created_at=1.7e9)
SNAPSHOT = encode(HEADER, PAYLOAD)
_CRC = struct.Struct(">I")


def seal_snapshot(version: int, raw_header: bytes, payload: bytes) -> bytes:
    head = SNAPSHOT_MAGIC + struct.pack(">HI", version, len(raw_header)) + raw_header
    return head + _CRC.pack(zlib.crc32(head)) + payload


def snapshot_fields() -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(SNAPSHOT[14 : HEADER.header_bytes - 4])
    return fields


def read_every_way(path: Path, blob: bytes, *, parallel: bool = False) -> dict[str, Any]:
    """Every snapshot reader on blob: each one's result, or the SnapshotError it raised.

    parallel: decode while hashing (what a restore does for a payload of 1 MiB or more),
    so the codec sees the unverified bytes.
    """
    path.write_bytes(blob)

    def restore() -> Any:
        with open_snapshot(path) as snapshot:
            codec = get_codec(snapshot.header.codec, allow_pickle=False)
            return load_state(snapshot, codec)

    threshold = 0 if parallel else snapshot_format.PARALLEL_VERIFY_MIN_BYTES
    try:
        with mock.patch.object(snapshot_format, "PARALLEL_VERIFY_MIN_BYTES", threshold):
            return {
                "header": attempt(lambda: read_header(io.BytesIO(blob), source="fuzz"),
                                  SnapshotError),
                "snapshot": attempt(lambda: read_snapshot(path), SnapshotError),
                "state": attempt(restore, SnapshotError),
            }
    finally:
        gc.unfreeze()  # a parallel load freezes what it loaded, and this test process with it


def assert_only_corruption_or_the_original(results: dict[str, Any]) -> None:
    """A damaged snapshot reads back as what was written, or as SnapshotCorrupt."""
    header, snapshot, state = results["header"], results["snapshot"], results["state"]
    assert isinstance(header, SnapshotCorrupt) or header == HEADER
    assert isinstance(snapshot, SnapshotCorrupt) or snapshot == (HEADER, PAYLOAD)
    assert isinstance(state, SnapshotCorrupt) or state == STATE


def test_snapshot_cut_at_every_length_is_corrupt(workdir: Path) -> None:
    path = workdir / "cut.snap"
    assert read_every_way(path, SNAPSHOT)["state"] == STATE
    for cut in range(len(SNAPSHOT)):
        results = read_every_way(path, SNAPSHOT[:cut])
        assert_only_corruption_or_the_original(results)
        assert isinstance(results["snapshot"], SnapshotCorrupt)
        assert isinstance(results["state"], SnapshotCorrupt)
        # The header alone still reads once it is all there; it says how much should follow.
        assert isinstance(results["header"], SnapshotCorrupt) == (cut < HEADER.header_bytes)


@no_hang
@FUZZ
@given(blob=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=300).map(lambda tail: SNAPSHOT_MAGIC + tail),
                      st.binary(max_size=300).map(lambda tail: SNAPSHOT[:14] + tail)))
def test_snapshot_readers_on_random_bytes(workdir: Path, blob: bytes) -> None:
    assert_only_corruption_or_the_original(read_every_way(workdir / "random.snap", blob))


@no_hang
@FUZZ
@given(blob=damaged(SNAPSHOT), parallel=st.booleans())
def test_damaged_snapshot_is_never_read_as_other_data(
    workdir: Path, blob: bytes, parallel: bool
) -> None:
    results = read_every_way(workdir / "damaged.snap", blob, parallel=parallel)
    assert_only_corruption_or_the_original(results)
    if blob != SNAPSHOT:
        assert isinstance(results["snapshot"], SnapshotCorrupt)


@st.composite
def resealed_snapshots(draw: st.DrawFn) -> bytes:
    """A snapshot whose header and payload were damaged, then given a valid CRC and (mostly)
    a payload checksum and length to match."""
    payload = draw(st.one_of(st.just(PAYLOAD), msgpack_payloads, st.binary(max_size=100),
                             damaged(PAYLOAD)))
    fields = snapshot_fields()
    if draw(st.booleans()):
        fields.update(payload_length=len(payload), checksum=payload_checksum(payload))
    fields = draw(edited_fields(fields, st.one_of(msgpack_values, st.sampled_from(
        [-1, 0, 2**64 - 1, "pickle", "msgpack", "no-such-codec", "Bad Name", 1.5]))))
    if draw(st.integers(0, 9)) == 0:
        raw_header = draw(msgpack_payloads | st.binary(min_size=1, max_size=60))
    else:
        raw_header = msgpack.packb(fields, use_bin_type=True)
    version = draw(st.sampled_from([1, 1, 1, 1, 0, 2, 0xFFFF]))
    trailing = draw(st.sampled_from([b"", b"", b"", b"\0"]))
    return seal_snapshot(version, raw_header, payload + trailing)


@no_hang
@FUZZ
@given(blob=resealed_snapshots())
def test_resealed_snapshot_raises_only_snapshot_errors(workdir: Path, blob: bytes) -> None:
    results = read_every_way(workdir / "resealed.snap", blob)
    snapshot = results["snapshot"]
    if not isinstance(snapshot, Exception):
        header, payload = snapshot
        assert len(payload) == header.payload_length
        assert payload_checksum(payload) == header.checksum
    if isinstance(results["header"], SnapshotVersionError):
        assert isinstance(snapshot, SnapshotVersionError)


# ---- the journal --------------------------------------------------------------------------

SEGMENT_FIRSTS = (1, 4, 7)  # three segments of three records each


def journal_commands() -> list[tuple[str, dict[str, Any]]]:
    return [("put", {"id": seq, "name": f"person {seq}", "tags": ["a", seq], "ok": seq % 2 == 0})
            for seq in range(1, 10)]


@pytest.fixture(scope="module")
def journal(workdir: Path) -> dict[str, bytes]:
    """A valid journal written by the module's own writer: segment name -> bytes."""
    journal_dir = workdir / "valid-journal"
    journal_dir.mkdir()
    for first in SEGMENT_FIRSTS:
        fd, _ = create_segment(journal_dir, first)
        try:
            for seq in range(first, first + 3):
                name, args = journal_commands()[seq - 1]
                record = frame_record(seq, prepare_record(name, args, 1.7e9 + seq))
                assert os.write(fd, record) == len(record)
        finally:
            os.close(fd)
    return {path.name: path.read_bytes() for path in sorted(journal_dir.iterdir())}


ORIGINAL_RECORDS = [JournalRecord(seq, 1.7e9 + seq, name, args)
                    for seq, (name, args) in enumerate(journal_commands(), start=1)]


def replay(directory: str, segments: dict[str, bytes], after_seq: int = 0) -> Any:
    """read_records over segments written to directory, or the JournalError it raised."""
    for name, data in segments.items():
        Path(directory, name).write_bytes(data)
    return attempt(lambda: read_records(directory, after_seq), JournalError)


def record_ends(segment: bytes) -> list[int]:
    """The offset just past each record of a valid segment."""
    ends, offset = [], 16
    while offset < len(segment):
        offset += 8 + int.from_bytes(segment[offset : offset + 4], "big")
        ends.append(offset)
    return ends


def test_journal_as_written_reads_back(journal: dict[str, bytes], tmp_path: Path) -> None:
    result = replay(str(tmp_path), journal)
    assert result.records == ORIGINAL_RECORDS and result.torn_tail is None


def test_journal_segment_cut_at_every_length(
    journal: dict[str, bytes], workdir: Path
) -> None:
    names = sorted(journal)
    for index, name in enumerate(names):
        is_last = index == len(names) - 1
        ends = record_ends(journal[name])
        for cut in range(len(journal[name])):
            with fresh_dir(workdir) as directory:
                result = replay(directory, {**journal, name: journal[name][:cut]})
            if not is_last or cut < 16:
                # A short older segment loses records that later ones follow: never skipped.
                assert isinstance(result, JournalCorrupt), (name, cut, result)
                continue
            # The last segment cut short is a torn tail: the whole records before the cut.
            assert not isinstance(result, Exception), (name, cut, result)
            whole = SEGMENT_FIRSTS[index] - 1 + sum(end <= cut for end in ends)
            assert result.records == ORIGINAL_RECORDS[:whole]
            assert result.last_seq == whole
            assert (result.torn_tail is None) == (cut in (16, *ends))


@no_hang
@FUZZ
@given(body=st.binary(max_size=300), with_header=st.booleans(), is_last=st.booleans())
def test_journal_readers_on_random_bytes(
    journal: dict[str, bytes], workdir: Path,
    body: bytes, with_header: bool, is_last: bool,
) -> None:
    first = sorted(journal)[0]
    data = journal[first][:16] + body if with_header else body
    with fresh_dir(workdir) as directory:
        result = replay(directory, {first: data})
        scan = attempt(lambda: scan_segment(Path(directory, first), 1, is_last=is_last),
                       JournalError)
    if not isinstance(result, Exception):
        assert [r.seq for r in result.records] == list(range(1, len(result.records) + 1))
    if not isinstance(scan, Exception):
        assert scan.good_end <= len(data) and (scan.torn or scan.good_end == len(data))


@no_hang
@FUZZ
@given(data=st.data(), after_seq=st.integers(0, 10))
def test_damaged_journal_is_never_read_as_other_records(
    journal: dict[str, bytes], workdir: Path,
    data: st.DataObject, after_seq: int,
) -> None:
    names = sorted(journal)
    name = data.draw(st.sampled_from(names), label="segment")
    blob = data.draw(damaged(journal[name]), label="damaged")
    with fresh_dir(workdir) as directory:
        result = replay(directory, {**journal, name: blob}, after_seq)
    if isinstance(result, Exception):
        return
    # At most the last records are dropped, as a torn tail: never a changed or skipped one.
    assert result.records == ORIGINAL_RECORDS[after_seq : after_seq + len(result.records)]
    assert result.last_seq == after_seq + len(result.records)
    # Damage to an older segment is JournalCorrupt, unless read_records skips the segment (the
    # snapshot covers it) or the damage is only bytes after its records, which a later
    # segment supersedes (so they may go unread).
    skipped = name != names[-1] and SEGMENT_FIRSTS[names.index(name) + 1] - 1 <= after_seq
    appended_only = blob.startswith(journal[name])
    if name != names[-1] and not skipped and not appended_only:
        pytest.fail(f"damage in older segment {name} went unnoticed: {result}")


def _framed(payload: bytes) -> bytes:
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


@st.composite
def resealed_records(draw: st.DrawFn, seq: int) -> bytes:
    """One record with a valid CRC whose payload is anything from right to random."""
    name, args = journal_commands()[(seq - 1) % 9]
    fields: list[Any] = [seq, 1.7e9, name, args]
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return frame_record(seq, prepare_record(name, args, 1.7e9))
    if choice == 1:
        index = draw(st.integers(0, 3))
        fields[index] = draw(msgpack_values)
        return _framed(msgpack.packb(fields, use_bin_type=True))
    if choice == 2:
        return _framed(draw(msgpack_payloads))
    return _framed(draw(st.binary(min_size=1, max_size=40)))


@no_hang
@FUZZ
@given(data=st.data(), is_last=st.booleans())
def test_resealed_journal_records_raise_only_journal_errors(
    journal: dict[str, bytes], workdir: Path,
    data: st.DataObject, is_last: bool,
) -> None:
    first = sorted(journal)[0]
    count = data.draw(st.integers(1, 4), label="records")
    body = b"".join(data.draw(resealed_records(seq), label=f"record {seq}")
                    for seq in range(1, count + 1))
    segment = journal[first][:16] + body
    with fresh_dir(workdir) as directory:
        Path(directory, first).write_bytes(segment)
        scan = attempt(lambda: scan_segment(Path(directory, first), 1, is_last=is_last),
                       JournalError)
    if not isinstance(scan, Exception):
        for seq, record in enumerate(scan.records, start=1):
            assert record.seq == seq
            assert isinstance(record.now, float) and isinstance(record.name, str)
            assert isinstance(record.args, dict)


# ---- exports ------------------------------------------------------------------------------

EXPORT_HEADER, EXPORT = encode_export(
    STATE, tenant="acme", app="examples.dabble:app", app_version="1.0", schema_version=1,
    journal_pos=42, generation=3, exported_at=1.7e9,
)
_EXPORT_HEADER_LENGTH = int.from_bytes(EXPORT[8:12], "big")
EXPORT_DATA = EXPORT[16 + _EXPORT_HEADER_LENGTH :]


def seal_export(header_text: bytes, data: bytes) -> bytes:
    head = b"SBEXPT\r\n" + struct.pack(">I", len(header_text)) + header_text
    return head + _CRC.pack(zlib.crc32(head)) + data


def read_any_export(blob: bytes) -> Any:
    return attempt(lambda: read_export(blob), ExportFileError)


def test_export_cut_at_every_length_is_refused() -> None:
    assert read_any_export(EXPORT) == (EXPORT_HEADER, STATE)
    for cut in range(len(EXPORT)):
        assert isinstance(read_any_export(EXPORT[:cut]), ExportFileError)


@no_hang
@FUZZ
@given(blob=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=300).map(lambda tail: EXPORT[:12] + tail)))
def test_export_reader_on_random_bytes(blob: bytes) -> None:
    assert isinstance(read_any_export(blob), ExportFileError)


@no_hang
@FUZZ
@given(blob=damaged(EXPORT))
def test_damaged_export_is_never_read_as_other_data(blob: bytes) -> None:
    result = read_any_export(blob)
    if blob == EXPORT:
        assert result == (EXPORT_HEADER, STATE)
    else:
        assert isinstance(result, ExportFileError)


@st.composite
def resealed_exports(draw: st.DrawFn) -> bytes:
    """An export whose header and data were damaged, then given a valid header CRC and
    (mostly) data lengths and a SHA-256 to match."""
    raw = draw(st.one_of(st.just(MsgpackCodec().dumps(STATE)), msgpack_payloads,
                         st.binary(max_size=60)))
    packed = draw(st.one_of(st.just(zlib.compress(raw)), st.just(zlib.compress(raw)[:-3]),
                            st.just(zlib.compress(raw) + b"\0"), st.binary(max_size=60)))
    fields = EXPORT_HEADER.to_json()
    if draw(st.booleans()):
        fields.update(data_length=len(packed), raw_length=len(raw),
                      data_sha256=hashlib.sha256(packed).hexdigest())
    fields = draw(edited_fields(fields, json_values))
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.binary(min_size=1, max_size=60))
    else:
        text = json.dumps(fields).encode()
    return seal_export(text, packed)


@no_hang
@FUZZ
@given(blob=resealed_exports())
def test_resealed_export_raises_only_export_errors(blob: bytes) -> None:
    result = read_any_export(blob)
    if not isinstance(result, Exception):
        header, _ = result
        assert header.data_length == len(blob) - 16 - int.from_bytes(blob[8:12], "big")


# ---- what the fuzzing found ---------------------------------------------------------------


def nested_tuples(depth: int) -> bytes:
    """A msgpack payload of `depth` tuples (extension type 9) inside each other."""
    payload = b"\x90"  # the innermost tuple's elements: an empty array
    for _ in range(depth):
        payload = msgpack.packb([msgpack.ExtType(9, payload)])  # [a tuple of payload's]
    return payload


def test_deeply_nested_tuples_are_a_codec_error_not_a_crash() -> None:
    # Each tuple level is a nested msgpack call with ~42 KiB of C stack: 200 levels (under
    # 1 KiB of payload) used to overflow the stack and kill the process with SIGSEGV. In a
    # subprocess, so the old behaviour fails this test instead of ending the test run.
    script = (
        "import sys\n"
        "from snapshots.codec import MsgpackCodec\n"
        "from snapshots.errors import CodecError\n"
        "try:\n"
        "    MsgpackCodec().loads(sys.stdin.buffer.read())\n"
        "except CodecError as exc:\n"
        "    print('CodecError', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=nested_tuples(200),
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.startswith(b"CodecError"), done.stdout


def test_tuple_nesting_limit_is_the_same_for_writing_and_reading() -> None:
    codec = MsgpackCodec()
    deepest: Any = ()
    for _ in range(MAX_EXT_NESTING - 1):
        deepest = (deepest,)
    assert codec.loads(codec.dumps(deepest)) == deepest
    with pytest.raises(CodecError, match="nested more than"):
        codec.dumps((deepest,))  # refused at checkpoint time, not at the next restore
    with pytest.raises(CodecError, match="nested more than"):
        codec.loads(nested_tuples(MAX_EXT_NESTING + 1))


def test_deeply_nested_tuples_in_a_sealed_snapshot_or_export(workdir: Path) -> None:
    payload = nested_tuples(MAX_EXT_NESTING + 1)  # just past the limit: no crash risk here
    header = make_header("acme", 1, "msgpack", "1", 1, 0, payload, created_at=1.7e9)
    results = read_every_way(workdir / "deep.snap", encode(header, payload))
    assert isinstance(results["state"], CodecError)  # the file is sound; the data is not

    raw = payload
    packed = zlib.compress(raw)
    fields = EXPORT_HEADER.to_json() | {"data_length": len(packed), "raw_length": len(raw),
                                        "data_sha256": hashlib.sha256(packed).hexdigest()}
    result = read_any_export(seal_export(json.dumps(fields).encode(), packed))
    assert isinstance(result, ExportFileError) and "nested more than" in str(result)


def test_export_header_without_generation_is_an_export_error() -> None:
    fields = EXPORT_HEADER.to_json()
    del fields["generation"]  # used to leak KeyError('generation')
    result = read_any_export(seal_export(json.dumps(fields).encode(), EXPORT_DATA))
    assert isinstance(result, ExportFileError) and "generation" in str(result)


def test_deeply_nested_export_header_is_an_export_error() -> None:
    result = read_any_export(seal_export(b"[" * 50_000, EXPORT_DATA))  # used to leak
    assert isinstance(result, ExportFileError)  # RecursionError from json.loads
