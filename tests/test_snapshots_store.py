"""LocalStore: generations, pruning, falling back past damage, and failed writes."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest

from snapshots.codec import MsgpackCodec
from snapshots.errors import (
    CodecError,
    InvalidTenantName,
    NoValidSnapshot,
    SnapshotVersionError,
    SnapshotWriteError,
)
from snapshots.format import MAGIC, read_snapshot
from snapshots.mac import WriterIdentity
from snapshots.store import LocalStore, SnapshotInfo
from tests.conftest import tmpfs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODEC = MsgpackCodec()


def state(n: int) -> dict[str, Any]:
    return {
        "records": {i: {"name": f"r{i}", "at": dt.datetime(2024, 1, 1), "n": i} for i in range(n)},
        "sessions": {"s1": ("ann", Decimal("1.5"))},
        "version": n,
    }


def save(store: LocalStore, n: int, tenant: str = "acme", **kw: Any) -> SnapshotInfo:
    args: dict[str, Any] = {
        "codec": "msgpack",
        "app_version": "1.0",
        "schema_version": 1,
        "journal_pos": n * 10,
    }
    args.update(kw)
    return store.save(tenant, CODEC.dumps(state(n)), **args)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(data)


def snapshot_files(store: LocalStore, tenant: str = "acme") -> list[str]:
    return sorted(p.name for p in store.snapshot_dir(tenant).iterdir())


def test_generations_count_up_and_load_the_newest(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    infos = [save(store, n) for n in (1, 2, 3)]
    assert [i.generation for i in infos] == [1, 2, 3]
    assert infos[2].path == tmp_path / "tenants" / "acme" / "snapshots" / "000000000003.snap"
    assert infos[2].size == infos[2].path.stat().st_size
    assert stat.S_IMODE(infos[2].path.stat().st_mode) == 0o600
    listed = store.generations("acme")
    assert [i.generation for i in listed] == [3, 2, 1]
    assert all(i.header is not None and i.problem is None for i in listed)
    loaded = store.load_newest_valid("acme")
    assert loaded is not None
    assert loaded.header.generation == 3 and loaded.header.journal_pos == 30
    assert loaded.path == infos[2].path and loaded.skipped == []
    assert CODEC.loads(loaded.payload) == state(3)


def test_prunes_beyond_keep_generations_oldest_first(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path, keep_generations=3)
    infos = [save(store, n) for n in range(1, 6)]
    assert [i.pruned for i in infos] == [(), (), (), (1,), (2,)]
    assert snapshot_files(store) == [f"{g:012d}.snap" for g in (3, 4, 5)]
    assert store.oldest_kept_journal_pos("acme") == 30


def test_keep_one_generation(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path, keep_generations=1)
    save(store, 1)
    assert save(store, 2).pruned == (1,)
    assert snapshot_files(store) == ["000000000002.snap"]
    with pytest.raises(ValueError):
        LocalStore.in_data_dir(tmp_path, keep_generations=0)


def test_no_snapshot_at_all_is_none(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    assert store.load_newest_valid("acme") is None
    assert store.generations("acme") == []
    assert store.oldest_kept_journal_pos("acme") is None
    store.snapshot_dir("acme").mkdir(parents=True)
    assert store.load_newest_valid("acme") is None


def test_a_corrupt_newest_generation_falls_back_and_says_so(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    save(store, 2)
    newest = save(store, 3).path
    flip_byte(newest, newest.stat().st_size - 10)
    loaded = store.load_newest_valid("acme")
    assert loaded is not None
    assert loaded.header.generation == 2
    assert CODEC.loads(loaded.payload) == state(2)
    assert len(loaded.skipped) == 1
    assert loaded.skipped[0][0] == str(newest)
    assert "checksum mismatch" in loaded.skipped[0][1]


def test_a_torn_newest_generation_falls_back(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    newest = save(store, 500).path
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    loaded = store.load_newest_valid("acme")
    assert loaded is not None and loaded.header.generation == 1
    assert "truncated" in loaded.skipped[0][1]
    headerless = [i for i in store.generations("acme") if i.header is None]
    assert headerless == []  # the header survived the tear; only the payload is short


def test_all_generations_corrupt_is_no_valid_snapshot(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    paths = [save(store, n).path for n in (1, 2, 3)]
    flip_byte(paths[0], 0)  # magic
    flip_byte(paths[1], 20)  # header
    flip_byte(paths[2], paths[2].stat().st_size - 1)  # payload
    with pytest.raises(NoValidSnapshot) as caught:
        store.load_newest_valid("acme")
    failures = dict(caught.value.failures)
    assert list(failures) == [str(p) for p in reversed(paths)]
    assert "checksum mismatch" in failures[str(paths[2])]
    assert "header CRC mismatch" in failures[str(paths[1])]
    assert "bad magic" in failures[str(paths[0])]
    assert caught.value.tenant == "acme"
    listed = {i.generation: i for i in store.generations("acme")}
    assert listed[1].header is None and listed[1].problem and "bad magic" in listed[1].problem
    # Only gen 3's header reads; the others could never be restored from.
    assert store.oldest_kept_journal_pos("acme") == 30


def test_a_file_naming_another_tenant_is_never_loaded(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    theirs = save(store, 1, tenant="other").path
    store.snapshot_dir("acme").mkdir(parents=True)
    shutil.copy(theirs, store.path_for("acme", 1))
    with pytest.raises(NoValidSnapshot, match="header names tenant 'other'"):
        store.load_newest_valid("acme")


def test_a_newer_format_version_is_not_skipped(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    packed = msgpack.packb({"tenant": "acme"})
    head = MAGIC + struct.pack(">HI", 3, len(packed)) + packed
    store.path_for("acme", 2).write_bytes(head + struct.pack(">I", zlib.crc32(head)))
    with pytest.raises(SnapshotVersionError):
        store.load_newest_valid("acme")


def test_a_stale_temp_file_is_ignored_then_removed(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    stale = store.snapshot_dir("acme") / "000000000002.snap.tmp"
    stale.write_bytes(b"half a snapshot from a crashed save")
    assert [i.generation for i in store.generations("acme")] == [1]
    loaded = store.load_newest_valid("acme")
    assert loaded is not None and loaded.header.generation == 1 and loaded.skipped == []
    info = save(store, 2)
    assert info.generation == 2
    assert not stale.exists()
    assert any("stale temp file" in note and str(stale) in note for note in info.notes)
    assert snapshot_files(store) == ["000000000001.snap", "000000000002.snap"]


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "Acme", "", "a" * 64, "/abs", "a."])
def test_bad_tenant_names_never_touch_the_filesystem(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    store = LocalStore.in_data_dir(root)
    with pytest.raises(InvalidTenantName):
        store.save(name, b"x", codec="msgpack", app_version="1", schema_version=1, journal_pos=0)
    for call in (store.load_newest_valid, store.generations, store.delete_tenant):
        with pytest.raises(InvalidTenantName):
            call(name)
    assert list(tmp_path.iterdir()) == []


def test_unknown_codec_writes_nothing(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    with pytest.raises(CodecError):
        store.save("acme", b"x", codec="json", app_version="1", schema_version=1, journal_pos=0)
    assert list(tmp_path.iterdir()) == []


def test_delete_tenant_keeps_other_files_of_the_tenant(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    save(store, 1, tenant="other")
    tenants = tmp_path / "tenants"
    (tenants / "other" / "journal").write_bytes(b"journal")
    store.delete_tenant("acme")
    store.delete_tenant("other")
    assert not (tenants / "acme").exists()
    assert (tenants / "other" / "journal").exists()
    assert not (tenants / "other" / "snapshots").exists()
    assert store.load_newest_valid("acme") is None
    store.delete_tenant("never-existed")


def test_a_second_concurrent_save_fails_instead_of_racing(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    fd = os.open(store.snapshot_dir("acme"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(SnapshotWriteError, match="in progress"):
            save(store, 2)
    finally:
        os.close(fd)
    assert save(store, 2).generation == 2


def test_save_works_in_a_forked_child(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    payload = CODEC.dumps(state(2))
    pid = os.fork()
    if pid == 0:  # the child: exit without running any of pytest's cleanup
        code = 1
        try:
            info = store.save(
                "acme", payload, codec="msgpack", app_version="1", schema_version=1, journal_pos=5
            )
            code = 0 if info.generation == 2 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("forked save did not finish within 30 s")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    loaded = store.load_newest_valid("acme")
    assert loaded is not None and loaded.header.generation == 2
    assert CODEC.loads(loaded.payload) == state(2)


def test_a_failed_fsync_is_final_and_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An fsync EIO cannot be caused for real without a faulty device; inject it.
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    real_fsync = os.fsync
    file_fsyncs: list[int] = []

    def failing_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            file_fsyncs.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SnapshotWriteError, match="Input/output error") as caught:
        save(store, 2)
    monkeypatch.undo()
    assert len(file_fsyncs) == 1  # never retried
    assert isinstance(caught.value.__cause__, OSError)
    assert snapshot_files(store) == ["000000000001.snap"]
    loaded = store.load_newest_valid("acme")
    assert loaded is not None and loaded.header.generation == 1


def test_a_failed_directory_fsync_is_not_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 1)
    real_fsync = os.fsync

    def failing_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_dir_fsync)
    with pytest.raises(SnapshotWriteError, match="may not survive"):
        save(store, 2)
    monkeypatch.undo()
    assert read_snapshot(store.path_for("acme", 1))[0].generation == 1


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, so a save runs out of space for real."""
    with tmpfs(tmp_path / "tmpfs", "1m",
               otherwise="test_save_failing_with_efbig covers this") as mount:
        yield mount


