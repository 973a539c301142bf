"""The command journal: round trips, group commit, torn tails, corruption, real write failures,
and a worker killed with SIGKILL right after its writes were acknowledged."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tenant.journal as journal_mod
from tenant.errors import JournalCorrupt, JournalError, JournalWriteError
from tenant.journal import Journal, JournalRecord, read_records
from tests.conftest import tmpfs

ROOT = Path(__file__).resolve().parent.parent


def segment(journal_dir: Path, first_seq: int) -> Path:
    return journal_dir / f"{first_seq:020d}.journal"


def write_journal(journal_dir: Path, commands: list[tuple[str, dict[str, Any]]], *,
                  next_seq: int = 1, rotate_before: tuple[int, ...] = ()) -> list[int]:
    """Append and await each command in turn; rotate before the listed seqs."""

    async def main() -> list[int]:
        journal = Journal.open(journal_dir, next_seq=next_seq)
        seqs = []
        try:
            for i, (name, args) in enumerate(commands):
                if next_seq + i in rotate_before:
                    journal.rotate()
                seqs.append(await journal.append(name, args, now=1000.0 + i))
        finally:
            await journal.close()
        return seqs

    return asyncio.run(main())


def commands(n: int, start: int = 1) -> list[tuple[str, dict[str, Any]]]:
    return [("put", {"key": f"k{i}", "value": i, "nested": {"n": [i, "x"]}})
            for i in range(start, start + n)]


def test_round_trip_across_rotate(tmp_path: Path) -> None:
    jdir = tmp_path / "tenant" / "journal"  # created on open, parents included
    assert write_journal(jdir, commands(10), rotate_before=(6,)) == list(range(1, 11))
    assert sorted(p.name for p in jdir.iterdir()) == [segment(jdir, 1).name, segment(jdir, 6).name]

    replay = read_records(jdir, after_seq=0)
    assert replay.records == [
        JournalRecord(i, 999.0 + i, "put", {"key": f"k{i}", "value": i, "nested": {"n": [i, "x"]}})
        for i in range(1, 11)
    ]
    assert (replay.last_seq, replay.torn_tail) == (10, None)
    after = read_records(jdir, after_seq=7)
    assert [r.seq for r in after.records] == [8, 9, 10] and after.last_seq == 10

    # Reopen where replay ended and keep going in the same segment.
    assert write_journal(jdir, commands(2, 11), next_seq=11) == [11, 12]
    assert read_records(jdir, after_seq=10).records[-1].args["key"] == "k12"
    assert len(list(jdir.iterdir())) == 2


def test_missing_directory_is_an_empty_journal(tmp_path: Path) -> None:
    replay = read_records(tmp_path / "nothing", after_seq=5)
    assert (replay.records, replay.last_seq, replay.torn_tail) == ([], 5, None)


def test_open_refuses_to_reuse_seqs(tmp_path: Path) -> None:
    write_journal(tmp_path, commands(3))
    with pytest.raises(JournalError, match="up to seq 3"):
        Journal.open(tmp_path, next_seq=2)


def test_snapshot_ahead_of_journal_starts_a_new_segment(tmp_path: Path) -> None:
    # Seqs 4-5 were in the page cache at a machine crash but made it into the snapshot.
    write_journal(tmp_path, commands(3))
    assert write_journal(tmp_path, commands(1, 6), next_seq=6) == [6]
    assert segment(tmp_path, 6).exists()
    assert [r.seq for r in read_records(tmp_path, after_seq=5).records] == [6]
    with pytest.raises(JournalCorrupt, match=r"starts at seq 6 .* covers only up to 3"):
        read_records(tmp_path, after_seq=3)


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    writers, rounds = 64, 8

    async def main() -> tuple[list[int], int, int]:
        journal = Journal.open(tmp_path, next_seq=1)
        try:
            async def writer(w: int) -> list[int]:
                return [await journal.append("put", {"w": w, "i": i}, now=0.0)
                        for i in range(rounds)]

            results = await asyncio.gather(*(writer(w) for w in range(writers)))
            assert journal.durable_seq == writers * rounds
        finally:
            await journal.close()
        stats = journal.stats
        return [s for seqs in results for s in seqs], stats.appends, stats.fsyncs

    seqs, appends, fsyncs = asyncio.run(main())
    assert sorted(seqs) == list(range(1, writers * rounds + 1))
    assert appends == writers * rounds
    assert 1 <= fsyncs < appends / 4
    assert len(read_records(tmp_path, 0).records) == writers * rounds


def test_a_lone_writer_is_acknowledged_by_its_own_fsync_on_the_loop(tmp_path: Path) -> None:
    """Leader-based group commit: one writer, one fsync per append, no batch left waiting,
    and a rotation between an append and its queued fsync loses nothing."""
    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=1)
        try:
            for i in range(1, 21):
                assert await journal.append("put", {"i": i}, now=0.0) == i
                assert journal.durable_seq == i
            assert journal.stats.fsyncs == 20
            queued = journal.append("put", {"i": 21}, now=0.0)  # its fsync is queued
            journal.rotate()  # fsyncs segment 1 now; the queued fsync covers segment 22
            after = journal.append("put", {"i": 22}, now=0.0)
            assert await asyncio.gather(queued, after) == [21, 22]
            assert journal.durable_seq == 22
        finally:
            await journal.close()

    asyncio.run(main())
    assert [r.args["i"] for r in read_records(tmp_path, 0).records] == list(range(1, 23))


def test_rotate_while_an_fsync_is_running(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches go to the fsync thread (as after a slow fsync), so one is in flight here.
    monkeypatch.setattr(journal_mod, "INLINE_FSYNC_MAX_S", -1.0)

    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=1)
        try:
            first = [journal.append("put", {"i": i}, now=0.0) for i in range(1, 21)]
            await asyncio.sleep(0)  # the flusher starts its fsync of segment 1
            late = [journal.append("put", {"i": i}, now=0.0) for i in range(21, 31)]
            assert journal._syncing  # the fsync runs until this step ends, whatever the disk
            journal.rotate()  # seqs 21-30 are in segment 1 but not covered by that fsync
            newer = [journal.append("put", {"i": i}, now=0.0) for i in range(31, 41)]
            assert await asyncio.gather(*first, *late, *newer) == list(range(1, 41))
            assert journal.durable_seq == 40
        finally:
            await journal.close()

    asyncio.run(main())
    assert [p.name for p in sorted(tmp_path.iterdir())] == [segment(tmp_path, 1).name,
                                                             segment(tmp_path, 31).name]
    assert [r.args["i"] for r in read_records(tmp_path, 0).records] == list(range(1, 41))


def test_relaxed_policies(tmp_path: Path) -> None:
    async def main(policy: str) -> tuple[bool, int]:
        journal = Journal.open(tmp_path / policy, next_seq=1, fsync_policy=policy)
        future = journal.append("put", {"a": 1}, now=0.0)
        resolved_at_once = future.done()
        await journal.close()
        return resolved_at_once, journal.stats.fsyncs

    assert asyncio.run(main("everysec")) == (True, 1)  # the fsync at close
    assert asyncio.run(main("never")) == (True, 0)
    for policy in ("everysec", "never"):
        assert len(read_records(tmp_path / policy, 0).records) == 1
    with pytest.raises(ValueError, match="fsync_policy"):
        Journal.open(tmp_path, next_seq=1, fsync_policy="sometimes")


class FsyncSpy:
    """Records which thread fsyncs what; fails the first `fail_first` calls with EIO."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> None:
        self.calls: list[str] = []
        self.fail_first = fail_first
        self.real = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        self.calls.append(threading.current_thread().name)
        if len(self.calls) <= self.fail_first:
            raise OSError(errno.EIO, "injected fsync failure")
        self.real(fd)


