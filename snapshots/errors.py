"""Errors raised by the snapshot format, codecs and stores.

SnapshotError            base class; catch this to handle any snapshot problem
  SnapshotCorrupt        a file fails verification: bad magic, bad header CRC, a header field
                         missing or of the wrong type, payload length mismatch, checksum
                         mismatch, truncated, trailing bytes. The message names the file and
                         exactly what is wrong. The store falls back to an older generation.
    SegmentCorrupt       one segment of a segmented snapshot (snapshots/segments.py) fails
                         its checksum or is missing, found when it is loaded (lazily).
  SnapshotRefused        a file this restore must not load, whatever its integrity; the store
                         falls back to an older generation, as for a corrupt one, and says why:
    SnapshotNotSigned    "not signed by this deployment": a signed file whose MAC does not
                         verify under this deployment's snapshot key (or there is no key to
                         check it with), or an unsigned file of a codec that runs code (pickle)
                         while unsigned files are not allowed (--allow-unsigned).
    SnapshotWrongCodec   the header names a codec other than the one the app declares ("codec
                         pickle but the app declares msgpack"): pickle is never loaded for an
                         app that did not opt in.
  SnapshotKeyError       the snapshot key file is missing, unreadable or empty (snapshots.mac).
  SnapshotVersionError   the file's format version is newer than this code reads (its header
                         CRC is valid, so this is a real newer file, not a flipped byte). The
                         store does not fall back past it: the tenant needs newer code.
  SnapshotWriteError     an I/O error while writing a snapshot (ENOSPC, EIO, EFBIG, a failed
                         fsync). The new generation does not count as written; older
                         generations are untouched.
  NoValidSnapshot        a tenant has snapshot files but none verifies; carries every
                         (path, reason) pair so the operator sees all of them.
  InvalidTenantName      (also a ValueError) the name breaks the rule in contract/names.py;
                         raised before any path is built, so no path traversal is possible.
  CodecError             an unknown codec name, a value the codec cannot encode, or a payload
                         that does not decode.
  UnsafeCodec            pickle was asked for where the caller allows only data codecs
                         (pickle runs code from its input).
  ExportFileError        an export file (snapshots.exportfile) is damaged, truncated, not an
                         export at all, or of a newer format version; the message says which.
"""

from __future__ import annotations

from contract.names import RULE


class SnapshotError(Exception):
    """Base class for every error this package raises on purpose."""


class SnapshotCorrupt(SnapshotError):
    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: corrupt snapshot: {problem}")
        self.source = source
        self.problem = problem


class SegmentCorrupt(SnapshotCorrupt):
    """A segment's bytes are missing or fail their checksum; `name` is the segment's."""

    def __init__(self, source: str, name: str, problem: str) -> None:
        super().__init__(source, f"segment {name!r}: {problem}")
        self.segment = name


class SnapshotRefused(SnapshotError):
    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: refused: {problem}")
        self.source = source
        self.problem = problem


class SnapshotNotSigned(SnapshotRefused):
    pass


class SnapshotWrongCodec(SnapshotRefused):
    pass


class SnapshotKeyError(SnapshotError):
    pass


class SnapshotVersionError(SnapshotError):
    def __init__(self, source: str, found: int, supported: int) -> None:
        super().__init__(
            f"{source}: snapshot format version {found} is newer than this code reads "
            f"(up to {supported}); run newer Switchboard code to load it"
        )
        self.source = source
        self.found = found
        self.supported = supported


class SnapshotWriteError(SnapshotError):
    """The save failed; older generations are untouched."""


class NoValidSnapshot(SnapshotError):
    def __init__(self, tenant: str, failures: list[tuple[str, str]]) -> None:
        lines = "; ".join(f"{path}: {reason}" for path, reason in failures)
        super().__init__(
            f"tenant {tenant!r} has {len(failures)} snapshot file(s) and none verifies: {lines}"
        )
        self.tenant = tenant
        self.failures = failures


class InvalidTenantName(SnapshotError, ValueError):
    def __init__(self, name: object) -> None:
        shown = repr(name)
        if len(shown) > 80:
            shown = shown[:80] + "..."
        super().__init__(f"bad tenant name {shown}: {RULE}")
        self.name = name


class CodecError(SnapshotError):
    pass


class UnsafeCodec(SnapshotError):
    pass


class ExportFileError(SnapshotError):
    pass
