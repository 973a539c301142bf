"""Snapshot stores: where a tenant's snapshot generations are kept.

LocalStore keeps them in a data dir, where snapshots.layout.DataLayout says (every path here
comes from it):

    <data-dir>/tenants/<tenant>/snapshots/<generation:012d>.snap       one file a generation
    <data-dir>/tenants/<tenant>/snapshots/<generation:012d>.snap.tmp   a save in progress, or
                                                                      left by a crash

    <data-dir>/tenants/<tenant>/snapshots/<hex64>.seg               a segment of a segmented
                                                                      generation (below)

Generations count up from 1; the newest keep_generations are kept. The tenant's folder also
holds other packages' files (the journal), so this module only ever touches its snapshots/
folder.

Signing and the restore policy. A store is made with the writer's identity
(snapshots.mac.WriterIdentity: the deployment's snapshot key, the tenant's epoch and creation
id): every save writes format version 2, signed when there is a key. A restore
(load_newest_valid_state, or load_newest_valid) walks the generations newest first and takes
the first one that passes every check below; a file that fails one is skipped with its reason
(the caller logs it loudly) and the walk goes on to the previous generation:

    the file                                         restore
    corrupt (CRC, checksum, length, fields)          skipped: "<the problem>"
    header names another tenant                      skipped
    signed, MAC verifies under this key              loaded
    signed, MAC does not verify (or no key here)     skipped: "refused: not signed by this
                                                     deployment: ..."
    codec other than the app's declared `codec`      skipped: "refused: codec X but the app
                                                     declares Y"
    unsigned (v1, or v2 without mac), msgpack        loaded (msgpack runs no code); the
                                                     result says signed=False so the caller
                                                     rewrites it signed at its next checkpoint
    unsigned, pickle (or any codec not in            skipped: "refused: not signed by this
    DATA_CODECS)                                     deployment: ..." unless allow_unsigned
    unsigned, and an older generation is signed      skipped: "refused: not signed by this
    by this key                                      deployment: ... (planted?)": a writer
                                                     with the key never goes back to unsigned,
                                                     so such a file was put there by hand
    a newer format version                           SnapshotVersionError: the walk stops

Files exist but none passes: NoValidSnapshot (never an empty tenant in silence).

Runs in the tenant worker and in its forked checkpoint child: plain blocking calls, no event
loop, no logging (save returns what it did, in SnapshotInfo; callers log), and no threads
but the one load_newest_valid_state starts to hash a big payload while it decodes, and joins
before it returns.
One save per tenant at a time: save holds an flock on the snapshots folder and fails at once
if another save holds it.

Segmented snapshots (snapshots/segments.py: the index; snapshots/segment_files.py: the
segment files, incremental saves, pruning, the self-contained copy a migration ships).
`save_segmented` writes the segments given as bytes and refers to the ones given as index
entries (unchanged since they were saved), then the generation file, whose payload is empty
and whose index names every segment. A restore of a segmented generation decodes nothing:
`load_newest_valid_state` returns a LoadedState whose `state` is a SegmentedIndex (every
segment file it names checked by size; a missing one skips the generation as corrupt), and the
caller reads each segment's verified bytes with `snapshots.segments.read_segment` when it
needs it (tenant/segments.py).

What a second store (PostgreSQL, issue 14) implements to follow, besides the protocol below:
- `save_segmented(tenant, segments, *, groups, ...)`: the same atomicity (every segment it
  refers to is durable before the generation that names it becomes visible) and the same
  content addressing (an entry's `ref` is the hex of its checksum; the store decides where
  the bytes live, e.g. a table keyed by (tenant, ref));
- a restore result for a segmented generation: a SegmentedIndex whose entries it can read
  back (entry.path is LocalStore's locator; another store's reader may key on entry.ref);
- pruning that never drops a segment a kept generation names;
- a way to hand a migration the self-contained copy (`segment_files.self_contained`).

Fault injection: `LocalStore(layout, fault=hook)` calls `hook(step)` at each step of a save, with
step one of SAVE_STEPS, in that order. Tests pass a hook that kills the process there (SIGKILL)
or raises, to check that every crash point leaves a restorable store. Production code passes
nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from snapshots.codec import CODEC_NAMES, Codec, get_codec
from snapshots.durable import fsync_dir, make_dirs
from snapshots.errors import (
    CodecError,
    NoValidSnapshot,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotNotSigned,
    SnapshotRefused,
    SnapshotWriteError,
    SnapshotWrongCodec,
    UnsafeCodec,
)
from snapshots.format import (
    Payload,
    SnapshotHeader,
    authenticate,
    load_state,
    make_header,
    open_snapshot,
    read_header,
    read_snapshot,
    verify_payload,
)
from snapshots.generation_file import (
    FaultHook,
    no_fault,
    write_generation,
    write_generation_hashing,
)
from snapshots.layout import TEMP_SUFFIX, DataLayout
from snapshots.mac import WriterIdentity
from snapshots.segment_files import SegmentSource, collect, open_index, write_segments
from snapshots.segments import GROUPS_KEY, SegmentEntry, is_segmented

# The steps of a save where a fault hook is called, in order:
#   after_temp_write   the temp file holds the whole snapshot, not fsynced
#   after_fsync        the temp file is fsynced, not renamed
#   after_rename       the new name is in the folder, the folder not fsynced
#   before_dir_fsync   just before the folder's fsync (same files as after_rename)
SAVE_STEPS = ("after_temp_write", "after_fsync", "after_rename", "before_dir_fsync")
# A segmented save calls these first: after each segment file is in place (not the folder),
# and once every one is and the folder is fsynced; then SAVE_STEPS for the generation file.
SEGMENT_SAVE_STEPS = ("after_segment_write", "after_segments")

# Codecs that run no code named by their input: an unsigned file of one of these may be
# restored. Any other (pickle) needs a file signed by this deployment, or allow_unsigned.
DATA_CODECS = frozenset({"msgpack"})
# How a skipped generation's reason starts when a policy refused it (not damage).
REFUSED = "refused: "


@dataclass(frozen=True)
class SnapshotInfo:
    tenant: str
    generation: int
    path: Path
    size: int
    # None when the header cannot be read; problem then says why.
    header: SnapshotHeader | None = None
    problem: str | None = None
    # Set by save only: generations pruned after it, and things the caller should log
    # (stale temp files removed, a prune that failed).
    pruned: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    # Set by save and save_segmented: the bytes this save wrote (the generation file and,
    # segmented, the segment files it wrote; not the ones it refers to).
    written_bytes: int = 0
    # Set by save_segmented: the new generation's index entries, each with its file's path.
    entries: tuple[SegmentEntry, ...] = ()


@dataclass
class LoadedSnapshot:
    header: SnapshotHeader
    payload: bytes
    path: Path
    # Newer generations that failed verification or were refused, as (path, reason; a
    # refusal's reason starts with REFUSED): the caller must log them loudly, since the state
    # it restores is older than the newest checkpoint.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    signed: bool = False  # its MAC verified under this store's key


@dataclass
class LoadedState:
    """load_newest_valid_state's result: a state decoded from a payload that verified."""

    header: SnapshotHeader
    state: Any
    path: Path
    # As in LoadedSnapshot: newer generations that failed verification or were refused, to
    # be logged loudly.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Its MAC verified under this store's key. False: an unsigned file the policy let
    # through; the caller rewrites it signed at its next checkpoint.
    signed: bool = False


