"""Journal segments written by format version 1 must replay, exactly, in every later version.

The fixture (tests/fixtures/journal/v1/, two segments holding seqs 5-8 and 9-11) was written
once by tests/fixtures/journal/make_fixtures.py and committed. The records are spelled out here
on purpose, not imported from that script: this test is the record of what those bytes mean.
If it fails, the change broke old journals; fix the code, never the fixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

from contract.worker import WorkerSpec
from snapshots.codec import get_codec
from snapshots.store import LocalStore
from tenant.journal import Journal, read_records
from tenant.runtime import restore

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "journal" / "v1"

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
