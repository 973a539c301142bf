"""The snapshot key and the MACs made with it: the one home of the signing scheme that
snapshots (snapshots/format.py) and journal segments (tenant/journal_format.py) share.

Why: a payload checksum anyone can recompute proves nothing about who wrote a file, and a
pickle payload runs code when it is loaded. A keyed MAC lets a worker tell the files this
deployment wrote from files planted in its data dir (DESIGN.md "Decisions": keys and files).

The key file
------------
`<data-dir>/snapshot.key` by default, 0600, created by `switchboard serve` on first start
(switchboard.signing.ensure_key: 32 random bytes as 64 hex characters and a newline);
`--snapshot-key-file FILE` or SWITCHBOARD_SNAPSHOT_KEY_FILE name another. Hosts that migrate
tenants to each other or form a cluster share it. The key is the file's contents stripped of
surrounding whitespace, as bytes (the admin key's rule, switchboard.signing.load_key); a key
longer than BLAKE2b's 64-byte limit is first hashed to 64 bytes (BLAKE2b-512, person
b"sb-key"), so any key file works and the 64-character ones serve writes are used as they are.

The MACs
--------
Keyed BLAKE2b (RFC 7693), with a personalisation string per use, so a MAC made for one kind of
object never verifies as another kind's, under the same key:

    use                     person              digest   over
    snapshot header         b"sb-snapshot-v2"   32       snapshots/format.py, version 2
    journal segment header  b"sb-jsegment-v2"   32       tenant/journal_format.py, version 2
    journal record          b"sb-jrecord-v2"    16       its segment header's MAC, then the
                                                         record's payload

A journal record's MAC is truncated to 16 bytes (128 bits, the tag length of AES-GCM and
Poly1305): a forger without the key has no offline way to test a guess, so each guess costs a
worker restore, and 2^-128 per guess is out of reach; the 16 bytes saved on every record keep a
small command's record small. Headers keep the full 32 bytes, one per file.

MACs are compared in constant time (hmac.compare_digest). Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from snapshots.errors import SnapshotKeyError

__all__ = [
    "KEY_ENV", "KEY_FILE_NAME", "MAC_BYTES", "RECORD_MAC_BYTES", "RecordSigner",
    "WriterIdentity", "default_key_path", "find_key_file", "load_key", "load_key_if_present",
    "macs_equal", "segment_mac", "snapshot_mac",
]

KEY_FILE_NAME = "snapshot.key"
KEY_ENV = "SWITCHBOARD_SNAPSHOT_KEY_FILE"
MAC_BYTES = 32
RECORD_MAC_BYTES = 16
_MAX_KEY_BYTES = 64  # BLAKE2b's limit

_SNAPSHOT_PERSON = b"sb-snapshot-v2"
_SEGMENT_PERSON = b"sb-jsegment-v2"
_RECORD_PERSON = b"sb-jrecord-v2"
_KEY_PERSON = b"sb-key"


@dataclass(frozen=True)
class WriterIdentity:
    """What a process writing a tenant's files signs them with and stamps on them.

    key: the deployment's snapshot key; None writes unsigned files and trusts no signed one.
    epoch: the tenant's fencing token (DESIGN.md "Between hosts"); creation_id: which
    incarnation of the tenant's name (empty until the tenant table hands one out).
    """

    key: bytes | None = None
    epoch: int = 1
    creation_id: str = ""

    def __post_init__(self) -> None:
        if self.key is not None and not self.key:
            raise ValueError("a snapshot key must not be empty")
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, not {self.epoch!r}")

    def __repr__(self) -> str:  # never print the key
        key = "None" if self.key is None else "<key>"
        return (f"WriterIdentity(key={key}, epoch={self.epoch}, "
                f"creation_id={self.creation_id!r})")


# --- the key file ------------------------------------------------------------------------------


def default_key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEY_FILE_NAME


def find_key_file(explicit: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str],
                  env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """Which key file a tool uses: `explicit` (a flag), else $SWITCHBOARD_SNAPSHOT_KEY_FILE,
    else `<data-dir>/snapshot.key`. Returns the path and whether it was named (flag or env):
    a named file must exist, the default may be absent (then nothing is signed or trusted)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit), True
    if env.get(KEY_ENV):
        return Path(env[KEY_ENV]), True
    return default_key_path(data_dir), False


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The key in `path`: its contents stripped of whitespace, as bytes (fitted to BLAKE2b's
    64-byte limit, see the module docstring). SnapshotKeyError if it is missing, unreadable
    or empty."""
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise SnapshotKeyError(
            f"no snapshot key at {name}: `switchboard serve` creates it on first start; pass "
            f"--snapshot-key-file or set {KEY_ENV} to use another"
        ) from exc
    except OSError as exc:
        raise SnapshotKeyError(f"cannot read snapshot key {name}: {exc.strerror or exc}") from exc
    key = data.strip()
    if not key:
        raise SnapshotKeyError(f"snapshot key file {name} is empty")
    if len(key) > _MAX_KEY_BYTES:
        key = hashlib.blake2b(key, digest_size=_MAX_KEY_BYTES, person=_KEY_PERSON).digest()
    return key


def load_key_if_present(path: str | os.PathLike[str], *, required: bool) -> bytes | None:
    """load_key, or None when the file does not exist and `required` is false."""
    if not required and not os.path.exists(path):
        return None
    return load_key(path)


# --- MACs --------------------------------------------------------------------------------------


def snapshot_mac(key: bytes, data: bytes | memoryview) -> bytes:
    """The 32-byte MAC of a snapshot's signed bytes (snapshots/format.py says which)."""
    return hashlib.blake2b(data, digest_size=MAC_BYTES, key=key, person=_SNAPSHOT_PERSON).digest()


def segment_mac(key: bytes, data: bytes | memoryview) -> bytes:
    """The 32-byte MAC of a journal segment header (tenant/journal_format.py says which bytes)."""
    return hashlib.blake2b(data, digest_size=MAC_BYTES, key=key, person=_SEGMENT_PERSON).digest()


def macs_equal(a: bytes | memoryview, b: bytes | memoryview) -> bool:
    return hmac.compare_digest(bytes(a), bytes(b))


class RecordSigner:
    """MACs of the records of one journal segment: keyed BLAKE2b-128 over the segment
    header's MAC, then the record's payload. The keyed state after the segment's MAC is set up
    once; each record costs a copy of it and one pass over its payload."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes, segment_header_mac: bytes) -> None:
        self._base = hashlib.blake2b(digest_size=RECORD_MAC_BYTES, key=key,
                                     person=_RECORD_PERSON)
        self._base.update(segment_header_mac)

    def mac(self, payload: bytes | memoryview) -> bytes:
        h = self._base.copy()
        h.update(payload)
        return h.digest()

    def verifies(self, payload: bytes | memoryview, mac: bytes | memoryview) -> bool:
        return hmac.compare_digest(self.mac(payload), bytes(mac))
