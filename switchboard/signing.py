"""Admin API request signing: HMAC-SHA256 over the request, with a replay window.

Shared by the admin API (`Verifier`) and every client (`sign_request`, which the CLI, the
tests and the bench reach through `ops.client.AdminAuth`, an httpx.Auth; httpx stays out of
this module because the router imports it).

Wire format (the Contract in DESIGN.md). Every admin request carries three headers:

    X-Switchboard-Timestamp: <Unix seconds, decimal integer>
    X-Switchboard-Nonce:     <16 to 128 visible ASCII characters, random per request>
    Authorization:           Switchboard-HMAC-SHA256 <64 lowercase hex digits>

The signature is HMAC-SHA256, keyed with the key file's contents stripped of surrounding
whitespace (as bytes), over these five fields joined by a single b"\\n" with no spaces:

    METHOD                 upper case, e.g. POST
    PATH?QUERY             the raw request target as sent: the percent-encoded path, plus
                           "?" and the raw query string only when there is a query
    TIMESTAMP              the header's text, verbatim
    NONCE                  the header's text, verbatim
    hex(SHA-256(body))     lowercase hex digest of the exact body bytes (empty body included)

A request is refused when a header is missing or malformed, when its timestamp is more than
`window_s` (300 s) away from the server's clock in either direction, when its nonce was already
accepted within the window, or when the signature does not match.

Verification comes in three steps, so a server can refuse a request before reading its body
(switchboard/admin.py does): `Verifier.check_headers` (everything the headers alone decide:
presence, format, the timestamp's window, a nonce not seen), `check_signature` (the HMAC, given
the SHA-256 of the body as it was read), then `accept` (remember the nonce; durable across
restarts when the verifier's `SeenNonces` has a file, switchboard/nonces.py). `verify` does all
three over a body already in memory.

Key file: 32 random bytes written as 64 hex characters and a newline, mode 0600, created once
and never rewritten or loosened.

Key rotation (`AdminKeys`): while `<key file>.next` (e.g. `<data-dir>/admin.key.next`, mode
0600) exists, a request signed with either key is accepted. Rotate by writing the new key
there, moving clients to it, then `mv admin.key.next admin.key`: from then on the old key is
refused. The router looks at both files again at most once a second (a stat each), so no
restart is needed; a `.next` file that is not private, or is empty, is ignored with a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapshots.durable import create_exclusive, make_dirs
from switchboard.errors import ConfigError, SwitchboardError
from switchboard.nonces import DEFAULT_MAX_NONCES, NonceBelowFloor, NonceSeen, SeenNonces

SCHEME = "Switchboard-HMAC-SHA256"
TIMESTAMP_HEADER = "X-Switchboard-Timestamp"
NONCE_HEADER = "X-Switchboard-Nonce"
AUTHORIZATION_HEADER = "Authorization"

DEFAULT_WINDOW_S = 300.0
MIN_NONCE_CHARS = 16
MAX_NONCE_CHARS = 128  # bounds the memory one remembered nonce can take

_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_NONCE_RE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no spaces, no control characters
_HEX_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}")
NEXT_KEY_SUFFIX = ".next"
KEY_RECHECK_S = 1.0

log = logging.getLogger(__name__)


class AuthError(SwitchboardError):
    """A request failed verification. `reason` is the short category the 401 body starts with:
    missing signature, malformed signature, stale timestamp, replayed nonce or bad signature."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class KeyFileError(ConfigError):
    """The admin key file is missing, unreadable, empty, or already exists when creating it."""


# --- key files -------------------------------------------------------------------------------


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The key file's contents stripped of whitespace, as bytes."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"no admin key at {os.fspath(path)}: `switchboard serve` creates it on first start; "
            "pass --key-file or set SWITCHBOARD_KEY_FILE to use another"
        ) from exc
    except OSError as exc:
        raise KeyFileError(
            f"cannot read admin key {os.fspath(path)}: {exc.strerror or exc}"
        ) from exc
    key = data.strip()
    if not key:
        raise KeyFileError(f"admin key file {os.fspath(path)} is empty")
    return key


def create_key(path: str | os.PathLike[str]) -> bytes:
    """Create a new key file readable by its owner only and return the key.

    Written with snapshots.durable.create_exclusive: other processes see either no key file
    or a complete one, an existing file is never overwritten or loosened (KeyFileError
    instead), and when this returns the file and its name are on stable storage; a failed
    fsync raises OSError rather than hand out a key that a power loss could take back. The
    parent directory is created if needed.
    """
    target = Path(path)
    make_dirs(target.parent)
    key = secrets.token_hex(32).encode("ascii")
    try:
        create_exclusive(target, key + b"\n", mode=0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"admin key {target} already exists; not overwriting it") from exc
    return key


def ensure_key(path: str | os.PathLike[str]) -> bytes:
    """Load the key file, creating it first if it does not exist (what `serve` does at start)."""
    try:
        return load_key(path)
    except KeyFileError:
        if Path(path).exists():
            raise
    try:
        return create_key(path)
    except KeyFileError:
        return load_key(path)  # another process created it between our two looks


