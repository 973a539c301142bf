"""Load generation (wrk, or bench.loadgen in its own process) and the nginx baseline proxy.

On a 2-core machine the load generator, the proxy under test and the worker share the cores:
wrk runs with one thread so it takes at most one of them, and each figure is a ratio against
a baseline that paid the same tax in the same run (see bench/README.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import BenchError, Processes, connectable, cpu_seconds, free_port, wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
WRK = shutil.which("wrk")


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: float  # CPU time the watched processes used during the run
    tool: str

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / max(1, self.requests) * 1e6


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> tuple[int, float, float, float, int]:
    """(requests, seconds, p50 ms, p99 ms, errors) from `wrk --latency` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (done and p50 and p99):
        raise BenchError(f"cannot read wrk output: {output[-500:]}")
    seconds = float(done.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    errors = 0
    if non2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non2xx.group(1))
    socket_errors = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
    if sock := re.search(socket_errors, output):
        errors += sum(int(g) for g in sock.groups())
    return int(done.group(1)), seconds, _ms(p50.group(1)), _ms(p99.group(1)), errors


def run_load(procs: Processes, port: int, path: str, *, connections: int, duration_s: float,
             watch: Sequence[int] = (), use_wrk: bool = True) -> LoadResult:
    """Closed-loop load on 127.0.0.1:port for duration_s; CPU of `watch` pids is measured."""
    cpu_before = sum(cpu_seconds(pid) for pid in watch)
    if use_wrk and WRK:
        whole_s = max(1, round(duration_s))  # wrk takes whole seconds
        args = [WRK, "-t1", f"-c{connections}", f"-d{whole_s}s", "--latency",
                f"http://127.0.0.1:{port}{path}"]
        result = procs.run(args, duration_s + 30)
        cpu = sum(cpu_seconds(pid) for pid in watch) - cpu_before
        if result.returncode != 0:
            raise BenchError(f"wrk failed: {result.stderr.decode()[-300:]}")
        requests, seconds, p50, p99, errors = parse_wrk(result.stdout.decode())
        return LoadResult(requests, seconds, requests / seconds, p50, p99, errors, cpu, "wrk")
    report = loadgen(procs, port, path, connections=connections, duration_s=duration_s)
    cpu = sum(cpu_seconds(pid) for pid in watch) - cpu_before
    return LoadResult(report["requests"], report["duration_s"], report["rps"], report["p50_ms"],
                      report["p99_ms"], report["errors"], cpu, "bench.loadgen")


def loadgen_args(port: int, path: str, *, connections: int, duration_s: float,
                 rate: float = 0.0, samples: bool = False) -> list[str]:
    args = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--path", path,
            "--connections", str(connections), "--duration", str(duration_s), "--rate", str(rate)]
    return args + (["--samples"] if samples else [])


def loadgen(procs: Processes, port: int, path: str, *, connections: int, duration_s: float,
            rate: float = 0.0, samples: bool = False) -> dict[str, Any]:
    args = loadgen_args(port, path, connections=connections, duration_s=duration_s, rate=rate,
                        samples=samples)
    result = procs.run(args, duration_s + 60)
    if result.returncode != 0:
        raise BenchError(f"bench.loadgen failed: {result.stderr.decode()[-300:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


class Nginx:
    """nginx as a reverse proxy to one upstream port: the front server users would run."""

    def __init__(self, procs: Processes, work_dir: Path, upstream_port: int) -> None:
        if NGINX is None:
            raise BenchError("nginx is not installed")
        self.procs = procs
        self.dir = work_dir
        self.port = free_port()
        self.upstream_port = upstream_port
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        d = self.dir
        return textwrap.dedent(f"""\
            daemon off;
            master_process on;
            worker_processes 1;
            error_log stderr;
            pid {d}/nginx.pid;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                fastcgi_temp_path {d}/fastcgi;
                uwsgi_temp_path {d}/uwsgi;
                scgi_temp_path {d}/scgi;
                upstream worker {{
                    server 127.0.0.1:{self.upstream_port};
                    keepalive 32;
                }}
                server {{
                    listen 127.0.0.1:{self.port};
                    location / {{
                        proxy_pass http://worker;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                    }}
                }}
            }}
            """)

    def start(self) -> Nginx:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        assert NGINX is not None
        self.proc = self.procs.start([NGINX, "-p", str(self.dir), "-c", str(conf)],
                                     log=self.dir / "nginx.log")
        wait_until(lambda: self._check_running() and connectable(self.port), 20, "nginx listening")
        return self

    def _check_running(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"nginx exited: {(self.dir / 'nginx.log').read_text()[-500:]}")
        return True

    def pids(self) -> list[int]:
        """The master and its worker (the worker does the proxying)."""
        from bench.harness import group_pids

        assert self.proc is not None
        return group_pids(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.kill(self.proc)  # by its pid's process group, never by name
            self.proc = None


def warm(procs: Processes, port: int, path: str, seconds: float = 1.0) -> None:
    """A short burst so connection pools, caches and the CPU governor settle first."""
    run_load(procs, port, path, connections=8, duration_s=seconds)
    time.sleep(0.05)