@pytest.mark.slow
def test_save_on_a_full_disk_keeps_the_old_generation(small_tmpfs: Path) -> None:
    # Signed: an unsigned pickle file would be refused by the restore (not what this tests).
    store = LocalStore.in_data_dir(small_tmpfs / "data", identity=WriterIdentity(key=b"k" * 64))
    first = store.save(
        "acme", b"a" * 300_000, codec="pickle", app_version="1", schema_version=1, journal_pos=1
    )
    with pytest.raises(SnapshotWriteError, match="older generations are untouched") as caught:
        store.save(
            "acme", b"b" * 900_000, codec="pickle", app_version="1", schema_version=1, journal_pos=2
        )
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert snapshot_files(store) == ["000000000001.snap"]
    loaded = store.load_newest_valid("acme")
    assert loaded is not None and loaded.path == first.path and loaded.payload == b"a" * 300_000
    # The space came back with the temp file: the tenant can checkpoint again.
    again = store.save(
        "acme", b"c" * 300_000, codec="pickle", app_version="1", schema_version=1, journal_pos=3
    )
    assert again.generation == 2


def test_a_large_payload_hashed_while_written_reads_back_signed_and_whole(
    tmp_path: Path,
) -> None:
    # Over HASH_IN_PARALLEL_MIN_BYTES: the checksum is computed on a thread while the payload
    # is written at its final offset, and the prefix goes in last.
    store = LocalStore.in_data_dir(tmp_path / "data", identity=WriterIdentity(key=b"k" * 64))
    payload = os.urandom(3 << 20)
    info = store.save("acme", payload, codec="msgpack", app_version="1", schema_version=1,
                      journal_pos=7)
    assert info.path.stat().st_size == info.size
    header, read_back = read_snapshot(info.path)
    assert read_back == payload and header.journal_pos == 7
    loaded = store.load_newest_valid("acme")
    assert loaded is not None and loaded.signed and loaded.payload == payload
    assert not list(info.path.parent.glob("*.tmp"))


