"""Admin nonces already accepted, remembered for the replay window, on disk across restarts.

`switchboard.signing.Verifier` asks `SeenNonces` two things: has this nonce been accepted
within the window (before the body is read), and, once the signature checks out, `add` it,
which refuses a nonce that another request took in the meantime. The router opens the store
on `<data-dir>/nonces` (`Config.nonce_file`), so a signed request captured before a restart
is still refused after it; without a path the store lives in memory only (in-process tests).

File format (version 1): ASCII text, one record per line, fields separated by one space.

    switchboard-nonces 1       first line: what the file is and its format version
    N <expires_at> <nonce>     an accepted nonce (16-128 visible ASCII characters, never a
                               space); <expires_at> is Unix seconds, a decimal integer: after it
                               the nonce's timestamp has left the window, any replay is refused
                               as stale, and the record may be dropped
    F <floor>                  the count cap forced out a nonce still inside the window:
                               a request whose expiry is not after <floor> is refused

What is on disk when: `add` appends its record (O_APPEND) and fsyncs the file before it
returns, that is before the request it admits is acted on; the file's name was made durable
when the file was created. `open` reads the file and rewrites it with only the live records
(snapshots.durable.write_atomic: temp file, fsync, rename, fsync the folder), and so does
`add` once the file holds more than twice as many records as are live (and at least
COMPACT_MIN_RECORDS). A line that does not parse is skipped when reading: only the last line
can be torn (a crash during an append), and its request was not acted on, since its fsync
had not returned. A failed write or fsync is final for the file (STYLE.md): `add` raises
StorageFailed and the next `add` rewrites the file whole instead of appending to it.

Limits: at most `max_nonces` live records (default 100,000); past it the nonce nearest its
expiry is forgotten early and the floor rises, so the cap can refuse a legitimate request
signed before the newest forgotten one, never admit a replay. The file stays under about
2 x max_nonces lines of at most 150 bytes (30 MB at the very worst; a few KB in practice).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import threading
import time
from pathlib import Path

from snapshots.durable import write_all, write_atomic
from switchboard.errors import ConfigError, StorageFailed

HEADER = b"switchboard-nonces 1\n"
DEFAULT_MAX_NONCES = 100_000
COMPACT_MIN_RECORDS = 1024

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


class NonceSeen(Exception):
    """`add`: the nonce was accepted before and has not expired."""


class NonceBelowFloor(Exception):
    """`add`: the nonce expires no later than one the count cap forced out early."""


class SeenNonces:
    """Accepted nonces, each with the moment its timestamp leaves the window.

    `is_seen` and `floor` are read without the lock (a dict lookup and a float read are
    atomic under the GIL), so the event loop never waits on an fsync running in `add`.
    """

    def __init__(self, *, max_nonces: int = DEFAULT_MAX_NONCES) -> None:
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self._max_nonces = max_nonces
        self._seen: dict[str, float] = {}  # nonce -> expires_at
        self._expiries: list[tuple[float, str]] = []  # min-heap over the same entries
        self._floor = float("-inf")  # newest expiry forgotten before its time
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._fd: int | None = None  # the file, open for appending; None: rewrite it first
        self._records_in_file = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, now: float | None = None,
             max_nonces: int = DEFAULT_MAX_NONCES) -> SeenNonces:
        """The store kept in `path`: its live records loaded, the file rewritten with only
        those (durable when this returns). Raises OSError when the file cannot be read or
        written, ConfigError when it is not a nonce file."""
        now = time.time() if now is None else now
        store = cls(max_nonces=max_nonces)
        store._path = Path(path)
        try:
            data = store._path.read_bytes()
        except FileNotFoundError:
            data = b""
        if data and not data.startswith(HEADER):
            raise ConfigError(
                f"{store._path} is not a switchboard nonce file (format "
                f"{HEADER.decode().strip()!r}); move it away and start again")
        for line in data[len(HEADER):].split(b"\n"):
            store._load_record(line, now)
        store._prune(now)
        store._evict_over_cap()
        store._rewrite(now)
        return store

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def floor(self) -> float:
        return self._floor

    def is_seen(self, nonce: str, now: float) -> bool:
        expires_at = self._seen.get(nonce)
        return expires_at is not None and expires_at >= now

    def add(self, nonce: str, expires_at: float, now: float) -> None:
        """Remember `nonce` until `expires_at`. NonceSeen if it is remembered already,
        NonceBelowFloor if the cap has forgotten a nonce expiring later. With a file: the
        record is on stable storage when this returns, else StorageFailed (the nonce stays
        refused in memory, and the request must not be acted on). May block on an fsync."""
        with self._lock:
            self._prune(now)
            if nonce in self._seen:
                raise NonceSeen(nonce)
            if expires_at <= self._floor:
                raise NonceBelowFloor(nonce)
            floor_before = self._floor
            self._seen[nonce] = expires_at
            heapq.heappush(self._expiries, (expires_at, nonce))
            self._evict_over_cap()
            if self._path is None:
                return
            record = _record(nonce, expires_at)
            if self._floor != floor_before:
                record += _floor_record(self._floor)
            try:
                if self._fd is None or self._records_in_file >= max(
                    COMPACT_MIN_RECORDS, 2 * len(self._seen)
                ):
                    self._rewrite(now)
                else:
                    write_all(self._fd, record)
                    os.fsync(self._fd)
                    self._records_in_file += record.count(b"\n")
            except OSError as exc:
                self._forget_file()  # never append to a file whose write or fsync failed
                raise StorageFailed(
                    f"cannot record the admin nonce in {self._path}: {exc.strerror or exc}"
                ) from exc

    # --- inside the lock, or before the store is shared ------------------------------------

    def _load_record(self, line: bytes, now: float) -> None:
        fields = line.split(b" ")
        try:
            if fields[0] == b"N" and len(fields) == 3 and fields[2]:
                expires_at = float(int(fields[1]))
                nonce = fields[2].decode("ascii")
                if expires_at >= now and expires_at > self._seen.get(nonce, -math.inf):
                    self._seen[nonce] = expires_at
                    heapq.heappush(self._expiries, (expires_at, nonce))
            elif fields[0] == b"F" and len(fields) == 2:
                self._floor = max(self._floor, float(int(fields[1])))
        except (ValueError, UnicodeDecodeError):
            pass  # a torn last line: its request was never acted on

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            expired_at, nonce = heapq.heappop(self._expiries)
            if self._seen.get(nonce) == expired_at:
                del self._seen[nonce]

    def _evict_over_cap(self) -> None:
        while len(self._seen) > self._max_nonces:
            evicted_at, evicted = heapq.heappop(self._expiries)
            if self._seen.get(evicted) == evicted_at:
                del self._seen[evicted]
                self._floor = max(self._floor, evicted_at)

    def _rewrite(self, now: float) -> None:
        """Replace the file with the live records and reopen it for appending."""
        assert self._path is not None
        self._forget_file()
        records = [HEADER]
        if self._floor >= now:  # an older floor refuses nothing the window does not
            records.append(_floor_record(self._floor))
        records += [_record(nonce, expires_at) for nonce, expires_at in self._seen.items()]
        write_atomic(self._path, b"".join(records), mode=0o600)
        self._fd = os.open(self._path, _APPEND)
        self._records_in_file = len(records) - 1

    def _forget_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _record(nonce: str, expires_at: float) -> bytes:
    # Rounded up: kept a fraction of a second longer, never shorter.
    return f"N {math.ceil(expires_at)} {nonce}\n".encode("ascii")


def _floor_record(floor: float) -> bytes:
    return f"F {math.ceil(floor)}\n".encode("ascii")
