"""Shared fixtures and helpers.

Integration tests start a real `switchboard serve` (harness.RouterProcess): it binds port 0
for both listeners and reports its real ports in `<data-dir>/router.json`, and the test waits
for that file and an HTTP health answer from the same pid. Every router is killed with its
whole process group (router, zygote, workers, checkpoint children) in teardown, even when the
test failed. The waiting, process-group and loopback helpers come from `harness`, which the
benchmarks share.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from harness import (
    ROOT,
    SWITCHBOARD,
    RouterProcess,
    alive,
    cmdline,
    free_port,
    group_pids,
    wait_until,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from tenant import TenantContext

__all__ = ["ROOT", "SWITCHBOARD", "alive", "cmdline", "free_port", "group_pids", "wait_until"]

APPS = "tests.apps"
COUNTER = "tests.apps.counter:app"
BROKEN = "tests.apps.broken:app"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def metric(text: str, name: str) -> float:
    """Sum of every sample of `name` (all label sets) in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def snapshot_files(data_dir: Path, tenant: str) -> list[Path]:
    """A tenant's complete snapshot files, oldest generation first (the store's layout)."""
    from snapshots.layout import DataLayout

    return DataLayout(data_dir).snapshot_files(tenant)


def count_and_pid(client: httpx.Client, tenant: str) -> tuple[int, int]:
    """A counter-style tenant's count and its worker's pid (GET /count)."""
    response = client.get(f"/t/{tenant}/count")
    assert response.status_code == 200, response.text
    body = response.json()
    return body["count"], body["pid"]


def get_ok(client: httpx.Client, path: str, timeout: float = 30) -> httpx.Response:
    """GET, retrying while a worker restarts (502 from a port nobody holds yet, 503, no
    connection); the first other answer is returned, whatever its status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = client.get(path)
            if response.status_code not in (502, 503):
                return response
            problem = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as exc:
            problem = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} kept failing for {timeout}s: {problem}")
        time.sleep(0.02)


# --- a full disk, for real -------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str, *, otherwise: str = "") -> Iterator[Path]:
    """A real tmpfs of `size` (mount's syntax: 64k, 2m) at `mount_point`, created if needed,
    so a write runs out of space for real. Mounting needs root: elsewhere the test is skipped,
    and `otherwise` names the test that covers the same failure without a mount."""
    note = f"; {otherwise}" if otherwise else ""
    if shutil.which("mount") is None:
        pytest.skip(f"no mount command to make a tmpfs{note}")
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(mount_point)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}){note}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True,
                          timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


# --- the demo app in-process (tests/test_dabble*.py) -----------------------------------------


def dabble_asgi() -> Starlette:
    """The demo app's ASGI callable as the runtime serves it under uvicorn (`app.asgi`, which
    must be the Starlette app). Imported here, not at the top, so the router's tests do not
    load the tenant runtime."""
    from starlette.applications import Starlette

    from examples.dabble import app

    assert isinstance(app.asgi, Starlette)
    return app.asgi


@pytest.fixture
def dabble_clock() -> Callable[[], float]:
    """The demo tenant's clock: the real one, unless a test module overrides this fixture."""
    return time.time


@pytest.fixture
def dabble_context(dabble_clock: Callable[[], float]) -> Iterator[TenantContext]:
    """Tenant "acme" of the demo app with fresh state, active for the test."""
    import tenant
    from examples.dabble import app

    ctx = tenant.TenantContext(app, "acme", app.initial_state(), clock=dabble_clock)
    tenant.activate(ctx)
    yield ctx
    tenant.activate(None)


@pytest.fixture
async def dabble_client(dabble_context: TenantContext) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the demo app in-process, as tenant "acme"."""
    transport = httpx.ASGITransport(app=dabble_asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client



def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes to 127.0.0.1:`port` and read until the server closes (or `timeout`).

    A server may answer before it has read everything (a 413 on Content-Length); a send that
    fails then is not an error: what was answered is what the test checks.
    """
    deadline = time.monotonic() + timeout
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    return received


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None


