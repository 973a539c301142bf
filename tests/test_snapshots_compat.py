"""Files written by format versions 1 and 2 must load, exactly, in every later version of the
code.

The fixtures were written once by tests/fixtures/snapshots/make_fixtures.py and committed.
The expected state is spelled out here on purpose, not imported from that script: this test
is the record of what those bytes mean. If it fails, the change broke old snapshots; fix the
code, never the fixture.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from snapshots.codec import get_codec
from snapshots.errors import SnapshotNotSigned
from snapshots.format import authenticate, read_snapshot
from snapshots.inspect import check, describe, verify
from snapshots.mac import load_key

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "snapshots"

CHECKSUMS = {
    "msgpack": "blake2b-256:2d6ff90634661d9e5b8a69e6998d5b96ad354a0947d568a60d7d362e8b7130dd",
    "pickle": "blake2b-256:6988a90d708ce0cbfe35959463ef13573613438d9b2604e69c6760a1d974486b",
}

EXPECTED: dict[Any, Any] = {
    "format": "switchboard snapshot compatibility fixture",
    "records": {
        1: {
            "name": "Ann",
            "joined": dt.datetime(2021, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC),
            "balance": Decimal("1234.50"),
            "tags": {"admin", "staff", "ops"},
        },
        2: {
            "name": "Bob",
            "joined": dt.datetime(2022, 12, 31, 23, 59, 59),
            "balance": Decimal("-0.01"),
            "tags": set(),
        },
    },
    "ids": [uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), uuid.UUID(int=1)],
    "point": (1, 2.5, ("nested", None)),
    (2024, "q1"): frozenset({"a", "b"}),
    "blob": b"\x00\x01\xfe\xff",
    "when": {
        "date": dt.date(2024, 2, 29),
        "time": dt.time(12, 30, 15, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        "ttl": dt.timedelta(days=1, seconds=30, microseconds=7),
        "ist": dt.datetime(2020, 1, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    },
    "big": 2**80,
    "flags": [True, False, None],
    "ratio": 0.1,
    "mixed_set": {1, "one", (1, "one")},
}


def assert_identical(a: Any, b: Any, where: str = "state") -> None:
    """Equal, with the same types all the way down, and the same UTC offsets."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys or their order differ"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, Decimal):
        assert str(a) == str(b), where
    elif isinstance(a, dt.datetime | dt.time):
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), where
        assert a.utcoffset() == b.utcoffset(), where
    else:
        assert a == b, where
        if isinstance(a, set | frozenset):
            assert sorted(map(repr, a)) == sorted(map(repr, b)), where


@pytest.mark.parametrize("codec", ["msgpack", "pickle"])
def test_version_1_fixture_loads_exactly(codec: str) -> None:
    path = FIXTURES / f"v1-{codec}.snap"
    header, payload = read_snapshot(path)
    assert header.format_version == 1
    assert header.tenant == "compat-fixture"
    assert header.generation == 1
    assert header.codec == codec
    assert header.app_version == "fixture-1"
    assert header.schema_version == 1
    assert header.journal_pos == 42
    assert header.created_at == 1_700_000_000.25
    assert header.index is None
    assert dict(header.extra) == {}
    assert header.checksum == CHECKSUMS[codec]
    assert header.header_bytes + header.payload_length == path.stat().st_size
    assert_identical(get_codec(header.codec).loads(payload), EXPECTED)


@pytest.mark.parametrize("codec", ["msgpack", "pickle"])
def test_version_1_fixture_inspects_and_verifies(codec: str) -> None:
    path = FIXTURES / f"v1-{codec}.snap"
    verify(path)
    info = describe(path)
    assert info["valid"] is True and info["tenant"] == "compat-fixture"
    if codec == "msgpack":
        assert info["summary"]["counts"] == {
            "records": 2,
            "ids": 2,
            "point": 3,
            "when": 4,
            "flags": 3,
            "mixed_set": 3,
            "(2024, 'q1')": 2,
        }


# --- format version 2: signed -----------------------------------------------------------------

FIXTURE_KEY = load_key(FIXTURES / "fixture.key")  # a test key, committed with the fixtures


@pytest.mark.parametrize("codec", ["msgpack", "pickle"])
def test_version_2_fixture_loads_exactly_and_is_signed(codec: str) -> None:
    path = FIXTURES / f"v2-{codec}.snap"
    header, payload = read_snapshot(path)
    assert header.format_version == 2 and header.signed
    assert header.tenant == "compat-fixture" and header.generation == 1
    assert header.codec == codec and header.app_version == "fixture-1"
    assert (header.schema_version, header.journal_pos) == (1, 42)
    assert header.created_at == 1_700_000_000.25
    assert (header.epoch, header.creation_id, header.index) == (7, "fixture-creation-1", [])
    assert dict(header.extra) == {}
    assert header.checksum == CHECKSUMS[codec]  # the same payload bytes as version 1
    assert header.header_bytes + header.payload_length == path.stat().st_size
    assert authenticate(header, FIXTURE_KEY, str(path)) is True
    with pytest.raises(SnapshotNotSigned, match="not signed by this deployment"):
        authenticate(header, b"another deployment's key", str(path))
    assert_identical(get_codec(header.codec).loads(payload), EXPECTED)


@pytest.mark.parametrize("codec", ["msgpack", "pickle"])
def test_fixtures_verify_as_signed_or_unsigned(codec: str) -> None:
    assert check(FIXTURES / f"v2-{codec}.snap", FIXTURE_KEY).summary == "OK (signed)"
    assert check(FIXTURES / f"v2-{codec}.snap", b"other").status == "not_signed"
    v1 = check(FIXTURES / f"v1-{codec}.snap", FIXTURE_KEY)
    # Unsigned msgpack restores (it runs no code); unsigned pickle would run code.
    assert v1.status == ("unsigned" if codec == "msgpack" else "not_signed")
