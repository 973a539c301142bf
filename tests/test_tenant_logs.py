"""`switchboard logs NAME [-f] [-n N]` and the per-tenant log files behind it, against a real
router (tests/conftest.py) serving tests/apps/chatty.py: a worker's logging, its print() and
its raw writes to fd 2 land in `<data-dir>/logs/<name>.log` (0600), rotated by size with a
bounded number of files, readable through the CLI in plain and --json form, followed live with
-f; the router's own lines about a tenant carry its name."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snapshots.layout import DataLayout
from switchboard import logtail
from tests.conftest import ROOT, SWITCHBOARD, Router, tmpfs, wait_until

CHATTY = "tests.apps.chatty:app"
MakeRouter = Callable[..., Router]


@pytest.fixture
def chatty(make_router: MakeRouter) -> Router:
    router = make_router(app=CHATTY).start()
    router.create("acme")
    return router


def say(router: Router, tenant: str, text: str) -> None:
    with router.client() as client:
        response = client.get(f"/t/{tenant}/say", params={"text": text})
    assert response.status_code == 200, response.text


def messages(output: str) -> list[str]:
    """The `msg` of every JSON line a worker wrote (its log file's format)."""
    return [json.loads(line)["msg"] for line in output.splitlines() if line.startswith("{")]


def test_logs_show_the_workers_logging_print_and_raw_writes(chatty: Router) -> None:
    say(chatty, "acme", "hello-1")
    wait_until(lambda: "raw hello-1" in messages(chatty.cli("logs", "acme").stdout), 10)
    shown = messages(chatty.cli("logs", "acme").stdout)
    assert {"hello-1", "logged hello-1", "raw hello-1"} <= set(shown)

    last = chatty.cli("logs", "acme", "-n", "1").stdout.splitlines()
    assert len(last) == 1
    assert json.loads(last[0])["tenant"] == "acme"

    as_json = json.loads(chatty.cli("logs", "acme", "-n", "2", "--json").stdout)
    assert as_json["name"] == "acme" and len(as_json["lines"]) == 2
    assert messages("\n".join(as_json["lines"]))[-1] == shown[-1]


def test_log_file_is_private_and_in_the_layout(chatty: Router) -> None:
    say(chatty, "acme", "secret")
    path = DataLayout(chatty.data_dir).log_path("acme")
    wait_until(path.exists, 10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_logs_of_an_unknown_tenant_exit_1_with_the_reason(chatty: Router) -> None:
    result = chatty.cli("logs", "nobody", check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "nobody" in result.stderr and "switchboard: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_router_lines_about_a_tenant_carry_its_name(chatty: Router) -> None:
    say(chatty, "acme", "x")
    lines = [json.loads(line) for line in chatty.log().splitlines() if line.startswith("{")]
    started = [e for e in lines if e.get("logger") == "switchboard.process"
               and str(e.get("msg", "")).startswith("tenant acme started")]
    assert started and all(e.get("tenant") == "acme" for e in started)


def open_files(pid: int) -> set[str]:
    """What the process's file descriptors point at."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return found


def test_logs_follow_shows_lines_written_after_it_started(chatty: Router) -> None:
    say(chatty, "acme", "before")
    proc = subprocess.Popen([str(SWITCHBOARD), "logs", "acme", "-f", "-n", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=chatty.env(), cwd=ROOT, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def wait_for(text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.1))
            except queue.Empty:
                continue
            if text in seen[-1]:
                return
        raise AssertionError(f"{text!r} not shown by logs -f within {timeout}s: {seen[-20:]}")

    try:
        wait_for("raw before")
        say(chatty, "acme", "after-follow-started")
        wait_for("raw after-follow-started")
        assert proc.poll() is None  # still following
        log_file = str(DataLayout(chatty.data_dir).log_path("acme").resolve())
        assert log_file in open_files(chatty.pid)  # the router's follow holds it open
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the operator is done, not a failure
        assert proc.wait(10) == 0
        # The client went away: the router ends its follow and lets go of the file.
        wait_until(lambda: log_file not in open_files(chatty.pid), 10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_rotation_keeps_at_most_backups_plus_one_files(make_router: MakeRouter) -> None:
    router = make_router(app=CHATTY, env={"SWITCHBOARD_TENANT_LOG_MAX_BYTES": "4096",
                                          "SWITCHBOARD_TENANT_LOG_BACKUPS": "2"}).start()
    router.create("acme")
    with router.client() as client:
        for _ in range(5):
            assert client.get("/t/acme/spam", params={"n": "50", "size": "200"}).status_code == 200
    say(router, "acme", "last")
    logs_dir = DataLayout(router.data_dir).logs_dir
    wait_until(lambda: "raw last" in messages(router.cli("logs", "acme").stdout), 10)
    files = sorted(p.name for p in logs_dir.iterdir())
    assert files == ["acme.log", "acme.log.1", "acme.log.2"]
    for path in logs_dir.iterdir():
        assert path.stat().st_size <= 4096 + 1024, path  # one line may pass the size
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The newest lines are in the current file, readable with `logs`.
    assert "last" in messages(router.cli("logs", "acme", "-n", "3").stdout)


def test_log_files_are_per_tenant(chatty: Router) -> None:
    chatty.create("beta")
    say(chatty, "acme", "for-acme")
    say(chatty, "beta", "for-beta")
    wait_until(lambda: "raw for-beta" in messages(chatty.cli("logs", "beta").stdout), 10)
    wait_until(lambda: "raw for-acme" in messages(chatty.cli("logs", "acme").stdout), 10)
    assert "for-acme" not in messages(chatty.cli("logs", "beta").stdout)
    assert sorted(p.name for p in Path(DataLayout(chatty.data_dir).logs_dir).iterdir()) == [
        "acme.log", "beta.log"]


def test_tail_and_follow_across_a_rotation(tmp_path: Path) -> None:
    """switchboard/logtail.py on its own: the last lines, then lines written later, in the old
    file before its rename and in the new one after, and a clean end after max_s."""
    path = tmp_path / "acme.log"
    path.write_bytes(b"one\ntwo\nthree\npartial")
    assert logtail.tail_lines(path, 2) == [b"two\n", b"three\n"]
    assert logtail.tail_lines(tmp_path / "none.log", 5) == []

    async def scenario() -> bytes:
        got = b""
        stream = logtail.follow(path, 1, max_s=5, poll_s=0.01)
        async for chunk in stream:
            got += chunk
            if got == b"three\n":
                with open(path, "ab") as f:
                    f.write(b" line\nfour\n")
                os.rename(path, tmp_path / "acme.log.1")  # what RotatingFileHandler does
                path.write_bytes(b"five\n")
            if got.endswith(b"five\n"):
                break
        await stream.aclose()
        return got

    assert asyncio.run(scenario()) == b"three\npartial line\nfour\nfive\n"

    async def ends_by_itself() -> list[bytes]:
        return [chunk async for chunk in logtail.follow(path, 0, max_s=0.2, poll_s=0.01)]

    assert asyncio.run(ends_by_itself()) == []


def test_rm_deletes_the_log_and_a_new_tenant_of_the_name_starts_without_it(
        make_router: MakeRouter) -> None:
    router = make_router(app=CHATTY, env={"SWITCHBOARD_TENANT_LOG_MAX_BYTES": "4096"}).start()
    router.create("acme")
    with router.client() as client:
        assert client.get("/t/acme/spam", params={"n": "60", "size": "200"}).status_code == 200
    say(router, "acme", "old-tenant")
    logs_dir = DataLayout(router.data_dir).logs_dir
    wait_until(lambda: len(list(logs_dir.iterdir())) > 1, 10)  # rotated at least once
    router.cli("rm", "acme")
    assert list(logs_dir.iterdir()) == []
    assert router.cli("logs", "acme", check=False).returncode == 1
    router.create("acme")
    assert router.cli("logs", "acme").stdout == ""


def test_a_full_log_disk_drops_lines_and_the_worker_keeps_serving(
        make_router: MakeRouter) -> None:
    """The logs folder on a real 64 KiB tmpfs, written far past full: the tenant still
    answers (no write of its output blocks or loops), the failure is reported on the router's
    log once, not per dropped line."""
    router = make_router(app=CHATTY)
    router.data_dir.mkdir(mode=0o700)
    with tmpfs(DataLayout(router.data_dir).logs_dir, "64k"):
        try:
            router.start()
            router.create("acme")
            with router.client() as client:
                for _ in range(10):  # 10 x 100 lines of 200 bytes: 200 KB
                    response = client.get("/t/acme/spam", params={"n": "100", "size": "200"})
                    assert response.status_code == 200
            say(router, "acme", "still-serving")
            wait_until(lambda: "cannot write the tenant log" in router.log(), 10)
            assert router.log().count("cannot write the tenant log") < 10
            assert "still-serving" in router.log()  # the echo to the router's log goes on
            assert router.state("acme") == "running"
        finally:
            router.kill_group()  # before the unmount


def test_a_fresh_interpreter_worker_logs_to_its_file_too(make_router: MakeRouter) -> None:
    """Without the zygote the worker is `python -m tenant`: same file, same capture."""
    router = make_router(app=CHATTY, env={"SWITCHBOARD_USE_ZYGOTE": "false"}).start()
    router.create("acme")
    say(router, "acme", "from-fresh")
    wait_until(lambda: "raw from-fresh" in messages(router.cli("logs", "acme").stdout), 10)
    assert {"from-fresh", "logged from-fresh"} <= set(messages(router.cli("logs", "acme").stdout))
    assert "zygote for" not in router.log()  # it was a fresh interpreter