class RawConnection:
    """One client connection on a plain socket: what we send is exactly what goes on the wire
    (no normalising of `..` or `%2e`), and responses are read one at a time, so keep-alive,
    pipelining and early answers can be checked."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> RawResponse:
        self.send(request_bytes(method, target, headers, body))
        return self.read_response(head_only=method == "HEAD")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_response(self, *, head_only: bool = False) -> RawResponse:
        status = int(self._take_line().split(b" ", 2)[1])
        headers = []
        while line := self._take_line():
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = RawResponse(status, headers, b"")
        if head_only or status in (204, 304) or 100 <= status < 200:
            return response
        if "chunked" in (response.header("transfer-encoding") or ""):
            body = b""
            while size := int(self._take_line().split(b";")[0], 16):
                body += self._take(size)
                self._take_line()
            while self._take_line():  # trailers, then the empty line
                pass
            response.body = body
        elif (length := response.header("content-length")) is not None:
            response.body = self._take(int(length))
        else:  # delimited by close
            with contextlib.suppress(ConnectionError):
                while True:
                    self._fill()
            response.body, self.buffer = self.buffer, b""
        return response

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (end of file) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True


def request_bytes(method: str, target: str, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    headers = dict(headers or {})
    if body and "Transfer-Encoding" not in headers:
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Router(RouterProcess):
    """A real `switchboard serve` process for one test, with the CLI and admin shortcuts
    the tests use."""

    def __init__(self, data_dir: Path, *, idle_timeout: float = 120, max_resident: int = 32,
                 app: str | None = None, env: dict[str, str] | None = None,
                 extra: list[str] | None = None) -> None:
        super().__init__(data_dir, app=app, idle_timeout_s=idle_timeout,
                         max_resident=max_resident, env=env, extra_args=extra or ())

    @property
    def admin(self) -> str:
        return self.admin_url

    def cli(self, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(SWITCHBOARD), *args], capture_output=True, text=True,
                                env=self.env(), cwd=ROOT, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"switchboard {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def ls(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("ls", "--json").stdout)
        return rows

    def tenant(self, name: str) -> dict[str, Any]:
        row: dict[str, Any] = json.loads(self.cli("status", name, "--json").stdout)
        return row

    def create(self, *names: str) -> None:
        self.cli("create", *names)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def metrics(self) -> str:
        return str(self.admin_call("GET", "/metrics"))

    def metric(self, name: str) -> float:
        return metric(self.metrics(), name)

    def info(self, name: str) -> dict[str, Any]:
        return self.tenant_info(name)

    def state(self, name: str) -> str:
        return str(self.info(name)["state"])


@pytest.fixture
def make_router(tmp_path: Path) -> Iterator[Callable[..., Router]]:
    """Factory for real routers; every one started is killed (whole process group) at teardown."""
    started: list[Router] = []

    def factory(name: str = "data", **kw: Any) -> Router:
        router = Router(tmp_path / name, **kw)
        started.append(router)
        return router

    yield factory
    for router in started:
        router.kill_group()


@pytest.fixture
def router(make_router: Callable[..., Router]) -> Router:
    return make_router().start()


@pytest.fixture
def devtools(tmp_path: Path) -> Iterator[Any]:
    """A real headless Chromium for one test, driven over CDP (tests/cdp.py); stopped
    whatever happens."""
    from tests.cdp import Chromium, DevTools

    browser = Chromium(tmp_path / "chromium")
    try:
        url = browser.start()
        with DevTools.connect(url) as connection:
            yield connection
    finally:
        browser.stop()


def fill(directory: Path, leave_bytes: int) -> Path:
    """A file that takes all the space of directory's file system but leave_bytes."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    filler = directory / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


@pytest.fixture(scope="session")
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real nginx (Debian's) for the session; each test adds and removes its own site
    (harness.webservers)."""
    from harness.webservers import Nginx

    server = Nginx(tmp_path_factory.mktemp("nginx"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def apache_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real Apache httpd (Debian's apache2) for the session, as nginx_server."""
    from harness.webservers import Apache

    server = Apache(tmp_path_factory.mktemp("apache"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One real PostgreSQL for the whole session (harness/postgres.py: initdb + pg_ctl as the
    postgres user, fsync on, a small max_connections). Missing binaries fail, never skip."""
    from harness.postgres import LocalPostgres
    server = LocalPostgres(max_connections=150).start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def cluster_db(postgres: Any) -> str:
    """A fresh, upgraded database on the session's PostgreSQL; its URL."""
    import uuid

    import psycopg

    from switchboard.cluster.schema import upgrade
    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    return url
