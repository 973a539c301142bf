"""Shared fixtures. Integration tests start a real `switchboard serve` on free ports with its
own data dir, wait by polling against a deadline, and kill the router's whole process group
(router, zygote, workers, checkpoint children) in teardown, even when the test failed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SWITCHBOARD = Path(sys.executable).parent / "switchboard"
APPS = "tests.apps"
COUNTER = "tests.apps.counter:app"
BROKEN = "tests.apps.broken:app"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(step)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def group_pids(pgid: int) -> list[int]:
    """Live processes in a process group (from /proc, not by name)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            pids.append(int(entry))
    return pids


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
    folder = data_dir / "tenants" / tenant / "snapshots"
    return sorted(p for p in folder.glob("*.snap")) if folder.exists() else []


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


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Router:
    """A real `switchboard serve` process for one test."""

    def __init__(self, data_dir: Path, *, idle_timeout: float = 120, max_resident: int = 32,
                 app: str | None = None, env: dict[str, str] | None = None,
                 extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.admin_port = free_port()
        self.idle_timeout = idle_timeout
        self.max_resident = max_resident
        self.app = app
        self.extra_env = env or {}
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "router.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, SWITCHBOARD_ADMIN=self.admin,
                   SWITCHBOARD_DATA_DIR=str(self.data_dir),
                   SWITCHBOARD_KEY_FILE=str(self.data_dir / "admin.key"),
                   SWITCHBOARD_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30) -> Router:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(SWITCHBOARD), "serve", "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}",
                "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--idle-timeout", str(self.idle_timeout), "--max-resident", str(self.max_resident),
                *self.extra]
        if self.app:
            args += ["--app", self.app]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it after we return
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=self.env(), start_new_session=True)
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"switchboard serve exited: {self.log()[-2000:]}")
            return all(_connectable(p) for p in (self.port, self.admin_port))

        wait_until(up, timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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

    def worker_pids(self) -> list[int]:
        """Tenant worker processes of this router (by process group and title, never by name)."""
        if self.proc is None:
            return []
        return [p for p in group_pids(self.proc.pid)
                if cmdline(p).startswith("switchboard: tenant")]

    def metrics(self) -> str:
        return _signed_get(self, "/metrics")

    def metric(self, name: str) -> float:
        return metric(self.metrics(), name)

    def info(self, name: str) -> dict[str, Any]:
        """One tenant's row straight from the admin API (cheaper than the CLI for polling)."""
        row: dict[str, Any] = json.loads(_signed_get(self, f"/v1/tenants/{name}"))
        return row

    def state(self, name: str) -> str:
        return str(self.info(name)["state"])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _signed_get(router: Router, path: str) -> str:
    from switchboard.signing import load_key, sign_request

    key = load_key(router.data_dir / "admin.key")
    headers = sign_request(key, "GET", path, b"")
    response = httpx.get(router.admin + path, headers=headers, timeout=10)
    response.raise_for_status()
    return response.text


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
