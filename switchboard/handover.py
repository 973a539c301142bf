"""The host-to-host transfer protocol of a tenant's move, independent of where records live.

A move from a source host to a target host is four signed admin calls from the source to the
target (the same signing as every admin call: DESIGN.md Contract; both hosts share admin.key):

    GET  /v1/host                          200 {"router_url", "admin_url", "host"}: who the
                                           target is (its advertised URLs)
    POST /v1/migrations/{name}/snapshot?creation_id=C&epoch=E&generation=G
                                           pre-copy. Body: the source's newest snapshot file as
                                           it is on disk (empty when the tenant has none;
                                           G = 0 then). The target verifies it (intact, signed by
                                           its own snapshot key, the same tenant and creation
                                           id) and stages it, not owned, not served. 200
                                           {"journal_pos": P} (P: the seq the snapshot covers).
                                           409 when the target holds this tenant at epoch >= E+1
                                           or another tenant of the name; 422 when it does not
                                           verify; 507 when the target cannot store it.
    POST /v1/migrations/{name}/commit?creation_id=C&epoch=E
                                           the switch. Body: a journal bundle (below) with the
                                           segments holding every record after P. The target
                                           installs snapshot + segments, records the tenant
                                           durably at epoch E+1 (the commit point), starts the
                                           worker and answers 200 {"router_url", "epoch",
                                           "pid", "started", "error"}. 409 when nothing matching
                                           is staged or the epoch is refused (nothing changed).
    POST /v1/migrations/{name}/resolve {"creation_id": C, "epoch": E}
                                           the outcome of a switch whose answer was lost (the
                                           source died or the connection broke): 200
                                           {"outcome": "committed"} when the target holds the
                                           tenant at epoch >= E+1, else the staged data is
                                           dropped and {"outcome": "aborted"}; a commit still
                                           running is waited for, and none can land after.

and one call back, from a host a tenant moved away from to the host it came from, so a chain
of forwards collapses (A->B->C: B tells A that the tenant is on C now):

    POST /v1/tenants/{name}/moved {"creation_id": C, "epoch": E, "moved_to": URL}
                                           200 TenantInfo; ignored (200) unless the tenant here
                                           is a moved copy of that creation id at an epoch < E.

Journal bundle (the commit body): a sequence of files, each

    name length (u16 BE) + name (UTF-8, a journal segment's file name `<seq:020d>.journal`)
    + size (u64 BE) + the file's bytes

and nothing after the last. Both the snapshot and the bundle are carried as they are on disk:
what protects them is the admin signature over the body's digest (nothing changed on the way)
and the snapshot and journal MACs under the shared snapshot.key (checked by the target: the
snapshot at pre-copy, the segments when its worker restores them).

Segmented snapshots (issue 16): the pre-copy ships one self-contained file, the staged
generation with every segment its index names inside it (`ship_snapshot`; the format is in
snapshots/segment_files.py), so the target restores it without any other file; its first
checkpoint writes the segments as its own segment files.

`TargetClient` makes these calls (httpx, imported only when a move runs: never on the proxy's
path); `write_bundle` / `read_bundle` write and read the bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from snapshots.durable import fsync_dir, write_all
from switchboard.errors import TargetRefused, TargetUnreachable, TransferFailed
from switchboard.signing import sign_digest

CHUNK_BYTES = 1 << 20
Progress = Callable[[int], Awaitable[None]]  # told each chunk's size as it goes out
_NAME_LENGTH = struct.Struct(">H")
_SIZE = struct.Struct(">Q")
SEGMENT_NAME = re.compile(r"(\d{20})\.journal")  # tenant/journal_format.py names segments so
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 600.0
SHIP_TIMEOUT_S = 600.0  # making the self-contained copy of a segmented snapshot


async def ship_snapshot(source: Path, out: Path, key_file: Path) -> None:
    """Put at `out` (a new file) the snapshot to pre-copy: a hard link to `source`, or for a
    segmented generation a self-contained copy signed with `key_file`'s key. Runs
    `python -m snapshots.segment_files ship` (the router never imports the snapshot reader).
    TransferFailed when it cannot (a damaged segment: the copy is not made)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "snapshots.segment_files", "ship", str(source), str(out),
        "--key-file", str(key_file), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(process.communicate(), SHIP_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise TransferFailed(err.decode(errors="replace").strip()[-500:]
                             or f"shipping {source.name} failed")


# --- the journal bundle --------------------------------------------------------------------


def segments_after(journal_dir: Path, journal_pos: int) -> list[Path]:
    """The segment files that hold a record with seq > journal_pos: the last one starting at
    or before journal_pos + 1, and every later one (tenant/journal_format.py: a segment runs
    up to the next one's first seq)."""
    try:
        names = sorted(n for n in os.listdir(journal_dir) if SEGMENT_NAME.fullmatch(n))
    except FileNotFoundError:
        return []
    firsts = [int(n[:20]) for n in names]
    start = 0
    for index, first in enumerate(firsts):
        if first <= journal_pos + 1:
            start = index
    return [journal_dir / n for n in names[start:]]


def write_bundle(files: list[Path], out: Path) -> int:
    """Write the bundle of `files` to `out` (a new file); returns its size."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    total = 0
    try:
        for path in files:
            name = path.name.encode()
            data = path.read_bytes()
            frame = _NAME_LENGTH.pack(len(name)) + name + _SIZE.pack(len(data))
            write_all(fd, frame)
            write_all(fd, data)
            total += len(frame) + len(data)
    finally:
        os.close(fd)
    return total


def read_bundle(bundle: Path, into: Path) -> list[Path]:
    """Unpack a bundle into the folder `into` (created; files fsynced, then the folder).
    TransferFailed for a malformed bundle or a name that is not a journal segment's."""
    into.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    with open(bundle, "rb") as f:
        while head := f.read(_NAME_LENGTH.size):
            if len(head) < _NAME_LENGTH.size:
                raise TransferFailed("the journal bundle is cut short")
            name = f.read(_NAME_LENGTH.unpack(head)[0]).decode("utf-8", "replace")
            if not SEGMENT_NAME.fullmatch(name):
                raise TransferFailed(f"the journal bundle holds {name!r}, not a journal segment")
            size_bytes = f.read(_SIZE.size)
            if len(size_bytes) < _SIZE.size:
                raise TransferFailed("the journal bundle is cut short")
            size = _SIZE.unpack(size_bytes)[0]
            path = into / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                left = size
                while left:
                    chunk = f.read(min(left, CHUNK_BYTES))
                    if not chunk:
                        raise TransferFailed("the journal bundle is cut short")
                    write_all(fd, chunk)
                    left -= len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            written.append(path)
    fsync_dir(into)
    return written


# --- the calls -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Which tenant moves: its name, creation id and its epoch on the source."""

    name: str
    creation_id: str
    epoch: int

    def query(self, **more: Any) -> str:
        return urlencode({"creation_id": self.creation_id, "epoch": self.epoch, **more})


def file_sha256(path: Path | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    if path is not None:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


class TargetClient:
    """Signed calls to a target host's admin API (the module docstring). Every method raises
    TargetRefused (it said no) or TargetUnreachable (no answer)."""

    def __init__(self, admin_url: str, key: bytes) -> None:
        import httpx  # only when a move runs: the router does not load it otherwise

        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call: too chatty
        self.base = admin_url.rstrip("/")
        self.key = key
        self.http = httpx.AsyncClient(
            base_url=self.base, timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))

    async def close(self) -> None:
        await self.http.aclose()

    async def host(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/host")

    async def stage(self, who: Identity, snapshot: Path | None, generation: int,
                    progress: Progress, *, source_router: str,
                    source_admin: str) -> dict[str, Any]:
        query = who.query(generation=generation, source_router=source_router,
                          source_admin=source_admin)
        path = f"/v1/migrations/{quote(who.name)}/snapshot?{query}"
        return await self._upload(path, snapshot, progress)

    async def commit(self, who: Identity, bundle: Path,
                     progress: Progress) -> dict[str, Any]:
        path = f"/v1/migrations/{quote(who.name)}/commit?{who.query()}"
        return await self._upload(path, bundle, progress)

    async def resolve(self, who: Identity) -> str:
        import json

        body = json.dumps({"creation_id": who.creation_id, "epoch": who.epoch}).encode()
        reply = await self._call("POST", f"/v1/migrations/{quote(who.name)}/resolve", body)
        return str(reply.get("outcome"))

    async def moved(self, who: Identity, moved_to: str) -> dict[str, Any]:
        import json

        body = json.dumps({"creation_id": who.creation_id, "epoch": who.epoch,
                           "moved_to": moved_to}).encode()
        return await self._call("POST", f"/v1/tenants/{quote(who.name)}/moved", body)

    async def call(self, method: str, path: str, body: bytes = b"") -> dict[str, Any]:
        """Any other signed call with a JSON answer (cluster mode: switchboard/cluster/)."""
        return await self._call(method, path, body)

    async def _upload(self, path: str, source: Path | None,
                      progress: Progress) -> dict[str, Any]:
        digest, size = file_sha256(source)

        async def chunks() -> AsyncIterator[bytes]:
            if source is None:
                return
            with open(source, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    await progress(len(chunk))
                    yield chunk

        headers = {"content-length": str(size), "content-type": "application/octet-stream"}
        return await self._call("POST", path, chunks(), digest=digest, headers=headers)

    async def _call(self, method: str, path: str, body: Any = b"", *, digest: str | None = None,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
        import httpx

        if digest is None:
            digest = hashlib.sha256(body).hexdigest()
        signed = {**(headers or {}), **sign_digest(self.key, method, path, digest)}
        try:
            response = await self.http.request(method, path, content=body, headers=signed)
        except httpx.HTTPError as exc:
            raise TargetUnreachable(f"no answer from {self.base}: {exc or type(exc).__name__}"
                                    ) from exc
        try:
            reply: Any = response.json()
        except ValueError:
            reply = {"error": response.text[:200]}
        if not isinstance(reply, dict):
            reply = {"error": str(reply)[:200]}
        if response.status_code >= 500 and response.status_code != 507:
            raise TargetUnreachable(f"{self.base} answered {response.status_code}: "
                                    f"{reply.get('error')}")
        if response.status_code >= 300:
            raise TargetRefused(response.status_code, f"{self.base} refused: "
                                f"{reply.get('error') or response.status_code}")
        answer: dict[str, Any] = reply
        return answer
