"""`make run` (ops/demo.py) serves the demo app with three demo tenants holding data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port, group_pids, wait_until


def test_demo_launcher_serves_three_tenants_and_stops_cleanly(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.demo", "--data-dir", str(tmp_path / "data"),
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None
        banner = ""
        for _ in range(50):  # bounded: the banner is a handful of lines
            line = proc.stdout.readline()
            banner += line
            if "Ctrl-C" in line or not line:
                break
        for name in ("acme", "globex", "initech"):
            assert f"http://127.0.0.1:{port}/t/{name}/" in banner
            tables = httpx.get(f"http://127.0.0.1:{port}/t/{name}/api/tables", timeout=30).json()
            assert sum(t["count"] for t in tables["tables"]) >= 1
        page = httpx.get(f"http://127.0.0.1:{port}/t/acme/", timeout=30)
        assert page.status_code == 200 and "customers" in page.text
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert proc.wait(60) == 0
        wait_until(lambda: not group_pids(proc.pid), 10)
    finally:
        if proc.poll() is None or group_pids(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
