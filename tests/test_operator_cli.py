"""Issue 10's operator commands against a real `switchboard serve`: `status` that explains a
tenant, `ls --sort/--state/--watch`, the error of a CLI aimed at no server, and a Retry-After
worked out from the tenant's measured start time.

Each command is checked in table form and in --json form; the server is a real router process
with the counter app, its health pings made frequent so their numbers show up quickly.
"""

from __future__ import annotations

import json
import math
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import SWITCHBOARD, free_port, wait_until
from switchboard.signing import create_key
from tests.conftest import COUNTER, ROOT, Router

MakeRouter = Callable[..., Router]
FAST_PINGS = {"SWITCHBOARD_PING_INTERVAL_S": "0.2"}


def fields(text: str) -> dict[str, str]:
    """`key: value` lines (ops.output.key_values) as a dict, spaces folded."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = " ".join(value.split())
    return out


def add(router: Router, tenant: str, amount: int = 1) -> None:
    with router.client() as client:
        response = client.post(f"/t/{tenant}/add", json={"amount": amount})
    assert response.status_code == 201, response.text


def status(router: Router, name: str) -> dict[str, Any]:
    return router.tenant(name)


# --- status ----------------------------------------------------------------------------------


def test_status_explains_a_running_tenant(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env=FAST_PINGS).start()
    router.create("a")
    router.cli("start", "a")
    for _ in range(3):
        add(router, "a")
    assert router.cli("checkpoint", "a").stdout == "1\n"
    add(router, "a")
    add(router, "a")
    wait_until(lambda: status(router, "a")["journal_since_snapshot"] == 2, 10,
               "a health ping reporting the journal")

    info = status(router, "a")
    assert (info["state"], info["generation"], info["journal_pos"]) == ("running", 1, 5)
    assert (info["dirty"], info["unsaved"]) == (True, False)
    assert (info["in_flight"], info["waiting"], info["restarts"]) == (0, 0, 0)
    assert info["rss_bytes"] > 1_000_000 and isinstance(info["pid"], int)
    assert 0 < info["uss_bytes"] < info["rss_bytes"]
    assert info["socket"].endswith(".sock") and info["port"] is None
    assert time.time() - info["last_checkpoint_at"] < 30
    assert info["last_exit"] is None and info["last_error"] is None
    assert info["start_ema_s"] > 0

    shown = fields(router.cli("status", "a").stdout)
    assert list(shown)[:3] == ["name", "state", "pid"]
    assert shown["state"] == "running" and shown["pid"] == str(info["pid"])
    assert shown["address"].startswith("run/") and shown["address"].endswith(".sock")
    assert shown["uptime"].endswith("s")
    assert shown["restarts"] == "0"
    assert shown["requests"].startswith("0 in flight, 0 waiting, ")
    assert re.fullmatch(r"[\d.]+ MiB RSS, [\d.]+ MiB USS", shown["memory"]), shown["memory"]
    assert shown["snapshot"].startswith("generation 1, written ")
    assert shown["journal"] == "2 records since the snapshot (position 5)"
    assert shown["unsaved changes"] == "in the journal, not yet in a snapshot"
    assert shown["last error"] == "-"

    # The worker dies: status says how, and counts the restart the next request makes.
    os.kill(info["pid"], signal.SIGKILL)
    wait_until(lambda: status(router, "a")["last_exit"] is not None, 10, "the exit recorded")
    add(router, "a")
    info = status(router, "a")
    # "killed by signal 9 after 1.7s", or "worker exited unexpectedly after 1.7s" when the
    # router saw the control channel close before it reaped the worker.
    assert info["restarts"] == 1 and " after " in info["last_exit"]
    shown = fields(router.cli("status", "a").stdout)
    assert shown["restarts"] == f"1 (last exit: {info['last_exit']})"


def test_status_shows_the_last_error_and_when(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env={"SWITCHBOARD_TEST_BOOT_FAIL_TENANTS": "b"}).start()
    router.create("b")
    failed = router.cli("start", "b", check=False)
    assert failed.returncode == 1 and "boot failure injected for b" in failed.stderr

    info = status(router, "b")
    assert "boot failure injected for b" in info["last_error"]
    assert 0 <= time.time() - info["last_error_at"] < 30
    assert info["pid"] is None

    shown = fields(router.cli("status", "b").stdout)
    assert "boot failure injected for b" in shown["last error"]
    assert shown["last error"].endswith("ago)") or shown["last error"].endswith("just now)")
    assert "uptime" in shown and shown["uptime"] == "-"  # not running


# --- ls --sort / --state / --watch -----------------------------------------------------------


def test_ls_sorts_and_filters(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env=FAST_PINGS).start()
    router.create("a", "b", "c")
    router.cli("start", "b")
    router.cli("start", "c")
    add(router, "c")
    add(router, "b")  # b served last

    def names(*args: str) -> list[str]:
        return [t["name"] for t in json.loads(router.cli("ls", "--json", *args).stdout)]

    assert names() == ["a", "b", "c"]
    assert names("--state", "running") == ["b", "c"]
    assert names("--state", "running,stopped", "--sort", "state") == ["b", "c", "a"]
    assert names("--sort", "last_request") == ["b", "c", "a"]  # never requested: last
    wait_until(lambda: all(t["rss_bytes"] for t in router.ls() if t["name"] != "a"), 10,
               "b's and c's memory read")
    rows = {t["name"]: t["rss_bytes"] for t in router.ls()}
    assert names("--sort", "rss") == [*sorted(["b", "c"], key=lambda n: -rows[n]), "a"]
    assert names("--state", "failed") == []

    table = router.cli("ls", "--state", "stopped").stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "STATE"] and [r.split()[0] for r in table[1:]] == ["a"]
    table = router.cli("ls", "--sort", "last_request").stdout.splitlines()
    assert [r.split()[0] for r in table[1:]] == ["b", "c", "a"]

    bad = router.cli("ls", "--state", "running,bogus", check=False)
    assert bad.returncode == 2 and "unknown state bogus" in bad.stderr
    assert router.cli("ls", "--sort", "bogus", check=False).returncode == 2


def _read_until(fd: int, done: Callable[[bytes], bool], timeout_s: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while not done(seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; read so far: {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty reads EIO once its other side is closed
                chunk = b""
            assert chunk, f"output ended early: {seen!r}"
            seen += chunk
    return seen


def _seen_thrice(marker: bytes) -> Callable[[bytes], bool]:
    return lambda seen: seen.count(marker) >= 3


def test_ls_watch_piped_prints_each_listing_until_ctrl_c(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER).start()
    router.create("a")
    for form in (["--json"], []):
        with subprocess.Popen([str(SWITCHBOARD), "ls", "--watch", "--interval", "0.2", *form],
                              stdout=subprocess.PIPE, env=router.env(), cwd=ROOT) as proc:
            try:
                assert proc.stdout is not None
                marker = b"]\n" if form else b"NAME"
                out = _read_until(proc.stdout.fileno(), _seen_thrice(marker), 20)
                proc.send_signal(signal.SIGINT)  # Ctrl-C ends a watch: exit 0
                assert proc.wait(10) == 0
            finally:
                proc.kill()
        if form:
            listings = [json.loads(line) for line in out.decode().splitlines()[:3]]
            assert all([t["name"] for t in rows] == ["a"] for rows in listings)
        else:
            assert b"\x1b[" not in out  # no screen control codes into a pipe
            assert out.decode().split("\n\n")[0].splitlines()[1].split()[:2] == ["a", "stopped"]


def test_ls_watch_on_a_terminal_redraws_in_place(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER).start()
    router.create("a")
    leader, follower = pty.openpty()
    with subprocess.Popen([str(SWITCHBOARD), "ls", "--watch", "--interval", "0.2"],
                          stdin=follower, stdout=follower, stderr=follower,
                          env=router.env(), cwd=ROOT, start_new_session=True) as proc:
        os.close(follower)
        try:
            out = _read_until(leader, lambda seen: seen.count(b"\x1b[H\x1b[2J") >= 2, 20)
            assert b"Ctrl-C to stop" in out and b"stopped" in out
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            proc.kill()
            os.close(leader)


# --- a server that is not running ------------------------------------------------------------


@pytest.mark.parametrize("argv", [["ls"], ["ls", "--json"], ["status", "a"],
                                  ["status", "a", "--json"], ["ls", "--watch"]])
def test_no_server_is_one_clear_line(tmp_path: Path, argv: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    create_key(tmp_path / "admin.key")
    result = subprocess.run([str(SWITCHBOARD), *argv, "--admin", url,
                             "--key-file", str(tmp_path / "admin.key")],
                            capture_output=True, text=True, cwd=ROOT, timeout=30,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("SWITCHBOARD_")})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"switchboard: error: cannot reach the admin API at {url} "
                             "(is `switchboard serve` running?)\n")


# --- Retry-After from the measured start time ------------------------------------------------


def test_retry_after_follows_the_measured_start_time(make_router: MakeRouter) -> None:
    """A slow-booting tenant whose queue of waiting requests is full: the request turned away
    is told to come back after about one start time, the start timeout until a start has
    been measured, then the measured one."""
    boot_s, timeout_s = 3.0, 6.0
    router = make_router(app=COUNTER, env={
        "SWITCHBOARD_TEST_BOOT_DELAY_S": str(boot_s), "SWITCHBOARD_START_TIMEOUT_S": str(timeout_s),
        "SWITCHBOARD_MAX_WAITING_REQUESTS": "1"}).start()
    router.create("slow")

    def turned_away() -> httpx.Response:
        """One request waits for the start (and is served); the next finds the queue full."""
        answers: list[httpx.Response] = []

        def wait_for_start() -> None:
            with router.client() as client:
                answers.append(client.get("/t/slow/count"))

        waiter = threading.Thread(target=wait_for_start)
        waiter.start()
        try:
            wait_until(lambda: status(router, "slow")["waiting"] == 1, 10, "a request waiting")
            with router.client() as client:
                refused = client.get("/t/slow/count")
        finally:
            waiter.join(30)
        assert [a.status_code for a in answers] == [200]
        assert refused.status_code == 503
        return refused

    # Nothing measured yet: the start timeout stands in for the start time.
    first = turned_away()
    assert first.headers["retry-after"] == str(math.ceil(timeout_s * (1 + 1 / 64)))
    # The page keeps the reason to itself; the router's log has it.
    assert "too many requests waiting for slow to start" in router.log()

    ema = status(router, "slow")["start_ema_s"]
    assert boot_s <= ema < timeout_s  # measured: the boot delay and the worker's own start
    router.cli("stop", "slow")
    again = turned_away()
    assert again.headers["retry-after"] == str(math.ceil(ema * (1 + 1 / 64)))