CodecFactory = Callable[[str], Codec]


_Loaded = TypeVar("_Loaded", LoadedSnapshot, LoadedState)


class SnapshotStore(Protocol):
    def save(
        self,
        tenant: str,
        payload: Payload,
        *,
        codec: str,
        app_version: str,
        schema_version: int,
        journal_pos: int,
    ) -> SnapshotInfo: ...

    def save_segmented(
        self,
        tenant: str,
        segments: list[tuple[str, SegmentSource]],
        *,
        groups: list[str],
        codec: str,
        app_version: str,
        schema_version: int,
        journal_pos: int,
    ) -> SnapshotInfo: ...

    def generations(self, tenant: str) -> list[SnapshotInfo]: ...

    def load_newest_valid(self, tenant: str) -> LoadedSnapshot | None: ...

    def oldest_kept_journal_pos(self, tenant: str) -> int | None: ...

    def delete_tenant(self, tenant: str) -> None: ...


class LocalStore:
    """Snapshots in a local data dir; see the module docstring for the layout.

    `LocalStore(DataLayout(data_dir), keep_generations)`, or `LocalStore.in_data_dir(...)`.
    `identity` signs and stamps what save writes and is the key a restore checks MACs with
    (none: unsigned files only); `allow_unsigned` lets a restore load an unsigned file of a
    codec that runs code (pickle), on an operator's word (`--allow-unsigned`).
    """

    def __init__(
        self, layout: DataLayout, keep_generations: int = 3, *, fault: FaultHook | None = None,
        identity: WriterIdentity | None = None, allow_unsigned: bool = False,
    ) -> None:
        if not isinstance(layout, DataLayout):
            # The old signature took a tenants folder: refuse it rather than nest tenants/.
            raise TypeError(
                f"LocalStore takes a DataLayout, not {type(layout).__name__}; "
                "use LocalStore.in_data_dir(data_dir) for a data dir"
            )
        if keep_generations < 1:
            raise ValueError(f"keep_generations must be at least 1, not {keep_generations}")
        self.layout = layout
        self.keep_generations = keep_generations
        self.fault = fault  # tests only: see the module docstring
        self.identity = identity or WriterIdentity()
        self.allow_unsigned = allow_unsigned

    @classmethod
    def in_data_dir(
        cls, data_dir: Path | str, keep_generations: int = 3, *, fault: FaultHook | None = None,
        identity: WriterIdentity | None = None, allow_unsigned: bool = False,
    ) -> Self:
        return cls(DataLayout(data_dir), keep_generations, fault=fault, identity=identity,
                   allow_unsigned=allow_unsigned)

    @property
    def key(self) -> bytes | None:
        """The snapshot key files are signed and checked with (None: unsigned only)."""
        return self.identity.key

    def snapshot_dir(self, tenant: str) -> Path:
        # Validated before any path is built (DataLayout): the name charset has no '/' or '.'.
        return self.layout.snapshot_dir(tenant)

    def path_for(self, tenant: str, generation: int) -> Path:
        return self.layout.snapshot_path(tenant, generation)

    def generations(self, tenant: str) -> list[SnapshotInfo]:
        """Every generation on disk, newest first, with its header when it reads."""
        infos = []
        for generation, path in self._scan(tenant):
            header: SnapshotHeader | None = None
            problem: str | None = None
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    try:
                        header = read_header(f, source=str(path))
                    except SnapshotError as exc:
                        problem = str(exc)
            except FileNotFoundError:
                continue  # pruned by a save since the scan
            except OSError as exc:
                size, problem = 0, f"cannot read: {exc}"
            infos.append(SnapshotInfo(tenant, generation, path, size, header, problem))
        return infos

    def save(
        self,
        tenant: str,
        payload: Payload,
        *,
        codec: str,
        app_version: str,
        schema_version: int,
        journal_pos: int,
    ) -> SnapshotInfo:
        """Write payload as the tenant's next generation, durably, then prune old ones.

        When this returns, the new generation is on disk and survives a crash or power
        loss. On any I/O error it raises SnapshotWriteError, leaves no temp file and leaves
        older generations untouched. The payload is hashed and written, never copied.
        """
        directory = self.snapshot_dir(tenant)
        if codec not in CODEC_NAMES:
            raise CodecError(f"unknown codec {codec!r}; known codecs: {', '.join(CODEC_NAMES)}")
        try:
            make_dirs(directory, mode=0o700)
        except OSError as exc:
            raise SnapshotWriteError(f"cannot create {directory}: {exc}") from exc
        with _locked_dir(directory, tenant) as dir_fd:
            notes = _remove_stale_tmp(directory)
            try:
                existing = self._scan(tenant)
            except OSError as exc:
                raise SnapshotWriteError(f"cannot list {directory}: {exc}") from exc
            generation = existing[0][0] + 1 if existing else 1
            created_at = time.time()

            def header_for(checksum: str) -> SnapshotHeader:
                return make_header(tenant, generation, codec, app_version, schema_version,
                                   journal_pos, payload, identity=self.identity,
                                   created_at=created_at, checksum=checksum)

            path = self.path_for(tenant, generation)
            header = write_generation_hashing(path, dir_fd, header_for, payload,
                                              self.fault or no_fault)
            pruned = self._prune(tenant, dir_fd, generation, notes)
        size = header.header_bytes + header.payload_length
        return SnapshotInfo(
            tenant=tenant,
            generation=generation,
            path=path,
            size=size,
            header=header,
            pruned=pruned,
            notes=tuple(notes),
            written_bytes=size,
        )

    def save_segmented(
        self,
        tenant: str,
        segments: list[tuple[str, SegmentSource]],
        *,
        groups: list[str],
        codec: str,
        app_version: str,
        schema_version: int,
        journal_pos: int,
    ) -> SnapshotInfo:
        """Write a segmented generation: `segments` in the state's order, each (name, its
        packed bytes) when it changed, or (name, its SegmentEntry) to refer to the segment
        file an earlier generation wrote. `groups`: the top-level keys that are groups of
        segments. Same guarantees and errors as save; older generations and every segment
        file a kept generation names are untouched."""
        directory = self.snapshot_dir(tenant)
        if codec not in CODEC_NAMES:
            raise CodecError(f"unknown codec {codec!r}; known codecs: {', '.join(CODEC_NAMES)}")
        try:
            make_dirs(directory, mode=0o700)
        except OSError as exc:
            raise SnapshotWriteError(f"cannot create {directory}: {exc}") from exc
        fault = self.fault or no_fault
        with _locked_dir(directory, tenant) as dir_fd:
            notes = _remove_stale_tmp(directory)
            try:
                existing = self._scan(tenant)
            except OSError as exc:
                raise SnapshotWriteError(f"cannot list {directory}: {exc}") from exc
            generation = existing[0][0] + 1 if existing else 1
            entries, written = write_segments(directory, dir_fd, segments, codec, fault)
            header = make_header(
                tenant, generation, codec, app_version, schema_version, journal_pos, b"",
                index=[e.to_dict() for e in entries], extra={GROUPS_KEY: list(groups)},
                identity=self.identity,
            )
            path = self.path_for(tenant, generation)
            write_generation(path, dir_fd, header, b"", fault)
            pruned = self._prune(tenant, dir_fd, generation, notes)
        return SnapshotInfo(tenant=tenant, generation=generation, path=path,
                            size=header.header_bytes, header=header, pruned=pruned,
                            notes=tuple(notes), written_bytes=header.header_bytes + written,
                            entries=tuple(entries))

    def _prune(
        self, tenant: str, dir_fd: int, just_written: int, notes: list[str]
    ) -> tuple[int, ...]:
        # The save has succeeded by now: a prune failure is reported, never raised.
        directory = self.snapshot_dir(tenant)
        try:
            existing = self._scan(tenant)
        except OSError as exc:
            notes.append(f"could not list {directory} to prune: {exc}")
            return ()
        doomed = [g for g in existing[self.keep_generations :] if g[0] != just_written]
        pruned = []
        for generation, path in reversed(doomed):  # oldest first
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                notes.append(f"could not prune {path}: {exc}")
                continue
            pruned.append(generation)
        kept = [path for generation, path in existing if generation not in pruned]
        notes.extend(collect(directory, kept))
        if pruned:
            # Only so a pruned file does not come back after a crash; harmless if it does.
            try:
                os.fsync(dir_fd)
            except OSError as exc:
                notes.append(f"fsync of {directory} after pruning failed: {exc}")
        return tuple(pruned)

    def load_newest_valid(self, tenant: str, *, codec: str | None = None
                          ) -> LoadedSnapshot | None:
        """The newest generation that verifies and the policy admits (the module docstring:
        `codec` is the app's declared codec, None for any), with the newer ones that did not.

        None when the tenant has no snapshot files at all (a new tenant). NoValidSnapshot
        when there are files but none verifies: never an empty tenant in silence. A file
        written by a newer format version raises SnapshotVersionError instead of falling
        back past it: older code must not run on state that newer code has moved on.
        A file whose header names another tenant is skipped, so a misplaced copy never
        serves one tenant's data to another.
        """
        def load(generation: int, path: Path) -> tuple[LoadedSnapshot | None, str | None]:
            header, payload = read_snapshot(path)
            if header.tenant != tenant:
                return None, f"header names tenant {header.tenant!r}"
            signed = self.admit(header, str(path), codec, generation=generation)
            return LoadedSnapshot(header=header, payload=payload, path=path, signed=signed), None

        return self._newest_valid(tenant, load)

    def admit(self, header: SnapshotHeader, source: str, codec: str | None, *,
              generation: int | None = None) -> bool:
        """Whether a restore may load this file, from its header alone: True if it is signed
        by this store's key, False if unsigned and admitted; SnapshotRefused otherwise (see
        the module docstring's table). `codec`: the app's declared codec, None for any;
        `generation`: the file's generation in this store (by its name, not its header),
        when it is one, so an unsigned file newer than a signed one is refused."""
        signed = authenticate(header, self.key, source)
        if codec is not None and header.codec != codec:
            raise SnapshotWrongCodec(
                source, f"codec {header.codec} but the app declares {codec}")
        if not signed and header.codec not in DATA_CODECS and not self.allow_unsigned:
            raise SnapshotNotSigned(
                source, f"not signed by this deployment: an unsigned {header.codec} snapshot "
                        "would run code from the file when loaded (--allow-unsigned trusts "
                        "unsigned files)")
        if not signed and generation is not None and self.key is not None:
            older = self._signed_generation_below(header.tenant, generation)
            if older is not None:
                raise SnapshotNotSigned(
                    source, f"not signed by this deployment: unsigned, yet the older generation "
                            f"{older} is signed, and this deployment never writes an unsigned "
                            "snapshot after a signed one (planted?)")
        return signed

    def _signed_generation_below(self, tenant: str, generation: int) -> int | None:
        """The newest generation below `generation` whose header this store's key signed
        (headers only: a MAC covers the header). None if there is none."""
        for older, path in self._scan(tenant):
            if older >= generation:
                continue
            try:
                with open(path, "rb") as f:
                    header = read_header(f, source=str(path))
                if header.tenant == tenant and authenticate(header, self.key, str(path)):
                    return older
            except (SnapshotError, OSError):
                continue
        return None

    def load_newest_valid_state(
        self, tenant: str, codec_factory: CodecFactory = get_codec, *, codec: str | None = None
    ) -> LoadedState | None:
        """load_newest_valid, decoded: the state of the newest generation that verifies.

        Same choice of generation, same errors (None, NoValidSnapshot, SnapshotVersionError)
        and the same skipped list as load_newest_valid, but faster on a big state: the file
        is mapped instead of read, and a msgpack payload is hashed while it decodes (see
        snapshots.format.load_state). A state is returned only once its payload's checksum
        matched; one decoded from a payload that then fails it is dropped, and the older
        generation is tried, as if the file had failed before decoding. A pickle payload is
        decoded only after it verified. Before any of that, the header must pass the policy
        (`admit`: its MAC, `codec` the app's declared codec, unsigned files), or the file is
        skipped as refused. codec_factory(header.codec) picks the codec (pass
        `functools.partial(get_codec, allow_pickle=False)` to refuse pickle); its error, or
        the codec's CodecError on a payload that verified, propagates: that file is sound,
        this code cannot read it, and falling back past it would hide that.
        """
        def load(generation: int, path: Path) -> tuple[LoadedState | None, str | None]:
            try:
                with open_snapshot(path) as snapshot:
                    header = snapshot.header
                    if header.tenant != tenant:
                        return None, f"header names tenant {header.tenant!r}"
                    signed = self.admit(header, snapshot.source, codec, generation=generation)
                    if is_segmented(header):  # nothing decoded yet: see the module docstring
                        return LoadedState(header=header, state=open_index(header, path),
                                           path=path, signed=signed), None
                    try:
                        decoder = codec_factory(header.codec)
                    except SnapshotError:
                        # A corrupt file is skipped as before; a sound one with a codec this
                        # code cannot (or may not) use is the caller's problem.
                        verify_payload(header, snapshot.payload, snapshot.source)
                        raise
                    state = load_state(snapshot, decoder)
            except (CodecError, UnsafeCodec) as exc:
                raise type(exc)(f"{path}: {exc}") from exc
            return LoadedState(header=header, state=state, path=path, signed=signed), None

        return self._newest_valid(tenant, load)

    def _newest_valid(
        self, tenant: str, load: Callable[[int, Path], tuple[_Loaded | None, str | None]]
    ) -> _Loaded | None:
        """Walk generations newest first; `load(generation, path)` gives a result or the reason
        to skip a file.

        A corrupt, unreadable or refused file is skipped with its reason; anything else `load`
        raises (a newer format version, a codec this code cannot use) stops the walk.
        """
        directory = self.snapshot_dir(tenant)
        try:
            candidates = self._scan(tenant)
        except OSError as exc:
            raise SnapshotError(f"cannot list {directory}: {exc}") from exc
        if not candidates:
            return None
        skipped: list[tuple[str, str]] = []
        for generation, path in candidates:
            try:
                result, reason = load(generation, path)
            except SnapshotCorrupt as exc:
                skipped.append((str(path), exc.problem))
                continue
            except SnapshotRefused as exc:
                skipped.append((str(path), REFUSED + exc.problem))
                continue
            except OSError as exc:
                skipped.append((str(path), f"cannot read: {exc}"))
                continue
            if result is None:
                skipped.append((str(path), str(reason)))
                continue
            result.skipped = skipped
            return result
        raise NoValidSnapshot(tenant, skipped)

    def oldest_kept_journal_pos(self, tenant: str) -> int | None:
        """The journal must keep every command from this position on.

        Any kept generation may be the one a restore falls back to, so this is the lowest
        journal_pos among them. None when no generation has a readable header: keep the
        whole journal.
        """
        positions = [i.header.journal_pos for i in self.generations(tenant) if i.header]
        return min(positions) if positions else None

    def delete_tenant(self, tenant: str) -> None:
        """Remove every snapshot of the tenant (not while a save for it runs).

        The tenant folder itself goes only when nothing else is left in it.
        """
        directory = self.snapshot_dir(tenant)
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    os.unlink(entry.path)
            directory.rmdir()
            fsync_dir(directory.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SnapshotWriteError(f"cannot delete {directory}: {exc}") from exc
        # Not empty (the journal lives there too) or already gone: leave it. An empty
        # folder that comes back after a crash is harmless, so a failed fsync is too.
        with contextlib.suppress(OSError):
            directory.parent.rmdir()
            fsync_dir(self.layout.tenants_dir)

    def _scan(self, tenant: str) -> list[tuple[int, Path]]:
        """(generation, path) of every complete snapshot file, newest first; [] if none."""
        return [(g, self.path_for(tenant, g)) for g in reversed(self.layout.generations(tenant))]


@contextmanager
def _locked_dir(directory: Path, tenant: str) -> Iterator[int]:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapshotWriteError(f"cannot open {directory}: {exc}") from exc
    try:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SnapshotWriteError(
                    f"another save for tenant {tenant!r} is in progress"
                ) from exc
            raise SnapshotWriteError(f"cannot lock {directory}: {exc}") from exc
        yield dir_fd
    finally:
        os.close(dir_fd)  # also releases the lock


def _remove_stale_tmp(directory: Path) -> list[str]:
    # Safe under the save lock: a temp file here belongs to a save that died.
    notes: list[str] = []
    try:
        with os.scandir(directory) as entries:
            stale = [Path(e.path) for e in entries if e.name.endswith(TEMP_SUFFIX)]
    except OSError as exc:
        notes.append(f"could not look for stale temp files in {directory}: {exc}")
        return notes
    for path in stale:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            notes.append(f"could not remove stale temp file {path}: {exc}")
            continue
        notes.append(f"removed stale temp file {path} (a save that did not finish)")
    return notes
