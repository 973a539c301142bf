"""Journal segments written by format versions 1 and 2 must replay, exactly, in every later
version.

The fixtures (tests/fixtures/journal/v1/ and v2/, two segments each holding seqs 5-8 and 9-11;
v2 signed for tenant "acme" with tests/fixtures/snapshots/fixture.key) were written once by
tests/fixtures/journal/make_fixtures.py and committed. The records are spelled out here
on purpose, not imported from that script: this test is the record of what those bytes mean.
If it fails, the change broke old journals; fix the code, never the fixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from contract.worker import WorkerSpec
from snapshots.codec import get_codec
from snapshots.mac import WriterIdentity, load_key
from snapshots.store import LocalStore
from tenant.errors import JournalCorrupt
from tenant.journal import Journal, JournalSigning, read_records
from tenant.runtime import restore

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "journal" / "v1"
FIXTURE_V2 = FIXTURES / "journal" / "v2"
FIXTURE_KEY = load_key(FIXTURES / "snapshots" / "fixture.key")  # a test key, committed
SIGNING = JournalSigning("acme", WriterIdentity(key=FIXTURE_KEY, epoch=7,
                                                creation_id="fixture-creation-1"))
SHA256_V2 = {
    "00000000000000000005.journal":
        "5e8d3c11a0585f1d42ee6504fa7f9a5f2a2411cc4c56279dc4438ab4d972f214",
    "00000000000000000009.journal":
        "c7a97670a93edc088f4d25c3abf2deae862c41f671b5c5ea336c1c0e43dd3e68",
}

SHA256 = {
    "00000000000000000005.journal":
        "cc17fd182def06df8f6c055a3ee902c349c1b66961c02ab262681802190e0557",
    "00000000000000000009.journal":
        "58f85f1279ce0b0b51239600bcf2448196712263d637491c0d614f412042cde4",
}

SESSION = "s" * 43
EXPECTED: list[tuple[int, float, str, dict[str, Any]]] = [
    (5, 1700000000.5, "create_record", {"table": "people", "fields": {"name": "Ann", "age": 41}}),
    (6, 1700000001.25, "create_record",
     {"table": "people", "fields": {"name": "Bøb ☃", "tags": ["a", None]}}),
    (7, 1700000002.0, "update_record",
     {"table": "people", "id": 1, "fields": {"age": None, "ok": True}}),
    (8, 1700000003.0, "login", {"user": "ann", "session_id": SESSION}),
    (9, 1700000004.75, "create_record",
     {"table": "x", "fields": {"big": 2**62, "neg": -7, "f": 0.1, "empty": {},
                               "list": [1, [2, [3]]]}}),
    (10, 1700000005.0, "delete_record", {"table": "people", "id": 2}),
    (11, 1700000006.0, "logout", {"session_id": SESSION}),
]


def as_tuples(records: list[Any]) -> list[tuple[int, float, str, dict[str, Any]]]:
    return [(r.seq, r.now, r.name, r.args) for r in records]


def test_the_fixture_files_are_unchanged() -> None:
    found = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in FIXTURE.iterdir()}
    assert found == SHA256


def test_v1_segments_replay_exactly() -> None:
    replay = read_records(FIXTURE, after_seq=4)
    assert as_tuples(replay.records) == EXPECTED
    assert replay.last_seq == 11 and replay.torn_tail is None
    # From a later snapshot position: the first segment is skipped, the rest filtered.
    assert as_tuples(read_records(FIXTURE, after_seq=9).records) == EXPECTED[5:]


def test_appending_to_a_v1_journal_continues_its_seqs(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    shutil.copytree(FIXTURE, directory)

    async def append() -> int:
        journal = Journal.open(directory, next_seq=12)
        seq = await journal.append("create_record", {"table": "x", "fields": {}}, now=1.0)
        await journal.close()
        return seq

    assert asyncio.run(append()) == 12
    assert [r.seq for r in read_records(directory, after_seq=4).records] == list(range(5, 13))
    assert len(list(directory.iterdir())) == 2  # appended to the v1 segment, no new one


def test_a_v1_journal_restores_the_demo_app(tmp_path: Path) -> None:
    """Old journals replay through today's demo commands: the commands' meaning is part of
    the format too."""
    from examples.dabble import app

    shutil.copytree(FIXTURE, tmp_path / "tenants" / "acme" / "journal")
    LocalStore.in_data_dir(tmp_path).save(
        "acme", get_codec("msgpack").dumps(app.initial_state()), codec="msgpack",
        app_version="1.0", schema_version=1, journal_pos=4,
    )
    spec = WorkerSpec(tenant="acme", port=0, data_dir=str(tmp_path), app="examples.dabble:app")
    restored = restore(app, spec, LocalStore.in_data_dir(tmp_path))
    asyncio.run(restored.journal.close())
    state = restored.context.state
    assert restored.context.journal_pos == 11
    people = state["tables"]["people"]["records"]
    assert list(people) == [1]
    assert people[1]["fields"] == {"name": "Ann", "ok": True}
    assert people[1]["updated_at"] == 1700000002.0
    assert state["tables"]["x"]["records"][1]["fields"]["big"] == 2**62
    assert state["sessions"] == {}


# --- format version 2: signed -----------------------------------------------------------------


def test_the_v2_fixture_files_are_unchanged() -> None:
    found = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in FIXTURE_V2.iterdir()}
    assert found == SHA256_V2


def test_v2_segments_replay_exactly_under_their_key_only() -> None:
    replay = read_records(FIXTURE_V2, after_seq=4, signing=SIGNING)
    assert as_tuples(replay.records) == EXPECTED
    assert replay.last_seq == 11 and replay.torn_tail is None
    assert as_tuples(read_records(FIXTURE_V2, after_seq=9, signing=SIGNING).records) == EXPECTED[5:]
    other = JournalSigning("acme", WriterIdentity(key=b"another deployment"))
    for signing in (None, other, JournalSigning("other", SIGNING.identity)):
        with pytest.raises(JournalCorrupt):
            read_records(FIXTURE_V2, after_seq=4, signing=signing)


def test_a_signed_journal_never_continues_an_unsigned_segment(tmp_path: Path) -> None:
    """A worker with a key on a v1 journal (a deployment upgraded to signing): the new records
    go to a new signed segment; the v1 records before it still replay, the other way round is
    refused."""
    directory = tmp_path / "journal"
    shutil.copytree(FIXTURE, directory)

    async def append() -> int:
        journal = Journal.open(directory, next_seq=12, signing=SIGNING)
        seq = await journal.append("create_record", {"table": "x", "fields": {}}, now=1.0)
        await journal.close()
        return seq

    assert asyncio.run(append()) == 12
    assert len(list(directory.iterdir())) == 3
    assert [r.seq for r in read_records(directory, after_seq=4, signing=SIGNING).records] == \
        list(range(5, 13))
    strict = JournalSigning("acme", SIGNING.identity, accept_unsigned=False)
    with pytest.raises(JournalCorrupt, match="unsigned"):
        read_records(directory, after_seq=4, signing=strict)  # e.g. after a signed snapshot
    assert [r.seq for r in read_records(directory, after_seq=11, signing=strict).records] == [12]