def test_open_leaves_the_fsync_of_existing_records_to_the_fsync_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_journal(tmp_path, commands(3))
    spy = FsyncSpy(monkeypatch)

    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=4)
        assert threading.current_thread().name not in spy.calls  # the start did not wait
        deadline = time.monotonic() + 10
        while journal.durable_seq < 3:
            assert time.monotonic() < deadline, "the background fsync never finished"
            await asyncio.sleep(0.001)
        assert spy.calls == ["journal-fsync_0"] and journal.stats.fsyncs == 1
        assert await journal.append("next", {}, now=0.0) == 4
        assert journal.durable_seq == 4
        await journal.close()

    asyncio.run(main())
    assert [r.seq for r in read_records(tmp_path, 0).records] == [1, 2, 3, 4]


def test_a_failed_background_fsync_at_open_is_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_journal(tmp_path, commands(3))
    spy = FsyncSpy(monkeypatch, fail_first=1)

    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=4)
        # The write goes out, and its own fsync succeeds; it is still not acknowledged,
        # since the fsync before it failed (a retry may report success over lost pages).
        with pytest.raises(JournalWriteError, match="injected"):
            await journal.append("next", {}, now=0.0)
        assert journal.durable_seq == 0
        with pytest.raises(JournalWriteError):
            journal.append("later", {}, now=0.0)
        with pytest.raises(JournalWriteError):
            journal.rotate()
        await journal.close()  # already broken and reported: close does not raise again

    asyncio.run(main())
    assert spy.calls[0] == "journal-fsync_0"


