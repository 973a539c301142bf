"""describe and verify, as `switchboard snapshot inspect|verify` shows them to an operator."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from snapshots.codec import MsgpackCodec
from snapshots.errors import CodecError, SnapshotCorrupt
from snapshots.format import make_header, write_to
from snapshots.inspect import MAX_SUMMARY_KEYS, describe, summarize, verify


def write(path: Path, payload: bytes, codec: str = "msgpack", **extra: Any) -> None:
    header = make_header(
        "acme", 4, codec, "2.1", 5, 777, payload, created_at=1_700_000_000.0, extra=extra
    )
    with open(path, "wb") as f:
        write_to(f, header, payload)


STATE = {
    "records": {1: {"name": "a"}, 2: {"name": "b"}, 3: {"name": "c"}},
    "sessions": {"s1": "ann"},
    "tags": {"x", "y"},
    "seq": 42,
    "started": dt.datetime(2024, 1, 1),
}


def test_describe_a_msgpack_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    payload = MsgpackCodec().dumps(STATE)
    write(path, payload, note=b"\x01")
    info = describe(path)
    json.dumps(info)  # what `--json` prints
    assert info["path"] == str(path)
    assert info["file_size"] == path.stat().st_size
    assert info["payload_length"] == info["payload_size"] == len(payload)
    assert info["header_bytes"] + len(payload) == info["file_size"]
    assert info["tenant"] == "acme" and info["generation"] == 4 and info["codec"] == "msgpack"
    assert info["app_version"] == "2.1" and info["schema_version"] == 5
    assert info["journal_pos"] == 777 and info["format_version"] == 2
    assert info["created_at_utc"] == "2023-11-14T22:13:20+00:00"
    assert info["checksum"].startswith("blake2b-256:")
    assert info["index"] == [] and info["extra"] == {"note": "01"}
    assert info["valid"] is True and info["problem"] is None
    assert info["summary"] == {
        "root_type": "dict",
        "length": 5,
        "counts": {"records": 3, "sessions": 1, "tags": 2},
        "types": {
            "records": "dict",
            "sessions": "dict",
            "tags": "set",
            "seq": "int",
            "started": "datetime",
        },
    }


class Boom:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def test_pickle_payloads_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "p.snap"
    write(path, pickle.dumps(Boom(str(marker)), protocol=5), codec="pickle")
    info = describe(path)
    verify(path)
    assert info["summary"] == "pickle payload not decoded"
    assert info["valid"] is True
    assert not marker.exists()


def test_describe_reports_a_bad_payload_with_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    write(path, MsgpackCodec().dumps(STATE))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(data)
    info = describe(path)
    assert info["valid"] is False and "checksum mismatch" in info["problem"]
    assert info["tenant"] == "acme" and info["summary"] is None
    with pytest.raises(SnapshotCorrupt, match="checksum mismatch"):
        verify(path)


def test_describe_raises_when_the_header_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    write(path, b"\x90")
    data = bytearray(path.read_bytes())
    data[30] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(SnapshotCorrupt, match="header CRC"):
        describe(path)
    with pytest.raises(SnapshotCorrupt, match="header CRC"):
        verify(path)


def test_verify_checks_that_msgpack_decodes(tmp_path: Path) -> None:
    good = tmp_path / "good.snap"
    write(good, MsgpackCodec().dumps(STATE))
    verify(good)  # raises on any problem
    # A checksum-valid payload that is not msgpack: a writer bug, caught before a restore.
    bad = tmp_path / "bad.snap"
    write(bad, b"\xc1\xc1")
    with pytest.raises(CodecError, match=str(bad)):
        verify(bad)
    info = describe(bad)
    assert info["valid"] is False and "msgpack" in info["problem"]


def test_verify_rejects_trailing_bytes_and_unknown_codecs(tmp_path: Path) -> None:
    path = tmp_path / "a.snap"
    write(path, b"\x90")
    with open(path, "ab") as f:
        f.write(b"junk")
    with pytest.raises(SnapshotCorrupt, match="4 trailing bytes"):
        verify(path)
    odd = tmp_path / "odd.snap"
    write(odd, b"\x90", codec="cbor")
    with pytest.raises(CodecError, match="unknown codec 'cbor'"):
        verify(odd)
    assert describe(odd)["valid"] is False


def test_summaries_of_other_roots() -> None:
    assert summarize([1, "a", 2]) == {
        "root_type": "list",
        "length": 3,
        "element_types": {"int": 2, "str": 1},
    }
    assert summarize(5) == {"root_type": "int"}
    wide = summarize({i: [i] for i in range(MAX_SUMMARY_KEYS + 5)})
    assert wide["length"] == MAX_SUMMARY_KEYS + 5
    assert len(wide["counts"]) == MAX_SUMMARY_KEYS and wide["keys_not_shown"] == 5
