"""A synchronous client for the admin API (see `switchboard.admin`), used by the CLI, and
`AdminAuth`, the one way any of our HTTP clients (the CLI, the tests, the bench) signs an admin
call.

`AdminAuth` signs with `switchboard.signing.sign_request` over exactly the bytes and the request
target httpx puts on the wire: httpx builds the request, then hands it to the auth flow, then
sends it. Failures of any kind become `AdminError` with a message fit for one line on a
terminal.

httpx lives here and not in `switchboard.signing`, which the router imports: the router only
verifies signatures and has no use for an HTTP client.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from contract.names import is_valid_name
from ops.errors import AdminError
from ops.progress import Progress
from snapshots.durable import fsync_dir, write_all
from switchboard.errors import BadTenantName
from switchboard.signing import sign_request

__all__ = ["AdminAuth", "AdminClient", "AdminError", "check_tenant_name"]

# A new file only: never an existing one, never through a symlink.
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


UPLOAD_CHUNK_BYTES = 256 * 1024
# A batch create's names per request: its JSON stays under the admin API's 64 KiB body cap.
BATCH_CREATE_BYTES = 60_000


class AdminAuth(httpx.Auth):
    """Signs every request for the admin API (DESIGN.md Contract, `switchboard.signing`).

    Works with `httpx.Client` and `httpx.AsyncClient`. The body is read before signing
    (`requires_request_body`), since the signature covers its digest; the target signed is
    `request.url.raw_path`, the percent-encoded path and query as sent.
    """

    requires_request_body = True

    def __init__(self, key: bytes) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            sign_request(self._key, request.method, request.url.raw_path, request.content)
        )
        yield request


def check_tenant_name(name: str) -> str:
    """`name` if it follows the tenant-name rule, else AdminError. Checked before a name goes
    into a URL, so "a/b" or "a?b" cannot turn into another endpoint instead of a clear error."""
    if not is_valid_name(name):
        raise AdminError(str(BadTenantName(name)))
    return name


class AdminClient:
    def __init__(self, base_url: str, key: bytes, timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise AdminError(f"bad admin URL {base_url!r}: {exc}") from exc
        if url.scheme not in {"http", "https"} or not url.host:
            raise AdminError(f"bad admin URL {base_url!r}: expected http://HOST:PORT")
        self._timeout = timeout
        self._key = key
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, auth=AdminAuth(key))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- operations --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/v1/health"))

    def list_tenants(self) -> list[dict[str, Any]]:
        tenants = self._json(self._request("GET", "/v1/tenants")).get("tenants")
        if not isinstance(tenants, list):
            raise AdminError("the admin API answered without a tenant list")
        return tenants

    def get(self, name: str) -> dict[str, Any]:
        return self._json(self._request("GET", _tenant_path(name)))

    def create(self, name: str) -> dict[str, Any]:
        return self._json(self._request("POST", "/v1/tenants", {"name": check_tenant_name(name)}))

    def create_batches(self, names: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Create many tenants with the batch route, yielding each batch's TenantInfos once
        it is created. Each batch (a request under the admin API's 64 KiB body cap) is all
        or nothing; a failure leaves the batches before it created."""
        batch: list[str] = []
        size = 0
        for name in names:
            check_tenant_name(name)
            if batch and size + len(name) + 4 > BATCH_CREATE_BYTES:
                yield self._create_batch(batch)
                batch, size = [], 0
            batch.append(name)
            size += len(name) + 4  # the quotes, comma and space json.dumps puts around it
        if batch:
            yield self._create_batch(batch)

    def _create_batch(self, names: list[str]) -> list[dict[str, Any]]:
        tenants = self._json(self._request("POST", "/v1/tenants", {"names": names})).get("tenants")
        if not isinstance(tenants, list):
            raise AdminError("the admin API answered a batch create without a tenant list")
        return tenants

    def start(self, name: str) -> dict[str, Any]:
        return self._json(self._request("POST", _tenant_path(name) + "/start"))

    def checkpoint(self, name: str) -> dict[str, Any]:
        return self._json(self._request("POST", _tenant_path(name) + "/checkpoint"))

    def stop(self, name: str) -> dict[str, Any]:
        return self._json(self._request("POST", _tenant_path(name) + "/stop"))

    def remove(self, name: str) -> None:
        self._request("DELETE", _tenant_path(name))

    def dashboard_login(self) -> dict[str, Any]:
        """A one-time dashboard login: {"path": "/dashboard/login?token=...", "expires_in_s"}."""
        return self._json(self._request("POST", "/v1/dashboard/login-url"))

    def metrics(self) -> str:
        return self._request("GET", "/metrics").text

    def logs(self, name: str, lines: int) -> str:
        """The last `lines` lines of the tenant's log file."""
        return self._request("GET", _tenant_path(name) + f"/logs?n={lines}").text

    def migrate(self, name: str, to: str | None) -> Iterator[dict[str, Any]]:
        """Move the tenant to the host whose admin API is at `to` (None: back where it came
        from); the events of the move as the server streams them (switchboard/migration.py),
        the last one "done" or "failed"."""
        payload = {"to": to} if to else {"back": True}
        response = self._request("POST", _tenant_path(name) + "/migrate", payload, stream=True,
                                 timeout=httpx.Timeout(self._timeout, read=None))
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)
        except (httpx.HTTPError, ValueError) as exc:
            raise AdminError(f"the progress of moving {name} broke off ({exc}); `switchboard "
                             f"status {name}` on both hosts says where it serves") from exc
        finally:
            response.close()

    # --- debugging (switchboard/debugapi.py) --------------------------------------------------

    def attach(self, name: str, user: str, uid: int, read_only: bool) -> dict[str, Any]:
        return self._json(self._request("POST", _tenant_path(name) + "/attach",
                                        {"user": user, "uid": uid, "read_only": read_only}))

    def pin(self, name: str, version: str) -> dict[str, Any]:
        return self._json(self._request("POST", _tenant_path(name) + "/pin",
                                        {"version": version}))

    def unpin(self, name: str) -> dict[str, Any]:
        return self._json(self._request("POST", _tenant_path(name) + "/unpin"))

    def upgrade(self, name: str, to: str, timeout_s: float = 600.0) -> dict[str, Any]:
        """A shadow restore, then the switch: as long as a restore of the tenant takes."""
        return self._json(self._request("POST", _tenant_path(name) + "/upgrade", {"to": to},
                                        timeout=httpx.Timeout(max(self._timeout, timeout_s))))

    def code_versions(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/v1/code-versions"))

    def reclaim(self, name: str) -> dict[str, Any]:
        return self._json(self._request("POST", _tenant_path(name) + "/reclaim"))

    def remove_moved_copy(self, name: str) -> None:
        self._request("DELETE", _tenant_path(name) + "/moved-copy")

    def follow_logs(self, name: str, lines: int) -> Iterator[str]:
        """The last `lines` lines, then each new line as the server sends it, until the server
        ends the stream (after an hour) or the caller stops iterating. No read timeout: a
        quiet tenant writes nothing for long stretches."""
        response = self._request("GET", _tenant_path(name) + f"/logs?n={lines}&follow=1",
                                 stream=True, timeout=httpx.Timeout(self._timeout, read=None))
        try:
            yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise AdminError(f"following the log of {name} broke off: {exc}") from exc
        finally:
            response.close()

    def export(self, name: str, destination: Path) -> int:
        """Stream the tenant's export file into `destination`; return its size in bytes.

        The download goes to a new file next to `destination` with a random name
        (`.<name>.<random>.part`), created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600: no
        file or symlink planted at a predictable name is ever opened, so an export run as
        root cannot be steered into overwriting another file. Then fsync, rename over
        `destination` (a symlink there is replaced, not followed), fsync the folder: when
        this returns the file and its name are on stable storage. A failed or interrupted
        download leaves nothing under the final name and removes its temp file.
        """
        partial = destination.with_name(f".{destination.name}.{secrets.token_hex(8)}.part")
        response = self._request("GET", _tenant_path(name) + "/export", stream=True)
        size = 0
        length = response.headers.get("content-length")
        progress = Progress(f"export {name}", int(length) if length else None)
        try:
            fd = os.open(partial, _CREATE_NEW, 0o600)
            try:
                for chunk in response.iter_bytes():
                    write_all(fd, chunk)
                    size += len(chunk)
                    progress.advance(len(chunk))
                os.fsync(fd)
            finally:
                os.close(fd)
                progress.close()
            os.rename(partial, destination)
            fsync_dir(destination.parent)
        except httpx.HTTPError as exc:
            raise AdminError(f"the export of {name} broke off: {exc}") from exc
        finally:
            response.close()
            with contextlib.suppress(OSError):
                partial.unlink()
        return size

    def import_file(self, name: str, data: bytes) -> dict[str, Any]:
        """Create tenant `name` from an export file's bytes, uploaded in chunks so a progress
        bar can follow them (signed up front: the signature covers the body's digest)."""
        path = _tenant_path(name) + "/import"
        progress = Progress(f"import {name}", len(data))

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
                chunk = data[start:start + UPLOAD_CHUNK_BYTES]
                progress.advance(len(chunk))
                yield chunk

        url = httpx.URL(self.base_url + path)
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Length": str(len(data)),
                   **sign_request(self._key, "POST", url.raw_path, data)}
        request = self._http.build_request("POST", path, content=chunks(), headers=headers)
        try:
            return self._json(self._send(request, auth=None))
        finally:
            progress.close()

    # --- plumbing ----------------------------------------------------------------------------

    def cluster_hosts(self) -> list[dict[str, Any]]:
        hosts: list[dict[str, Any]] = self._request("GET", "/v1/cluster/hosts").json()
        return hosts

    def cluster_migrate(self, name: str, host: str) -> dict[str, Any]:
        path = "/v1/cluster/tenants/" + quote(check_tenant_name(name), safe="") + "/migrate"
        return self._json(self._request("POST", path, {"to": host},
                                        timeout=httpx.Timeout(max(self._timeout, 600.0))))

    def failover(self, host: str) -> dict[str, Any]:
        return self._json(self._request("POST", "/v1/cluster/failover", {"host": host}))

    def _request(self, method: str, path: str, payload: Any = None, *,
                 content: bytes | None = None, content_type: str | None = None,
                 stream: bool = False, timeout: httpx.Timeout | None = None) -> httpx.Response:
        if content is not None:
            body = content
            headers = {"Content-Type": content_type or "application/octet-stream"}
        else:
            body = b"" if payload is None else json.dumps(payload).encode("utf-8")
            headers = {"Content-Type": "application/json"} if payload is not None else {}
        request = self._http.build_request(method, path, content=body, headers=headers,
                                           timeout=timeout or self._http.timeout)
        return self._send(request, stream=stream)

    def _send(self, request: httpx.Request, *, stream: bool = False,
              auth: httpx.Auth | object | None = httpx.USE_CLIENT_DEFAULT) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream, auth=auth)  # type: ignore[arg-type]
        except httpx.ConnectError as exc:
            raise AdminError(
                f"cannot reach the admin API at {self.base_url} (is `switchboard serve` running?)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise AdminError(
                f"the admin API at {self.base_url} did not answer within {self._timeout:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise AdminError(f"admin API request to {self.base_url} failed: {exc}") from exc
        if not response.is_success:
            if stream:
                response.read()
                response.close()
            raise AdminError(_error_text(response), response.status_code,
                             _error_details(response))
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise AdminError(
                f"the admin API at {self.base_url} answered {response.status_code} "
                "with a body that is not JSON"
            ) from exc
        if not isinstance(data, dict):
            raise AdminError(f"the admin API at {self.base_url} answered an unexpected body")
        return data


def _tenant_path(name: str) -> str:
    return "/v1/tenants/" + quote(check_tenant_name(name), safe="")


def _error_details(response: httpx.Response) -> str:
    """An error's "details" (a traceback: switchboard/debugapi.py), else ""."""
    try:
        data = response.json()
    except ValueError:
        return ""
    details = data.get("details") if isinstance(data, dict) else None
    return details if isinstance(details, str) else ""


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    text = " ".join(response.text.split())[:200]
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")
