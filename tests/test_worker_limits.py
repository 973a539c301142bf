"""Resource limits a worker sets on itself from its spec (tenant/limits.py): an allocation past
`max_address_space_bytes` fails only the request that made it, and past `max_open_files` an
open fails with EMFILE inside the app; either way the worker serves on.

Real workers (`python -m tenant`, the router's fresh path) started by hand: the router does
not pass these spec fields yet. The address-space limit is set relative to what a worker of
this machine actually maps, measured on a probe worker first.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from harness import ROOT
from tests.workerproc import WorkerProcess, vm_size_bytes

WORKLOAD = "tests.apps.workload:app"
MiB = 1 << 20


def soft_limit(pid: int, name: str) -> str:
    """The soft limit `name` ("Max address space") of a process, as /proc/PID/limits shows it."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith(name):
                return line[len(name):].split()[0]
    raise AssertionError(f"no {name} in /proc/{pid}/limits")


def serve_a_few(worker: WorkerProcess, client: httpx.Client, expected: int) -> int:
    """A read, a write and a checkpoint (a forked child, an executor thread) still work."""
    response = client.get("/count")
    assert response.status_code == 200 and response.json()["count"] == expected, response.text
    response = client.post("/add", json={"amount": 1})
    assert response.status_code == 201, response.text
    assert worker.call("checkpoint")["changed"]
    return expected + 1


def started_vm_size(tmp_path: Path) -> int:
    """VmSize of a worker that has just started, under a limit too large to matter (so it
    runs the same code as a limited worker)."""
    probe = WorkerProcess(tmp_path / "probe", "probe", WORKLOAD, tmp_path / "probe.log",
                          max_address_space_bytes=1 << 40)
    try:
        probe.wait_ready()
        size = vm_size_bytes(probe.pid)
        assert probe.stop() == 0
    finally:
        probe.kill()
    return size


def allocate(client: httpx.Client, mib: int) -> int:
    # On a connection of its own: after an app error uvicorn closes the connection the 500
    # went out on, as it does for every exception raised once the answer has started.
    return client.post("/allocate", params={"mib": mib}, headers={"connection": "close"}
                       ).status_code


def test_an_allocation_past_the_address_space_limit_fails_only_its_request(
    tmp_path: Path,
) -> None:
    limit = started_vm_size(tmp_path) + 160 * MiB
    worker = WorkerProcess(tmp_path / "data", "acme", WORKLOAD, tmp_path / "worker.log",
                           max_address_space_bytes=limit)
    try:
        worker.wait_ready()
        assert soft_limit(worker.pid, "Max address space") == str(limit)
        with httpx.Client(base_url=worker.url, timeout=30) as client:
            count = serve_a_few(worker, client, 0)  # starts the worker's threads
            # The limit is for what the app allocates: the worker's threads reserve their
            # stacks only, no malloc arena of 64 MiB each (glibc's default), so 96 MiB fit.
            assert allocate(client, 96) == 200
            assert allocate(client, 200) == 500
            count = serve_a_few(worker, client, count)  # the worker lives on
            assert allocate(client, 200) == 500
            count = serve_a_few(worker, client, count)
        assert worker.stop() == 0
    finally:
        worker.kill()
    assert "MemoryError" in worker.log()


def test_past_the_open_files_limit_an_open_fails_with_emfile_and_the_worker_serves_on(
    tmp_path: Path,
) -> None:
    worker = WorkerProcess(tmp_path / "data", "acme", WORKLOAD, tmp_path / "worker.log",
                           max_open_files=64)
    try:
        worker.wait_ready()
        assert soft_limit(worker.pid, "Max open files") == "64"
        with httpx.Client(base_url=worker.url, timeout=30) as client:
            count = serve_a_few(worker, client, 0)
            for _ in range(2):
                response = client.post("/open-files", params={"n": 200})
                assert response.status_code == 200, response.text
                opened = response.json()
                assert opened["errno"] == errno.EMFILE and 0 < opened["opened"] < 64
                count = serve_a_few(worker, client, count)
        assert worker.stop() == 0
    finally:
        worker.kill()


def test_limits_only_ever_lower_the_soft_limit(tmp_path: Path) -> None:
    # In a child process: these limits cannot be raised back past what this one sets.
    script = textwrap.dedent("""
        import resource
        from tenant.limits import lower_soft_limit
        NOFILE = resource.RLIMIT_NOFILE
        resource.setrlimit(NOFILE, (200, 300))
        assert lower_soft_limit(NOFILE, 500, "open files", "acme") == 200  # never raised
        assert resource.getrlimit(NOFILE) == (200, 300)
        assert lower_soft_limit(NOFILE, 150, "open files", "acme") == 150
        assert resource.getrlimit(NOFILE) == (150, 300)
        resource.setrlimit(NOFILE, (300, 300))
        assert lower_soft_limit(NOFILE, 1000, "open files", "acme") == 300  # hard stays hard
        assert resource.getrlimit(NOFILE) == (300, 300)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert "above the hard limit 300" in done.stderr