@pytest.mark.slow
def test_a_large_save_on_a_full_disk_keeps_the_old_generation(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "tmpfs", "6m", otherwise="the 1 MiB full-disk test") as mount:
        store = LocalStore.in_data_dir(mount / "data", identity=WriterIdentity(key=b"k" * 64))
        first = store.save("acme", b"a" * (2 << 20), codec="msgpack", app_version="1",
                           schema_version=1, journal_pos=1)
        with pytest.raises(SnapshotWriteError, match="older generations are untouched") as caught:
            store.save("acme", b"b" * (5 << 20), codec="msgpack", app_version="1",
                       schema_version=1, journal_pos=2)
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == errno.ENOSPC
        assert snapshot_files(store) == ["000000000001.snap"]
        loaded = store.load_newest_valid("acme")
        assert loaded is not None and loaded.path == first.path
        assert loaded.payload == b"a" * (2 << 20)


EFBIG_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
from snapshots.errors import SnapshotWriteError
from snapshots.store import LocalStore

# Ignored, SIGXFSZ no longer kills the process: write() fails with EFBIG instead.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    LocalStore.in_data_dir(Path(sys.argv[1])).save(
        "acme", b"x" * (4 * limit), codec="msgpack", app_version="2",
        schema_version=1, journal_pos=99,
    )
except SnapshotWriteError as exc:
    print(json.dumps({"error": str(exc), "errno": exc.__cause__.errno}))
else:
    print(json.dumps({"error": None}))
"""


@pytest.mark.slow
def test_save_failing_with_efbig_mid_write_keeps_the_old_generation(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, 50)
    size_before = store.path_for("acme", 1).stat().st_size
    done = subprocess.run(
        [sys.executable, "-c", EFBIG_SCRIPT, str(tmp_path), str(size_before + 4096)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcome = json.loads(done.stdout)
    assert outcome["error"] is not None, "the write should have hit the file size limit"
    assert outcome["errno"] == errno.EFBIG
    assert snapshot_files(store) == ["000000000001.snap"]  # no temp file left
    loaded = store.load_newest_valid("acme")
    assert loaded is not None and loaded.header.generation == 1 and loaded.skipped == []
    assert CODEC.loads(loaded.payload) == state(50)
