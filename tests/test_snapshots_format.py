"""The snapshot file format: what is written reads back, and any damage is detected."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from snapshots.errors import InvalidTenantName, SnapshotCorrupt, SnapshotVersionError
from snapshots.format import (
    FORMAT_VERSION,
    MAGIC,
    SnapshotHeader,
    encode,
    encode_prefix,
    make_header,
    read_header,
    read_snapshot,
    write_to,
)

PAYLOAD = random.Random(1234).randbytes(64 * 1024)


def header_for(payload: bytes, **overrides: Any) -> SnapshotHeader:
    args: dict[str, Any] = {
        "tenant": "acme",
        "generation": 7,
        "codec": "msgpack",
        "app_version": "1.4.2",
        "schema_version": 3,
        "journal_pos": 1200,
        "payload": payload,
        "created_at": 1_700_000_000.5,
    }
    args.update(overrides)
    return make_header(**args)


def write_snapshot(path: Path, payload: bytes = PAYLOAD, **overrides: Any) -> SnapshotHeader:
    header = header_for(payload, **overrides)
    with open(path, "wb") as f:
        write_to(f, header, payload)
    return header


def raw_file(version: int, fields: dict[str, Any], payload: bytes = b"") -> bytes:
    """A file built by hand, with a valid CRC, for headers make_header would not produce."""
    packed: bytes = msgpack.packb(fields)
    head = MAGIC + struct.pack(">HI", version, len(packed)) + packed
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def valid_fields(payload: bytes = b"") -> dict[str, Any]:
    header = header_for(payload)
    return {
        "tenant": header.tenant,
        "generation": header.generation,
        "codec": header.codec,
        "app_version": header.app_version,
        "schema_version": header.schema_version,
        "journal_pos": header.journal_pos,
        "payload_length": header.payload_length,
        "checksum": header.checksum,
        "created_at": header.created_at,
        "index": None,
    }


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    written = write_snapshot(path)
    header, payload = read_snapshot(path)
    assert payload == PAYLOAD
    assert header == written
    assert header.tenant == "acme" and header.generation == 7 and header.codec == "msgpack"
    assert header.app_version == "1.4.2" and header.schema_version == 3
    assert header.journal_pos == 1200 and header.created_at == 1_700_000_000.5
    assert header.payload_length == len(PAYLOAD) and header.index == []
    assert header.checksum.startswith("blake2b-256:") and len(header.checksum) == 12 + 64
    assert header.format_version == FORMAT_VERSION == 2
    assert (header.epoch, header.creation_id, header.signed) == (1, "", False)
    assert path.stat().st_size == header.header_bytes + len(PAYLOAD)


def test_byte_layout(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    header = write_snapshot(path, b"xyz")
    data = path.read_bytes()
    assert data[:8] == b"SBSNAP\r\n"
    assert data[8:10] == b"\x00\x02"
    (length,) = struct.unpack(">I", data[10:14])
    fields = msgpack.unpackb(data[14 : 14 + length])
    assert list(fields) == [
        "tenant",
        "generation",
        "codec",
        "app_version",
        "schema_version",
        "journal_pos",
        "payload_length",
        "checksum",
        "created_at",
        "epoch",
        "creation_id",
        "index",
    ]
    (crc,) = struct.unpack(">I", data[14 + length : 18 + length])
    assert crc == zlib.crc32(data[: 14 + length])
    assert header.header_bytes == 18 + length
    assert data[18 + length :] == b"xyz"
    assert encode(header, b"xyz") == data


def test_read_header_leaves_the_file_at_the_payload(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    written = write_snapshot(path)
    with open(path, "rb") as f:
        header = read_header(f, source=str(path))
        assert f.tell() == header.header_bytes == written.header_bytes
        assert f.read(16) == PAYLOAD[:16]


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_payload_may_be_any_buffer(tmp_path: Path, kind: type) -> None:
    path = tmp_path / "a.snap"
    payload = kind(bytearray(PAYLOAD))
    header = make_header("acme", 1, "msgpack", "1", 1, 0, payload)
    with open(path, "wb", buffering=0) as f:
        write_to(f, header, payload)
    assert read_snapshot(path)[1] == PAYLOAD


def test_empty_payload(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    write_snapshot(path, b"")
    header, payload = read_snapshot(path)
    assert payload == b"" and header.payload_length == 0


def test_write_to_rejects_a_payload_that_does_not_match_its_header(tmp_path: Path) -> None:
    header = header_for(b"abc")
    with open(tmp_path / "a.snap", "wb") as f, pytest.raises(ValueError, match="3"):
        write_to(f, header, b"abcd")


def test_index_and_unknown_keys_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    index = [{"name": "records", "offset": 0, "length": 100,
              "checksum": "blake2b-256:" + "0" * 64, "codec": "msgpack"}]
    write_snapshot(path, index=index, extra={"written_by": "future-1.9", "segments": 1})
    header, _ = read_snapshot(path)
    assert header.index == index
    assert dict(header.extra) == {"written_by": "future-1.9", "segments": 1}
    # A rewrite of the header keeps what an older reader did not understand.
    assert encode_prefix(header) == path.read_bytes()[: header.header_bytes]


def test_extra_keys_may_not_shadow_format_keys() -> None:
    with pytest.raises(ValueError, match="checksum"):
        header_for(b"", extra={"checksum": "x"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"journal_pos": -1}, "'journal_pos' is negative"),
        ({"generation": "7"}, "'generation' is str"),
        ({"schema_version": True}, "'schema_version' is bool"),
        ({"app_version": 2}, "'app_version' is int"),
    ],
)
def test_make_header_refuses_what_the_reader_would_refuse(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        header_for(b"", **change)


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "a/b", "..", "../etc", "a" * 64, "é", "a\n"])
def test_make_header_rejects_bad_tenant_names(name: str) -> None:
    with pytest.raises(InvalidTenantName):
        header_for(b"", tenant=name)
    assert issubclass(InvalidTenantName, ValueError)


def flip_offsets(header_bytes: int, size: int) -> list[int]:
    """Every byte of the prefix, and ~200 payload offsets including both ends."""
    rng = random.Random(99)
    sampled = rng.sample(range(header_bytes, size), 198)
    return [*range(header_bytes), header_bytes, size - 1, *sampled]


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_flip_is_detected(tmp_path: Path, mask: int) -> None:
    good = tmp_path / "good.snap"
    header = write_snapshot(good)
    original = good.read_bytes()
    bad = tmp_path / "bad.snap"
    offsets = flip_offsets(header.header_bytes, len(original))
    assert len(offsets) > header.header_bytes + 190
    for offset in offsets:
        damaged = bytearray(original)
        damaged[offset] ^= mask
        bad.write_bytes(damaged)
        with pytest.raises(SnapshotCorrupt) as caught:
            read_snapshot(bad)
        assert str(bad) in str(caught.value), offset


def test_what_each_kind_of_damage_reports(tmp_path: Path) -> None:
    good = tmp_path / "good.snap"
    header = write_snapshot(good)
    original = good.read_bytes()
    bad = tmp_path / "bad.snap"

    def problem(offset: int) -> str:
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        bad.write_bytes(damaged)
        with pytest.raises(SnapshotCorrupt) as caught:
            read_snapshot(bad)
        return caught.value.problem

    assert "bad magic" in problem(0)
    assert "header CRC mismatch" in problem(9)  # the version byte: a flip, not a newer file
    assert "header CRC mismatch" in problem(20)
    assert "header CRC mismatch" in problem(header.header_bytes - 1)
    assert "payload checksum mismatch" in problem(header.header_bytes + 100)


def test_truncation_at_any_offset_is_detected(tmp_path: Path) -> None:
    good = tmp_path / "good.snap"
    header = write_snapshot(good)
    original = good.read_bytes()
    bad = tmp_path / "bad.snap"
    rng = random.Random(7)
    cuts = [*range(header.header_bytes + 1), *rng.sample(range(len(original)), 200)]
    cuts.append(len(original) - 1)
    for cut in cuts:
        bad.write_bytes(original[:cut])
        with pytest.raises(SnapshotCorrupt, match=r"truncated|empty"):
            read_snapshot(bad)


def test_trailing_bytes_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    write_snapshot(path)
    with open(path, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(SnapshotCorrupt, match="1 trailing bytes"):
        read_snapshot(path)


def test_a_newer_format_version_is_a_version_error(tmp_path: Path) -> None:
    path = tmp_path / "future.snap"
    path.write_bytes(raw_file(3, {"anything": "a version 3 header may hold"}, b"payload"))
    with pytest.raises(SnapshotVersionError, match="version 3 is newer") as caught:
        read_snapshot(path)
    assert caught.value.found == 3 and caught.value.supported == 2


def test_version_zero_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "zero.snap"
    path.write_bytes(raw_file(0, valid_fields()))
    with pytest.raises(SnapshotCorrupt, match="version 0"):
        read_snapshot(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tenant": None}, "'tenant' is missing"),
        ({"checksum": None}, "'checksum' is missing"),
        ({"generation": "7"}, "'generation' is str"),
        ({"journal_pos": True}, "'journal_pos' is bool"),
        ({"payload_length": -1}, "'payload_length' is negative"),
        ({"tenant": "../x"}, "not a valid name"),
        ({"checksum": "md5:00"}, "not 'blake2b-256"),
    ],
)
def test_bad_header_fields_are_corrupt(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    fields = valid_fields()
    for key, value in change.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    path = tmp_path / "a.snap"
    path.write_bytes(raw_file(1, fields))
    with pytest.raises(SnapshotCorrupt, match=message):
        read_snapshot(path)


def test_a_header_that_is_not_a_map_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    packed = msgpack.packb([1, 2])
    head = MAGIC + struct.pack(">HI", 1, len(packed)) + packed
    path.write_bytes(head + struct.pack(">I", zlib.crc32(head)))
    with pytest.raises(SnapshotCorrupt, match="not a map"):
        read_snapshot(path)


def test_an_oversized_header_length_is_corrupt_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    path.write_bytes(MAGIC + struct.pack(">HI", 1, 1024 * 1024 + 1))
    with pytest.raises(SnapshotCorrupt, match="header length 1048577"):
        read_snapshot(path)


def test_not_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is a text file\n")
    with pytest.raises(SnapshotCorrupt, match="bad magic"):
        read_snapshot(path)
    path.write_bytes(b"")
    with pytest.raises(SnapshotCorrupt, match="empty file"):
        read_snapshot(path)
