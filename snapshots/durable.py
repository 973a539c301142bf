"""Durable-file helpers: the one place that knows how a file or folder survives a crash.

Used by the snapshot store, the journal, the export file writer and the admin key file.
Each helper states what is on stable storage when it returns. The rules they share:

- A name (a new file, a rename, a removal) is durable only once the folder holding it has
  been fsynced, so every helper that creates or renames ends with `fsync_dir`.
- A failed fsync is final for that file or folder: the kernel may have dropped the dirty
  pages and marked them clean, so a second fsync can report success over lost data. The
  helpers never retry one; they raise OSError and the caller must not count the write.
- New files and folders are private (0600 / 0700) unless the caller asks otherwise; the
  mode is applied at creation, so nothing ever exists with looser permissions, even briefly.

Standard library only, Linux/POSIX semantics (O_DIRECTORY, fsync on a directory fd).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["create_exclusive", "fsync_dir", "make_dirs", "write_all", "write_atomic"]

_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a folder.

    When this returns, every entry created, renamed or removed in `directory` before the
    call is on stable storage. Raises OSError if the folder cannot be opened or the fsync
    fails; after a failure, do not count those entries as durable.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: str | os.PathLike[str], mode: int = 0o700) -> list[Path]:
    """mkdir -p, durably: returns the folders it created, outermost first.

    When this returns, `directory` exists and the entry of every folder on the way to it
    is on stable storage (each new folder's parent is fsynced after the mkdir, also when
    another process won the race to create it). `mode` applies to the folders created here
    (minus the umask); existing ones are left as they are.
    """
    missing: list[Path] = []
    level = Path(directory)
    while not level.is_dir():
        missing.append(level)
        level = level.parent
    created: list[Path] = []
    for level in reversed(missing):
        try:
            level.mkdir(mode=mode)
        except FileExistsError:
            if not level.is_dir():
                raise
        else:
            created.append(level)
        # Also when another process created it: its fsync may not have run yet.
        fsync_dir(level.parent)
    return created


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (a write may be short). Nothing about durability:
    the bytes are in the page cache when this returns."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: str | os.PathLike[str], data: bytes | bytearray | memoryview,
                 *, mode: int = 0o600) -> None:
    """Replace the file at `path` with `data`: temp file in the same folder, write, fsync,
    rename over `path`, fsync the folder.

    Readers see the old file or the new one, whole, never a mix or a short file. When this
    returns, the new content and its name are on stable storage. On an error it raises
    OSError and removes its temp file; if the error was the final folder fsync, the file
    under `path` is the new one but may not survive a power loss, so the write does not
    count. The temp file is `.<name>.<random>.tmp`, created with O_EXCL and `mode`.
    """
    target = Path(path)
    tmp = _write_temp(target, data, mode)
    try:
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def create_exclusive(path: str | os.PathLike[str], data: bytes | bytearray | memoryview,
                     *, mode: int = 0o600) -> None:
    """Create a new file holding `data` (a secret: 0600 by default), never replacing one.

    The data goes to a private temp file, is fsynced, then hard-linked into place: other
    processes see no file or a complete one, and an existing file is never overwritten or
    loosened (FileExistsError instead). On a filesystem without hard links it falls back to
    creating `path` directly with O_EXCL (a reader may then see it short for a moment).
    When this returns, the file and its name are on stable storage. Any other failure
    raises OSError and leaves no temp file.
    """
    target = Path(path)
    tmp = _write_temp(target, data, mode)
    try:
        try:
            os.link(tmp, target)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise
        except OSError:
            _write_new(target, data, mode)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(target.parent)


def _write_temp(target: Path, data: bytes | bytearray | memoryview, mode: int) -> Path:
    """A new temp file next to `target` holding `data`, fsynced."""
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
    _write_new(tmp, data, mode)
    return tmp


def _write_new(path: Path, data: bytes | bytearray | memoryview, mode: int) -> None:
    """Create `path` (O_EXCL), write `data`, fsync. On any failure the file is removed (this
    call created it) and never fsynced again."""
    fd = os.open(path, _CREATE_NEW, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
