"""Writing one snapshot generation file durably (snapshots/store.py decides what and when).

A generation is written to `<name>.tmp`, fsynced, renamed into place and its folder fsynced;
the byte layout is snapshots/format.py's. Guarantee: when `write_generation` returns, the file
and its name are on stable storage; on any failure it raises SnapshotWriteError, the temp file
is gone, and older generations are untouched. A failed fsync is final: the kernel may have
dropped the dirty pages and marked them clean, so a retry could report success over lost data.

`write_generation_hashing` is the same for a header that carries the payload's checksum: it
hashes the payload on a second thread while this one writes it (both release the GIL), since
the checksum sits in the header, before the payload. The prefix's size does not depend on the
checksum's value (a fixed-length string), so the payload goes at its final offset first and
the prefix is written once the checksum is known. On two cores that takes the hash, about as
long as the write itself, off a checkpoint's time.

Fault hooks (tests only) run between the steps: after_temp_write, after_fsync, after_rename,
before_dir_fsync.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from snapshots.errors import SnapshotWriteError
from snapshots.format import (
    CHECKSUM_PREFIX,
    Payload,
    SnapshotHeader,
    encode_prefix,
    payload_checksum,
    write_to,
)
from snapshots.layout import TEMP_SUFFIX

FaultHook = Callable[[str], None]
# Below this a payload is hashed before it is written: a thread would cost more than it saves.
HASH_IN_PARALLEL_MIN_BYTES = 1 << 20
PLACEHOLDER_CHECKSUM = CHECKSUM_PREFIX + "0" * 64


def no_fault(step: str) -> None:
    pass


def write_generation(path: Path, dir_fd: int, header: SnapshotHeader, payload: Payload,
                     fault: FaultHook = no_fault) -> None:
    """Write `header` and `payload` as the file at `path`, durably (the module docstring).
    `dir_fd` is the folder's, held open by the caller's save lock."""
    def write(fd: int) -> None:
        with open(fd, "wb", buffering=0, closefd=False) as f:
            write_to(f, header, payload)

    _write_durably(path, dir_fd, fault, write)


def write_generation_hashing(path: Path, dir_fd: int,
                             make_header: Callable[[str], SnapshotHeader], payload: Payload,
                             fault: FaultHook = no_fault) -> SnapshotHeader:
    """`write_generation` for the header `make_header(checksum)` builds, hashing `payload`
    while it is written. Returns that header."""
    view = memoryview(payload).cast("B")
    if view.nbytes < HASH_IN_PARALLEL_MIN_BYTES:
        header = make_header(payload_checksum(view))
        write_generation(path, dir_fd, header, view, fault)
        return header
    provisional = make_header(PLACEHOLDER_CHECKSUM)
    offset = len(encode_prefix(provisional))
    digest: list[str] = []
    hasher = threading.Thread(target=lambda: digest.append(payload_checksum(view)),
                              name="snapshot-hash", daemon=True)
    written: list[SnapshotHeader] = []

    def write(fd: int) -> None:
        hasher.start()
        try:
            _pwrite_all(fd, view, offset)
        finally:
            hasher.join()  # bounded: one pass over the payload in memory
        if not digest:
            raise SnapshotWriteError("hashing the snapshot payload failed")
        header = make_header(digest[0])
        prefix = encode_prefix(header)
        if len(prefix) != offset:  # the layout promises a fixed size: never write past it
            raise SnapshotWriteError(f"snapshot prefix is {len(prefix)} bytes, "
                                     f"not the {offset} reserved for it")
        _pwrite_all(fd, memoryview(prefix), 0)
        written.append(header)

    _write_durably(path, dir_fd, fault, write)
    return written[0]


def remove_quietly(path: Path) -> None:
    # Cleanup after a failure: the original error is the one to report.
    with contextlib.suppress(OSError):
        path.unlink()


def _write_durably(path: Path, dir_fd: int, fault: FaultHook,
                   write: Callable[[int], None]) -> None:
    # Not snapshots.durable.write_atomic: the fault hooks go between its steps, and the
    # folder is fsynced through the fd that holds the save lock.
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        # O_EXCL: never write into a file something else has open.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SnapshotWriteError(f"cannot create {tmp}: {exc}") from exc
    try:
        try:
            write(fd)
            fault("after_temp_write")
            # After this the file's bytes are on stable storage (a failed fsync is final).
            os.fsync(fd)
            fault("after_fsync")
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise SnapshotWriteError(
            f"cannot write {path.name} in {path.parent}: {exc}; older generations are untouched"
        ) from exc
    except BaseException:
        remove_quietly(tmp)
        raise
    fault("after_rename")
    fault("before_dir_fsync")
    try:
        # After this the rename is on stable storage too: the new generation survives
        # power loss.
        os.fsync(dir_fd)
    except OSError as exc:
        # The file is complete and checksummed, so a restore that finds it is correct; but
        # it may not survive power loss, so the save does not count.
        raise SnapshotWriteError(
            f"wrote {path} but the fsync of its folder failed: {exc}; it may not survive a "
            "power loss; older generations are untouched"
        ) from exc


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        if written <= 0:  # a blocking file that writes nothing and raises nothing
            raise OSError(f"pwrite returned {written} with {view.nbytes} bytes left")
        view, offset = view[written:], offset + written

