"""snapshots.layout.DataLayout (where a data dir's files live) and snapshots.durable."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from snapshots.durable import create_exclusive, make_dirs, write_atomic
from snapshots.errors import InvalidTenantName
from snapshots.layout import DataLayout
from snapshots.store import LocalStore

BAD_NAMES = ["", "..", "a/b", "Acme", "-acme", "acme\n", "a" * 64, "acme\x00", ".trash-acme", 7]


def test_paths(tmp_path: Path) -> None:
    layout = DataLayout(str(tmp_path))
    assert layout.data_dir == tmp_path
    assert layout.tenants_dir == tmp_path / "tenants"
    assert layout.transfers_dir == tmp_path / "transfers"
    assert layout.tenant_dir("acme") == tmp_path / "tenants" / "acme"
    assert layout.snapshot_dir("acme") == tmp_path / "tenants" / "acme" / "snapshots"
    assert layout.journal_dir("acme") == tmp_path / "tenants" / "acme" / "journal"
    assert layout.snapshot_path("acme", 3) == layout.snapshot_dir("acme") / "000000000003.snap"
    for generation in (0, -1, 10**12, True, 1.0):
        with pytest.raises(ValueError, match="generation"):
            layout.snapshot_path("acme", generation)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # paths only: nothing touched the disk


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_before_any_path(tmp_path: Path, name: object) -> None:
    layout = DataLayout(tmp_path)
    calls = [layout.tenant_dir, layout.snapshot_dir, layout.journal_dir, layout.generations,
             layout.snapshot_files, layout.has_files, layout.create_tenant, layout.delete_tenant]
    for call in calls:
        with pytest.raises(InvalidTenantName) as caught:
            call(name)  # type: ignore[operator]
        assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidTenantName):
        layout.snapshot_path(name, 1)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_generations_list_complete_files_only(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    assert layout.generations("acme") == [] and layout.snapshot_files("acme") == []
    store = LocalStore(layout, keep_generations=5)
    for n in range(3):
        store.save("acme", b"\x90", codec="msgpack", app_version="1", schema_version=1,
                   journal_pos=n)
    snaps = layout.snapshot_dir("acme")
    (snaps / "000000000004.snap.tmp").write_bytes(b"a save in progress")
    (snaps / "notes.txt").write_bytes(b"")
    (snaps / "gen-9.snap").write_bytes(b"")
    assert layout.generations("acme") == [1, 2, 3]
    assert layout.snapshot_files("acme") == [layout.snapshot_path("acme", g) for g in (1, 2, 3)]
    assert [i.generation for i in store.generations("acme")] == [3, 2, 1]


def test_create_has_files_and_delete(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    assert not layout.has_files("acme")
    layout.create_tenant("acme")
    layout.create_tenant("acme")  # an existing one is kept
    assert stat.S_IMODE(layout.tenant_dir("acme").stat().st_mode) == 0o700
    assert not layout.has_files("acme")  # an empty folder holds nothing
    layout.journal_dir("acme").mkdir()
    assert not layout.has_files("acme")
    (layout.journal_dir("acme") / "00000000000000000001.journal").write_bytes(b"x")
    assert layout.has_files("acme")
    layout.create_tenant("other")
    (layout.tenant_dir("other") / "keep").write_bytes(b"x")

    layout.delete_tenant("acme")
    assert not layout.tenant_dir("acme").exists() and not layout.has_files("acme")
    assert sorted(p.name for p in layout.tenants_dir.iterdir()) == ["other"]  # no trash left
    layout.delete_tenant("acme")  # nothing to delete is not an error
    layout.delete_tenant("never-existed")
    assert layout.has_files("other")


def test_a_delete_cut_short_leaves_trash_that_the_next_sweep_removes(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    layout.create_tenant("acme")
    (layout.tenant_dir("acme") / "data").write_bytes(b"x" * 1000)
    # What a crash between the rename and the rmtree leaves behind.
    trash = layout.tenants_dir / ".trash-acme-0123456789ab"
    os.rename(layout.tenant_dir("acme"), trash)
    assert not layout.has_files("acme")
    assert layout.sweep_trash() == [trash]
    assert not trash.exists()
    assert layout.sweep_trash() == []

    layout.create_tenant("b")
    os.mkdir(trash)
    layout.delete_tenant("b")  # a delete sweeps too
    assert list(layout.tenants_dir.iterdir()) == []
    assert DataLayout(tmp_path / "none").sweep_trash() == []


def test_transfers_dir_is_private(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    assert layout.ensure_transfers_dir() == layout.transfers_dir
    assert stat.S_IMODE(layout.transfers_dir.stat().st_mode) == 0o700
    os.chmod(layout.transfers_dir, 0o755)
    layout.ensure_transfers_dir()
    assert stat.S_IMODE(layout.transfers_dir.stat().st_mode) == 0o700


def test_localstore_takes_a_layout_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="in_data_dir"):
        LocalStore(tmp_path / "tenants")  # type: ignore[arg-type]
    store = LocalStore.in_data_dir(tmp_path, keep_generations=2)
    assert store.layout.data_dir == tmp_path and store.keep_generations == 2


def test_importing_the_layout_does_not_load_the_codecs() -> None:
    code = ("import sys, snapshots.layout, snapshots.durable; "
            "print(sorted(m for m in sys.modules if m.startswith(('msgpack', 'snapshots.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "msgpack" not in out and "snapshots.codec" not in out
    import snapshots

    assert snapshots.LocalStore is LocalStore and "DataLayout" in dir(snapshots)
    with pytest.raises(AttributeError):
        snapshots.nothing_here  # noqa: B018


# --- snapshots.durable -----------------------------------------------------------------------


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"one")
    write_atomic(target, b"two" * 1000, mode=0o640)
    assert target.read_bytes() == b"two" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_failed_fsync_is_not_retried_and_the_old_file_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"old")
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(target, b"new")
    with pytest.raises(OSError, match="Input/output"):
        create_exclusive(tmp_path / "secret", b"s")
    monkeypatch.undo()
    assert len(calls) == 2  # one fsync each, never retried
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temp, no secret


def test_create_exclusive_never_replaces(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    create_exclusive(secret, b"first\n")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_exclusive(secret, b"second\n")
    assert secret.read_bytes() == b"first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_make_dirs_returns_what_it_created(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    assert make_dirs(deep) == [tmp_path / "a", tmp_path / "a" / "b", deep]
    assert make_dirs(deep) == []
    assert stat.S_IMODE(deep.stat().st_mode) == 0o700 & ~_umask()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        make_dirs(tmp_path / "file" / "sub")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
