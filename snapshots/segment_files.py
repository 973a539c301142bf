"""LocalStore's segment files, and the self-contained copy of a segmented snapshot.

Layout (snapshots/store.py has the rest of the folder):

    <data-dir>/tenants/<tenant>/snapshots/<hex64>.seg          one segment's bytes, named by
                                                               their BLAKE2b-256 (the index
                                                               entry's `ref`, snapshots/segments.py)
    <data-dir>/tenants/<tenant>/snapshots/<hex64>.seg.tmp      being written, or left by a crash
    <data-dir>/tenants/<tenant>/snapshots/<hex64>.seg.corrupt  a segment file found damaged when
                                                               loaded, moved aside (kept for the
                                                               operator; never read again)

Incremental checkpoints. A segmented save writes the segments that changed since the last
generation (each: temp file, write, fsync, rename), fsyncs the folder, and only then writes the
generation file (snapshots/store.py: temp, fsync, rename, folder fsync). Unchanged segments are
not written: the new generation's index names the segment files the previous one used (by
reference, not copied). So a crash at any point of a save leaves either the new generation with
every segment file it names, or no new generation (the segment files written so far are
orphans, removed by the next save).

Pruning. After a save drops old generations, a segment file is removed only when no kept
generation's index names it; if any kept generation's header cannot be read, no segment file is
removed in that save (its references are unknown). A segment file is shared by every
generation that did not change that segment: it has the redundancy of the journal (one copy),
not one copy per generation. Damage to it is detected by its checksum when it is loaded;
the file is moved aside (`quarantine`), and a restore then falls back to the newest generation
that does not name it, replaying the journal from there (kept from the oldest kept generation's
position, as always). If every kept generation names it (the segment did not change within the
kept generations), the restore stops with NoValidSnapshot rather than serve a partial state.

Migration (`python -m snapshots.segment_files ship SRC OUT --key-file KEY`): a segmented
generation is shipped as one self-contained file: the same header fields and index, each entry
with ref "" and its bytes in this file's payload, signed with the same key. The router calls
it in a subprocess (it never imports msgpack); an unsegmented file is hard-linked as before.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from snapshots.durable import write_all
from snapshots.errors import SegmentCorrupt, SnapshotError, SnapshotWriteError
from snapshots.format import SnapshotHeader, make_header, read_header, write_to
from snapshots.layout import TEMP_SUFFIX
from snapshots.mac import WriterIdentity, load_key
from snapshots.segments import (
    SEGMENT_SUFFIX,
    SegmentedIndex,
    SegmentEntry,
    checksum_of,
    groups_of,
    is_segmented,
    read_segment,
    ref_for,
)

CORRUPT_SUFFIX = ".corrupt"
# What a segmented save is given per segment: its new bytes, or the entry it keeps.
SegmentSource = bytes | SegmentEntry
FaultHook = Callable[[str], None]


def open_index(header: SnapshotHeader, path: Path) -> SegmentedIndex:
    """The index of a segmented generation at `path`, each entry pointing at its bytes on
    this host. SegmentCorrupt when a segment file it names is missing or of the wrong size
    (a stat each: cheap, so a restore checks them all before it serves)."""
    entries = []
    for raw in header.index:
        if raw.get("ref"):
            blob = path.parent / (raw["ref"] + SEGMENT_SUFFIX)
            entry = SegmentEntry.from_dict(raw, path=str(blob))
            try:
                size = blob.stat().st_size
            except FileNotFoundError:
                raise SegmentCorrupt(str(path), entry.name, f"its file {blob.name} is missing"
                                     ) from None
            if size != entry.length:
                raise SegmentCorrupt(str(path), entry.name, f"its file {blob.name} is {size} "
                                                            f"bytes, not {entry.length}")
        else:
            entry = SegmentEntry.from_dict(raw, path=str(path),
                                           file_offset=header.header_bytes + raw["offset"])
        entries.append(entry)
    return SegmentedIndex(header, str(path), tuple(entries), groups_of(header))


def write_segments(directory: Path, dir_fd: int, segments: list[tuple[str, SegmentSource]],
                   codec: str, fault: FaultHook) -> tuple[list[SegmentEntry], int]:
    """Make every segment's bytes durable as a segment file: new bytes are written, a kept
    entry is checked to still have its file (one in a self-contained file is copied out).
    Returns the index entries, in order, and the bytes written."""
    entries: list[SegmentEntry] = []
    written = 0
    for name, source in segments:
        if isinstance(source, SegmentEntry) and source.ref:
            blob = directory / (source.ref + SEGMENT_SUFFIX)
            if not blob.exists():
                raise SnapshotWriteError(f"segment {name!r}: its file {blob} is gone "
                                         "(moved aside as damaged?)")
            entries.append(SegmentEntry(name, 0, source.length, source.checksum, codec,
                                        source.ref, str(blob)))
            continue
        data = read_segment(source) if isinstance(source, SegmentEntry) else source
        checksum = checksum_of(data)
        ref = ref_for(checksum)
        blob = directory / (ref + SEGMENT_SUFFIX)
        _write_file(blob, data)
        written += len(data)
        fault("after_segment_write")
        entries.append(SegmentEntry(name, 0, len(data), checksum, codec, ref, str(blob)))
    if written:
        try:
            os.fsync(dir_fd)  # the segment files' names are durable before the generation's
        except OSError as exc:
            raise SnapshotWriteError(f"fsync of {directory} failed: {exc}") from exc
    fault("after_segments")
    return entries, written


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a crashed save's: we hold the save lock
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)  # the same name means the same bytes: replacing heals damage
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SnapshotWriteError(f"cannot write segment file {path}: {exc}") from exc


def referenced(headers: Iterable[SnapshotHeader]) -> set[str]:
    """The segment files the given generations name."""
    return {e["ref"] for h in headers for e in (h.index or [])
            if isinstance(e, dict) and e.get("ref")}


def collect(directory: Path, generation_files: list[Path]) -> list[str]:
    """Remove the segment files no generation in `generation_files` names (under the save
    lock). Returns notes for the caller to log; removes nothing if a header does not read."""
    headers = []
    for path in generation_files:
        try:
            with open(path, "rb") as f:
                headers.append(read_header(f, source=str(path)))
        except (OSError, SnapshotError) as exc:
            return [f"kept every segment file: cannot read {path} ({exc})"]
    live = referenced(headers)
    notes: list[str] = []
    try:
        with os.scandir(directory) as found:
            names = [e.name for e in found if e.name.endswith(SEGMENT_SUFFIX)]
    except OSError as exc:
        return [f"could not list {directory} for unused segment files: {exc}"]
    for name in names:
        if name[: -len(SEGMENT_SUFFIX)] in live:
            continue
        try:
            (directory / name).unlink()
        except OSError as exc:
            notes.append(f"could not remove unused segment file {name}: {exc}")
    return notes


def quarantine(entry: SegmentEntry) -> str | None:
    """Move the file holding a segment found damaged aside (its segment file, or the
    self-contained generation file it is in), so the next restore skips every generation that
    needs it. Returns the path moved (None if it could not be)."""
    path = Path(entry.path)
    try:
        os.rename(path, path.with_name(path.name + CORRUPT_SUFFIX))
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return None
    return str(path)


def self_contained(source: Path, out: Path, key: bytes | None) -> bool:
    """Write to `out` the generation at `source` with every segment inside it (see the module
    docstring), signed with `key`; hard-link it instead when it is not segmented. Returns
    whether it was segmented. SnapshotError when a segment does not verify."""
    with open(source, "rb") as f:
        header = read_header(f, source=str(source))
    if not is_segmented(header):
        os.link(source, out)
        return False
    index = open_index(header, source)
    parts, entries, offset = [], [], 0
    for entry in index.entries:
        data = read_segment(entry)
        parts.append(data)
        entries.append({**entry.to_dict(), "offset": offset, "ref": ""})
        offset += len(data)
    payload = b"".join(parts)
    identity = WriterIdentity(key=key, epoch=header.epoch, creation_id=header.creation_id)
    new = make_header(header.tenant, header.generation, header.codec, header.app_version,
                      header.schema_version, header.journal_pos, payload,
                      created_at=header.created_at, index=entries, extra=header.extra,
                      identity=identity)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb", buffering=0) as f:
        write_to(f, new, payload)
        os.fsync(f.fileno())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapshots.segment_files")
    parser.add_argument("command", choices=["ship"])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--key-file")
    args = parser.parse_args(argv)
    try:
        key = load_key(args.key_file) if args.key_file else None
        self_contained(Path(args.source), Path(args.out), key)
    except (OSError, SnapshotError) as exc:
        print(f"cannot ship {args.source}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