def test_a_failed_background_fsync_is_reported_by_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_journal(tmp_path, commands(2))
    FsyncSpy(monkeypatch, fail_first=1)

    async def main() -> None:
        journal = Journal.open(tmp_path, next_seq=3)
        with pytest.raises(JournalWriteError, match="injected"):
            await journal.close()

    asyncio.run(main())


def test_open_fsyncs_a_truncated_torn_tail_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_journal(tmp_path, commands(3))
    path = segment(tmp_path, 1)
    os.truncate(path, path.stat().st_size - 2)
    spy = FsyncSpy(monkeypatch)
    journal = Journal.open(tmp_path, next_seq=3)
    assert spy.calls == [threading.current_thread().name]
    assert journal.durable_seq == 2
    asyncio.run(journal.close())


def test_torn_last_record_at_every_offset(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    write_journal(clean, commands(4))
    good_end = segment(clean, 1).stat().st_size
    write_journal(clean, commands(1, 5), next_seq=5)
    full_size = segment(clean, 1).stat().st_size

    for cut in range(good_end, full_size):
        jdir = tmp_path / f"cut{cut}"
        shutil.copytree(clean, jdir)
        path = segment(jdir, 1)
        os.truncate(path, cut)

        replay = read_records(jdir, after_seq=0)
        assert [r.seq for r in replay.records] == [1, 2, 3, 4]
        assert replay.last_seq == 4
        assert replay.torn_tail == (None if cut == good_end else (path, good_end))

        assert write_journal(jdir, [("again", {"cut": cut})], next_seq=5) == [5]
        after = read_records(jdir, after_seq=0)
        assert after.torn_tail is None
        assert [(r.seq, r.name) for r in after.records][-2:] == [(4, "put"), (5, "again")]
        shutil.rmtree(jdir)


def test_damaged_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    write_journal(tmp_path, commands(3))
    path = segment(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    replay = read_records(tmp_path, 0)
    assert [r.seq for r in replay.records] == [1, 2] and replay.torn_tail is not None

    # Some file systems leave zeros where an unsynced append was going to be.
    write_journal(tmp_path, commands(1, 3), next_seq=3)  # open truncated the damaged record
    end = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(300))
    replay = read_records(tmp_path, 0)
    assert [r.seq for r in replay.records] == [1, 2, 3] and replay.torn_tail == (path, end)


def test_flipped_byte_in_a_middle_record_raises(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    write_journal(clean, commands(2))
    start = segment(clean, 1).stat().st_size
    write_journal(clean, commands(1, 3), next_seq=3)
    end = segment(clean, 1).stat().st_size
    write_journal(clean, commands(2, 4), next_seq=4)
    original = segment(clean, 1).read_bytes()

    for offset in range(start, end):  # every byte of record 3, length and CRC included
        damaged = bytearray(original)
        damaged[offset] ^= 0x41
        segment(clean, 1).write_bytes(bytes(damaged))
        with pytest.raises(JournalCorrupt) as caught:
            read_records(clean, after_seq=0)
        assert segment(clean, 1).name in str(caught.value)
        assert f"offset {start}" in str(caught.value) and "seq 3" in str(caught.value)
        with pytest.raises(JournalCorrupt):
            Journal.open(clean, next_seq=6)  # never appends after damage


def test_damaged_record_in_an_older_segment_raises(tmp_path: Path) -> None:
    write_journal(tmp_path, commands(6), rotate_before=(4,))
    path = segment(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the last record of a segment that is not the last one
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="seq 3"):
        read_records(tmp_path, after_seq=0)
    assert [r.seq for r in read_records(tmp_path, after_seq=3).records] == [4, 5, 6]


def test_header_mismatch_raises(tmp_path: Path) -> None:
    write_journal(tmp_path, commands(2))
    segment(tmp_path, 1).rename(segment(tmp_path, 7))
    with pytest.raises(JournalCorrupt, match="file name says 7"):
        read_records(tmp_path, after_seq=6)


def test_gaps_raise(tmp_path: Path) -> None:
    write_journal(tmp_path, commands(9), rotate_before=(4, 7))
    segment(tmp_path, 4).unlink()
    with pytest.raises(JournalCorrupt, match="expected 4"):
        read_records(tmp_path, after_seq=0)
    assert [r.seq for r in read_records(tmp_path, after_seq=6).records] == [7, 8, 9]
    segment(tmp_path, 1).unlink()
    with pytest.raises(JournalCorrupt, match=r"starts at seq 7 .* covers only up to 2"):
        read_records(tmp_path, after_seq=2)


def test_prune_keeps_what_the_snapshot_does_not_cover(tmp_path: Path) -> None:
    async def main() -> list[list[str]]:
        journal = Journal.open(tmp_path, next_seq=1)
        try:
            for i in range(1, 10):
                if i in (4, 7):
                    journal.rotate()
                await journal.append("put", {"i": i}, now=0.0)
            return [[p.name for p in journal.prune(covered)] for covered in (5, 6, 100)]
        finally:
            await journal.close()

    assert asyncio.run(main()) == [[segment(tmp_path, 1).name], [segment(tmp_path, 4).name], []]
    assert [p.name for p in tmp_path.iterdir()] == [segment(tmp_path, 7).name]
    assert [r.seq for r in read_records(tmp_path, after_seq=6).records] == [7, 8, 9]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "tiny", "64k",
               otherwise="test_write_failure_past_file_size_limit covers write failures") as mount:
        yield mount


def test_full_disk_fails_pending_and_later_appends(tiny_tmpfs: Path) -> None:
    jdir = tiny_tmpfs / "journal"

    async def main() -> None:
        journal = Journal.open(jdir, next_seq=1)
        try:
            assert await journal.append("first", {}, now=0.0) == 1  # durable before the disk fills
            pending = []
            with pytest.raises(JournalWriteError) as caught:
                for _ in range(200):  # 200 x 4 KB is far past 64 KB
                    pending.append(journal.append("put", {"blob": "x" * 4000}, now=0.0))
            assert isinstance(caught.value.__cause__, OSError)
            assert pending and not any(f.done() and not f.exception() for f in pending)
            for future in pending:
                with pytest.raises(JournalWriteError):
                    await future
            with pytest.raises(JournalWriteError):
                journal.append("later", {}, now=0.0)
            with pytest.raises(JournalWriteError):
                journal.rotate()
        finally:
            await journal.close()

    asyncio.run(main())
    replay = read_records(jdir, after_seq=0)  # a partial record at the end is only a torn tail
    assert replay.records[0].name == "first"


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_write_failure_past_file_size_limit(tmp_path: Path) -> None:
    done = run_python("""
        import asyncio, resource, signal, sys
        from tenant.errors import JournalWriteError
        from tenant.journal import Journal

        async def main():
            journal = Journal.open(sys.argv[1], next_seq=1)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
            resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
            pending = []
            try:
                for _ in range(200):
                    pending.append(journal.append("put", {"blob": "x" * 4000}, now=0.0))
            except JournalWriteError as exc:
                print("append failed:", type(exc.__cause__).__name__, exc.__cause__.errno)
            failed = 0
            for future in pending:
                try:
                    await future
                except JournalWriteError:
                    failed += 1
            print("pending failed:", failed, "of", len(pending))
            try:
                journal.append("later", {}, now=0.0)
            except JournalWriteError:
                print("later append failed")
            await journal.close()

        asyncio.run(main())
        """, str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "append failed: OSError 27"  # EFBIG
    count = int(lines[1].split()[2])
    assert count > 0 and lines[1] == f"pending failed: {count} of {count}"
    assert lines[2] == "later append failed"


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    done = run_python("""
        import asyncio, os, signal, sys
        from tenant.journal import Journal

        async def main():
            journal = Journal.open(sys.argv[1], next_seq=1)

            async def writer(w):
                for i in range(25):
                    seq = await journal.append("put", {"w": w, "i": i}, now=float(i))
                    print(seq, w, i, flush=True)  # acknowledged: printed only once durable

            await asyncio.gather(*(writer(w) for w in range(16)))
            for i in range(100):  # in flight, never acknowledged, when the kill lands
                journal.append("late", {"i": i}, now=0.0)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """, str(tmp_path))
    assert done.returncode == -9, done.stderr
    acked = [tuple(map(int, line.split())) for line in done.stdout.splitlines()]
    assert len(acked) == 16 * 25

    replay = read_records(tmp_path, after_seq=0)
    by_seq = {r.seq: r for r in replay.records}
    for seq, w, i in acked:
        assert by_seq[seq].name == "put" and by_seq[seq].args == {"w": w, "i": i}
    assert [r.seq for r in replay.records] == list(range(1, replay.last_seq + 1))
