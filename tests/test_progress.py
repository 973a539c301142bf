"""Progress bars on long CLI transfers (issue 10): drawn on a terminal, silent in a pipe."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, SWITCHBOARD, Router

MakeRouter = Callable[..., Router]


def run_on_a_terminal(router: Router, *args: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a real pseudo-terminal; what it drew, and its exit."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(SWITCHBOARD), *args], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env=router.env(), cwd=ROOT)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), seen.decode(errors="replace")
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_export_and_import_draw_progress_on_a_terminal_and_nothing_in_a_pipe(
    make_router: MakeRouter, tmp_path: Path,
) -> None:
    router = make_router().start()
    router.create("acme")
    with router.client() as client:
        for n in range(50):
            assert client.post("/t/acme/api/tables/t/records",
                               json={"n": n, "pad": "x" * 2000}).status_code == 201
    out = tmp_path / "acme.sbexport"
    status, drawn = run_on_a_terminal(router, "export", "acme", "-o", str(out))
    assert status == 0, drawn
    assert "export acme [" in drawn and "100%" in drawn
    status, drawn = run_on_a_terminal(router, "import", str(out), "--as", "copy")
    assert status == 0, drawn
    assert "import copy [" in drawn and "100%" in drawn

    piped = router.cli("export", "acme", "-o", str(tmp_path / "again.sbexport"))
    assert "[" not in piped.stderr and "%" not in piped.stderr
    piped = router.cli("import", str(out), "--as", "copy2")
    assert piped.stderr == ""
    with router.client() as client:
        total = client.get("/t/copy2/api/tables/t/records").json()["total"]
    assert total == 50