def next_key_path(path: str | os.PathLike[str]) -> Path:
    """Where the key that replaces `path` waits during a rotation: `admin.key.next`."""
    return Path(os.fspath(path) + NEXT_KEY_SUFFIX)


class AdminKeys:
    """The keys a Verifier accepts: the key file's, and during a rotation the `.next` file's.

    `current()` re-reads the files when their identity (inode, size, mtime, ctime) changed, looking
    at most once per KEY_RECHECK_S; between looks it returns what it read last. The main key
    must stay readable: if it goes away, the last one read is kept (and logged) rather than
    lock every client out.
    """

    def __init__(self, path: str | os.PathLike[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.next_path = next_key_path(path)
        self._clock = clock
        self._main = load_key(self.path)
        self._next: bytes | None = None
        self._seen: tuple[object, object] = (None, None)
        self._checked_at = -KEY_RECHECK_S
        self.current()

    def current(self) -> tuple[bytes, ...]:
        now = self._clock()
        if now - self._checked_at >= KEY_RECHECK_S:
            self._checked_at = now
            self._refresh()
        return (self._main,) if self._next is None else (self._main, self._next)

    def _refresh(self) -> None:
        seen = (_identity(self.path), _identity(self.next_path))
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self._main = load_key(self.path)
        except KeyFileError as exc:
            log.error("admin key: %s; still accepting the key read before", exc)
        self._next = None
        if seen[1] is None:
            return
        try:
            _check_private_key(self.next_path)
            self._next = load_key(self.next_path)
        except (KeyFileError, OSError) as exc:
            log.error("ignoring the next admin key %s: %s", self.next_path, exc)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    # ctime too: a chmod that makes a .next file private changes nothing else.
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _check_private_key(path: Path) -> None:
    info = path.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise KeyFileError(f"{path} must belong to this user and be mode 0600 "
                           f"(it is {info.st_mode & 0o777:04o}, uid {info.st_uid})")


# --- signing ---------------------------------------------------------------------------------


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def string_to_sign(
    method: str | bytes, path_qs: str | bytes, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The exact bytes the HMAC covers (see the module docstring)."""
    return _string_to_sign(method, path_qs, timestamp, nonce, hashlib.sha256(body).hexdigest())


def _string_to_sign(
    method: str | bytes, path_qs: str | bytes, timestamp: str, nonce: str, body_sha256: str
) -> bytes:
    return b"\n".join(
        [
            _as_bytes(method).upper(),
            _as_bytes(path_qs),
            timestamp.encode("ascii"),
            nonce.encode("ascii"),
            body_sha256.lower().encode("ascii"),
        ]
    )


def compute_signature(
    key: bytes, method: str | bytes, path_qs: str | bytes, timestamp: str, nonce: str,
    body: bytes,
) -> str:
    return _hmac_hex(key, string_to_sign(method, path_qs, timestamp, nonce, body))


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_request(
    key: bytes,
    method: str | bytes,
    path_qs: str | bytes,
    body: bytes,
    *,
    timestamp: int | str | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers that authenticate one request. `path_qs` is the raw path, plus
    "?query" only when there is a query, exactly as it goes on the wire."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_hex(12) if nonce is None else nonce
    signature = compute_signature(key, method, path_qs, ts, nonce, body)
    return {
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
        AUTHORIZATION_HEADER: f"{SCHEME} {signature}",
    }


def sign_digest(key: bytes, method: str, path_qs: str, body_sha256: str) -> dict[str, str]:
    """`sign_request` for a body known by its SHA-256 hex digest (a large file streamed
    after the headers: switchboard/handover.py)."""
    ts = str(int(time.time()))
    nonce = secrets.token_hex(12)
    signature = _hmac_hex(key, _string_to_sign(method, path_qs, ts, nonce, body_sha256))
    return {
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
        AUTHORIZATION_HEADER: f"{SCHEME} {signature}",
    }


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedHeaders:
    """The signing headers of one request that passed `Verifier.check_headers`."""

    timestamp: str  # verbatim, as signed
    nonce: str
    signature: str  # 64 lowercase hex digits
    expires_at: float  # when the timestamp leaves the window (and the nonce may be forgotten)


class Verifier:
    """Checks signed requests and remembers accepted nonces for the replay window.

    The nonces live in a `SeenNonces` (switchboard/nonces.py): in memory by default, in
    `<data-dir>/nonces` for the router, so a restart does not reopen replays. Memory is
    bounded: a nonce is forgotten once its timestamp has left the window (it could not pass
    the staleness check again anyway), and at most `max_nonces` are kept; when the cap forces
    out a nonce still inside the window, every request whose timestamp is not newer than the
    forgotten one's is refused, so the cap can refuse a legitimate old request but can never
    let a replay through.
    """

    def __init__(
        self,
        key: bytes | AdminKeys,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.time,
        *,
        max_nonces: int = DEFAULT_MAX_NONCES,
        nonces: SeenNonces | None = None,
    ) -> None:
        if not key:
            raise ValueError("the admin key must not be empty")
        # One fixed key, or the key file and its rotation successor (AdminKeys).
        self._keys: Callable[[], Sequence[bytes]] = (
            key.current if isinstance(key, AdminKeys) else (lambda: (key,)))
        self.window_s = window_s
        self._clock = clock
        self._nonces = nonces if nonces is not None else SeenNonces(max_nonces=max_nonces)

    def __len__(self) -> int:
        return len(self._nonces)

    def verify(
        self, method: str | bytes, path_qs: str | bytes, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Return if the request is authentic and fresh (and remember its nonce), else raise
        AuthError. All three steps over a body already in memory."""
        signed = self.check_headers(headers)
        self.check_signature(signed, method, path_qs, hashlib.sha256(body).hexdigest())
        self.accept(signed)

    def check_headers(self, headers: Mapping[str, str]) -> SignedHeaders:
        """Everything the headers alone decide, before any of the body is read: the three
        headers present and well formed, the timestamp inside the window, the nonce not
        accepted within it. AuthError otherwise."""
        lowered = {k.lower(): v for k, v in headers.items()}
        timestamp = lowered.get(TIMESTAMP_HEADER.lower())
        nonce = lowered.get(NONCE_HEADER.lower())
        authorization = lowered.get(AUTHORIZATION_HEADER.lower())
        if not authorization or not timestamp or not nonce:
            missing = [
                name
                for name, value in (
                    (AUTHORIZATION_HEADER, authorization),
                    (TIMESTAMP_HEADER, timestamp),
                    (NONCE_HEADER, nonce),
                )
                if not value
            ]
            plural = "s" if len(missing) > 1 else ""
            raise AuthError("missing signature", f"no {', '.join(missing)} header{plural}")

        scheme, _, given = authorization.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != SCHEME.lower():
            raise AuthError("missing signature", f"Authorization is not {SCHEME}")
        if not _HEX_SIGNATURE_RE.fullmatch(given):
            raise AuthError("malformed signature", "expected 64 hex digits")
        if not _TIMESTAMP_RE.fullmatch(timestamp):
            raise AuthError("malformed signature", f"{TIMESTAMP_HEADER} must be Unix seconds")
        if not (
            MIN_NONCE_CHARS <= len(nonce) <= MAX_NONCE_CHARS and _NONCE_RE.fullmatch(nonce)
        ):
            raise AuthError(
                "malformed signature",
                f"{NONCE_HEADER} must be {MIN_NONCE_CHARS} to {MAX_NONCE_CHARS} visible "
                "characters",
            )

        now = self._clock()
        sent_at = int(timestamp)
        skew = now - sent_at
        if abs(skew) > self.window_s:
            direction = "behind" if skew > 0 else "ahead of"
            raise AuthError(
                "stale timestamp",
                f"{abs(skew):.0f} s {direction} the server clock (window {self.window_s:.0f} s)",
            )
        signed = SignedHeaders(timestamp, nonce, given.lower(), sent_at + self.window_s)
        if self._nonces.is_seen(nonce, now):
            raise self._replayed()
        if signed.expires_at <= self._nonces.floor:
            raise self._below_floor()
        return signed

    def check_signature(
        self, signed: SignedHeaders, method: str | bytes, path_qs: str | bytes, body_sha256: str
    ) -> None:
        """The HMAC over the request with the body's SHA-256 (hex) as it was read: AuthError
        "bad signature" when it does not match. Remembers nothing."""
        message = _string_to_sign(method, path_qs, signed.timestamp, signed.nonce, body_sha256)
        given = signed.signature.encode("ascii")
        # Compare as bytes of equal length in constant time (the hex was validated), against
        # every accepted key, so the time taken does not tell which key came closer.
        matches = [hmac.compare_digest(_hmac_hex(key, message).encode("ascii"), given)
                   for key in self._keys()]
        if not any(matches):
            raise AuthError("bad signature", "the request was not signed with this server's key")

    def accept(self, signed: SignedHeaders) -> None:
        """Remember the nonce of a request whose signature checked out; call it last, just
        before acting. AuthError if a concurrent request took the nonce first; StorageFailed
        when it cannot be recorded durably (then do not act). May block on an fsync: the
        router runs it in a thread."""
        # Only authentic requests get here, so unauthenticated traffic cannot fill the store.
        try:
            self._nonces.add(signed.nonce, signed.expires_at, self._clock())
        except NonceSeen:
            raise self._replayed() from None
        except NonceBelowFloor:
            raise self._below_floor() from None

    def _replayed(self) -> AuthError:
        return AuthError("replayed nonce",
                         f"nonce seen within the last {self.window_s:.0f} s; sign the request anew")

    @staticmethod
    def _below_floor() -> AuthError:
        return AuthError(
            "stale timestamp",
            "too many recent requests to rule out a replay; sign with the current time",
        )
