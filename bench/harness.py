"""Processes the benchmarks start, and how they talk to them.

Every process is started in its own session (so its pid is also its process group id) and
registered in `Processes`; `Processes.cleanup()` kills each group with SIGKILL. `__main__`
calls it in a `finally`, after turning SIGTERM into SystemExit, so an error, Ctrl-C or a kill
leaves nothing running. Processes are found and killed by pid, never by name.

Routers, waiting, process groups and signed admin calls come from `harness`, which the tests
share; what is here is the bench's own: `Processes`, the bench router's settings, raw HTTP
timing helpers and the machine description.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from harness import (
    ROOT,
    SWITCHBOARD,
    HarnessError,
    RouterProcess,
    connectable,
    free_port,
    group_pids,
    kill_group,
    wait_until,
)

__all__ = ["ROOT", "SWITCHBOARD", "connectable", "free_port", "group_pids", "wait_until"]

BENCH_APP = "bench.app:app"


class BenchError(HarnessError):
    """A benchmark could not be measured (a process did not start, a tool failed)."""


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
        kill_group(proc, sig, wait_s=5)
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


class BenchRouter(RouterProcess):
    """A real `switchboard serve` with the bench app, in its own data dir and process group,
    registered in `Processes` so that cleanup kills it whatever happens."""

    def __init__(self, procs: Processes, data_dir: Path, *, max_resident: int = 64,
                 port_range: str = "30000-31999", idle_timeout_s: float = 3600,
                 worker_transport: str = "unix") -> None:
        super().__init__(data_dir, app=BENCH_APP, idle_timeout_s=idle_timeout_s,
                         max_resident=max_resident,
                         env={"SWITCHBOARD_PORT_RANGE": port_range,
                              "SWITCHBOARD_WORKER_TRANSPORT": worker_transport,
                              "SWITCHBOARD_LOG_LEVEL": "warning"})
        self.procs = procs

    def base_env(self) -> dict[str, str]:
        return python_env()

    def spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.procs.start(args, log=self.log_path, cwd=ROOT, env=env)

    def start(self, timeout_s: float = 60) -> BenchRouter:
        super().start(timeout_s)
        wait_until(self.zygote_pid, timeout_s, "the zygote to start")
        return self

    def log_tail(self, n: int = 2000) -> str:
        return self.log()[-n:]

    def create(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.admin_call("POST", "/v1/tenants", {"name": name})
        return info

    def start_tenant(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.admin_call("POST", f"/v1/tenants/{name}/start")
        return info

    def stop_tenant(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.admin_call("POST", f"/v1/tenants/{name}/stop")
        return info

    def tenant(self, name: str) -> dict[str, Any]:
        return self.tenant_info(name)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        result = self.procs.run([str(SWITCHBOARD), *args], timeout, env=self.env(), cwd=ROOT)
        if result.returncode != 0:
            raise BenchError(f"switchboard {' '.join(args)}: {result.stderr.decode()[-500:]}")
        return result

    def stop(self, timeout_s: float = 60) -> int | None:
        """Kill the router's group without a graceful stop: nothing a bench measured needs
        the shutdown checkpoint, and thousands of tenants would make it slow."""
        super().kill_group()
        if self.proc is None:
            return None
        self.procs.kill(self.proc)
        return self.proc.returncode


def http_get(port: int, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """One GET on a new connection, read to the end of the response: the shortest client path.

    Used to time cold starts, where httpx's own setup (about a millisecond) would blur a
    figure of a few milliseconds.
    """
    return http_call(port, "GET", path, timeout)


def http_call(port: int, method: str, path: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """`http_get` for any method, with an empty body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                   "Connection: close\r\n\r\n")
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
