"""Processes the benchmarks start, and how they talk to them.

Every process is started in its own session (so its pid is also its process group id) and
registered in `Processes`; `Processes.cleanup()` kills each group with SIGKILL. `__main__`
calls it in a `finally`, after turning SIGTERM into SystemExit, so an error, Ctrl-C or a kill
leaves nothing running. Processes are found and killed by pid, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from switchboard.signing import load_key, sign_request

ROOT = Path(__file__).resolve().parent.parent
SWITCHBOARD = Path(sys.executable).parent / "switchboard"
BENCH_APP = "bench.app:app"


class BenchError(Exception):
    """A benchmark could not be measured (a process did not start, a tool failed)."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout:g}s")
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Processes:
    """Every child the bench starts; `cleanup()` kills their process groups."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], *, log: Path | None = None,
              **kw: Any) -> subprocess.Popen[bytes]:
        out: Any = subprocess.DEVNULL
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 - the child writes to it after we return
        try:
            proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        finally:
            if log is not None:
                out.close()
        self.children.append(proc)
        return proc

    def run(self, args: Sequence[str], timeout: float,
            **kw: Any) -> subprocess.CompletedProcess[bytes]:
        """Run to completion in its own group; the group is killed if it overruns or we stop."""
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, **kw)
        self.children.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise BenchError(f"{args[0]} ran longer than {timeout:g}s") from None
        finally:
            self.kill(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc in self.children:
            self.children.remove(proc)

    def cleanup(self) -> None:
        for proc in reversed(self.children[:]):
            self.kill(proc)
        reap_orphans()


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of our children (a router's workers, nginx's worker) become ours, not init's,
    so cleanup() can reap them: some containers' init never does, leaving zombies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


def reap_orphans(timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.01)  # killed, not yet reaped by the kernel's exit path


def python_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for key in [k for k in env if k.startswith("SWITCHBOARD_")]:
        del env[key]  # the bench's routers get exactly the settings below
    return env


class BenchRouter:
    """A real `switchboard serve` with the bench app, in its own data dir and process group."""

    def __init__(self, procs: Processes, data_dir: Path, *, max_resident: int = 64,
                 port_range: str = "30000-31999", idle_timeout_s: float = 3600) -> None:
        self.procs = procs
        self.data_dir = data_dir
        self.port = free_port()
        self.admin_port = free_port()
        self.max_resident = max_resident
        self.port_range = port_range
        self.idle_timeout_s = idle_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: httpx.Client | None = None
        self._key = b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def env(self) -> dict[str, str]:
        return dict(python_env(), SWITCHBOARD_PORT_RANGE=self.port_range,
                    SWITCHBOARD_DATA_DIR=str(self.data_dir), SWITCHBOARD_ADMIN=self.admin_url,
                    SWITCHBOARD_KEY_FILE=str(self.data_dir / "admin.key"),
                    SWITCHBOARD_LOG_FORMAT="json", SWITCHBOARD_LOG_LEVEL="warning")

    def start(self, timeout: float = 60) -> BenchRouter:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(SWITCHBOARD), "serve", "--data-dir", str(self.data_dir), "--app", BENCH_APP,
                "--listen", f"127.0.0.1:{self.port}",
                "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--idle-timeout", str(self.idle_timeout_s),
                "--max-resident", str(self.max_resident)]
        self.proc = self.procs.start(args, log=self.data_dir / "router.log", cwd=ROOT,
                                     env=self.env())

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"switchboard serve exited: {self.log_tail()}")
            return connectable(self.port) and connectable(self.admin_port)

        wait_until(up, timeout, "switchboard serve listening")
        self._key = load_key(self.data_dir / "admin.key")
        self._admin = httpx.Client(base_url=self.admin_url, timeout=120)
        wait_until(self.zygote_pid, timeout, "the zygote to start", step=0.05)
        return self

    def log_tail(self, n: int = 2000) -> str:
        path = self.data_dir / "router.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def admin(self, method: str, path: str, payload: Any = None) -> Any:
        assert self._admin is not None, "start() first"
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = sign_request(self._key, method, path, body)
        if body:
            headers["content-type"] = "application/json"
        response = self._admin.request(method, path, content=body, headers=headers)
        if response.status_code >= 400:
            raise BenchError(f"admin {method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content and path != "/metrics" else response.text

    def create(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.admin("POST", "/v1/tenants", {"name": name})
        return info

    def start_tenant(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.admin("POST", f"/v1/tenants/{name}/start")
        return info

    def stop_tenant(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.admin("POST", f"/v1/tenants/{name}/stop")
        return info

    def tenant(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.admin("GET", f"/v1/tenants/{name}")
        return info

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        result = self.procs.run([str(SWITCHBOARD), *args], timeout, env=self.env(), cwd=ROOT)
        if result.returncode != 0:
            raise BenchError(f"switchboard {' '.join(args)}: {result.stderr.decode()[-500:]}")
        return result

    def group(self) -> list[int]:
        return [] if self.proc is None else group_pids(self.proc.pid)

    def zygote_pid(self) -> int | None:
        return next((p for p in self.group() if title(p).startswith("switchboard: zygote")), None)

    def worker_pids(self) -> list[int]:
        return [p for p in self.group() if title(p).startswith("switchboard: tenant")]

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self.proc is not None:
            self.procs.kill(self.proc)


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            pids.append(int(entry))
    return pids


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def http_get(port: int, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """One GET on a new connection, read to the end of the response: the shortest client path.

    Used to time cold starts, where httpx's own setup (about a millisecond) would blur a
    figure of a few milliseconds.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    if not data.startswith(b"HTTP/1.1 "):
        raise BenchError(f"no HTTP response from :{port}{path}: {data[:100]!r}")
    return int(data[9:12]), data.partition(b"\r\n\r\n")[2]


def http_post(port: int, path: str, timeout: float = 60.0) -> int:
    with httpx.Client(timeout=timeout) as client:
        return client.post(f"http://127.0.0.1:{port}{path}", content=b"").status_code


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "")
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kb = next((int(line.split()[1]) for line in f if line.startswith("MemTotal")), 0)
    tools = {}
    for tool, flag in (("wrk", "--version"), ("nginx", "-v")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
            tools[tool] = (out.stdout + out.stderr).splitlines()[0].strip()
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "mem_total_mb": round(mem_kb / 1024),
        "python": platform.python_version(), "kernel": platform.release(),
        "platform": platform.platform(), "tools": tools,
    }
