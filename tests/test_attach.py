"""`switchboard attach` (issue 12): a live console inside a tenant's worker, driven in a real
pseudo-terminal with pexpect, and who may reach it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.conftest import ROOT, SWITCHBOARD, Router, wait_until
from tests.test_local_users import as_user, open_parent, other_user  # noqa: F401 (fixtures)

MakeRouter = Callable[..., Router]


def spawn_attach(router: Router, home: Path, *args: str) -> pexpect.spawn:
    env = dict(router.env(), HOME=str(home), TERM="dumb")
    return pexpect.spawn(str(SWITCHBOARD), ["attach", *args], env=env, cwd=str(ROOT),
                         encoding="utf-8", timeout=30, dimensions=(40, 200))


def add_people(router: Router, tenant: str, *names: str) -> None:
    with router.client() as client:
        for name in names:
            response = client.post(f"/t/{tenant}/api/tables/people/records",
                                   json={"name": name})
            assert response.status_code == 201, response.text


def people(router: Router, tenant: str) -> list[str]:
    with router.client() as client:
        response = client.get(f"/t/{tenant}/api/tables/people/records")
        assert response.status_code == 200, response.text
        return [r["fields"]["name"] for r in response.json()["records"]]


@pytest.mark.slow
def test_attach_evaluates_runs_a_command_and_the_change_survives_kill_9(
    make_router: MakeRouter, tmp_path: Path,
) -> None:
    router = make_router(idle_timeout=2).start()
    router.create("acme")
    add_people(router, "acme", "ada", "bob", "cy")
    console = spawn_attach(router, tmp_path, "acme")
    try:
        console.expect("tenant acme")
        console.expect("not journaled")  # the warning about direct changes
        console.expect(">>> ")
        console.sendline('len(state["tables"]["people"]["records"])')
        console.expect("\r\n3\r\n>>> ")
        console.sendline('run("create_record", table="people", fields={"name": "dora"})')
        console.expect("'dora'")
        console.expect(">>> ")
        console.sendline("x = await asyncio.sleep(0, result=tenant)")  # await at the prompt
        console.expect(">>> ")
        console.sendline("x")
        console.expect("'acme'\r\n>>> ")
        console.send("reque\t")  # tab completion asks the worker
        console.expect("requests\\(\\)")  # it takes no arguments
        console.sendline("[-1]['path']")
        console.expect("/api/tables/people/records")
        console.expect(">>> ")
        console.sendline("for i in range(2):")  # a compound statement over two lines
        console.expect(r"\.\.\. ")
        console.sendline("    print('line', i)")
        console.expect(r"\.\.\. ")
        console.sendline("")
        console.expect("line 1\r\n>>> ")
        console.sendline("1/0")
        console.expect("ZeroDivisionError")
        console.expect(">>> ")
        # The console holds the tenant resident past its idle timeout (2 s here).
        time.sleep(3)
        assert router.info("acme")["state"] == "running"
        assert router.info("acme")["attached"], router.info("acme")
        console.sendcontrol("d")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0, console.before
    # The last session gone, the worker stops listening: no console socket is left.
    wait_until(lambda: not list((router.data_dir / "console").glob("*.sock")), 10,
               "the console socket removed after detach")
    assert people(router, "acme") == ["ada", "bob", "cy", "dora"]
    pid = router.info("acme")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: router.info("acme")["pid"] != pid, 30, "the kill seen")
    assert people(router, "acme") == ["ada", "bob", "cy", "dora"]
    # Logged on both sides: who and how long.
    router_log = router.log()
    assert "console attached by" in router_log and "detached after" in router_log
    tenant_log = (router.data_dir / "logs" / "acme.log").read_text()
    assert "console attached: uid" in tenant_log and "console detached: uid" in tenant_log
    # Detached: normal idle handling resumes.
    wait_until(lambda: router.info("acme")["state"] == "stopped", 30, "idle stop after detach")


@pytest.mark.slow
def test_direct_changes_mark_dirty_and_are_checkpointed_at_detach_read_only_refuses(
    make_router: MakeRouter, tmp_path: Path,
) -> None:
    router = make_router().start()
    router.create("acme")
    add_people(router, "acme", "ada")
    console = spawn_attach(router, tmp_path, "acme")
    try:
        console.expect(">>> ")
        console.sendline("await asyncio.sleep(60)")
        time.sleep(0.5)
        console.sendintr()  # Ctrl-C interrupts the running statement, the console goes on
        console.expect("KeyboardInterrupt")
        console.expect(">>> ")
        console.sendline('state["tables"]["people"]["records"][1]["fields"]["name"] = "ADA"')
        console.expect(">>> ")
        console.sendline("checkpoint()")  # the direct change, saved now
        console.expect("'changed': True")
        console.expect(">>> ")
        console.sendline('state["tables"]["people"]["records"][1]["fields"]["name"] = "ADA!"')
        console.expect(">>> ")
        console.sendcontrol("d")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert "checkpointed generation" in (router.data_dir / "logs" / "acme.log").read_text()
    os.kill(router.info("acme")["pid"], signal.SIGKILL)  # only the snapshot holds ADA
    wait_until(lambda: router.info("acme")["state"] != "running", 30, "the kill seen")
    assert people(router, "acme") == ["ADA!"]

    console = spawn_attach(router, tmp_path, "acme", "--read-only")
    try:
        console.expect("READ-ONLY")
        console.expect(">>> ")
        console.sendline('run("create_record", table="people", fields={"name": "eve"})')
        console.expect("PermissionError: read-only console: run\\(\\) is refused")
        console.expect(">>> ")
        console.sendline('state["tables"] = {}')
        console.expect("assignments into objects are refused")
        console.expect(">>> ")
        console.sendline("state = None")
        console.expect("`state` was not replaced")
        console.expect(">>> ")
        console.sendline("checkpoint()")
        console.expect("refused")
        console.expect(">>> ")
        console.sendcontrol("d")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert people(router, "acme") == ["ADA!"]


def test_console_socket_is_private_and_a_second_user_cannot_connect(
    make_router: MakeRouter, other_user: str, open_parent: Path,  # noqa: F811
) -> None:
    router = Router(open_parent / "data")
    router.start()
    try:
        router.create("acme")
        opened = router.admin_call("POST", "/v1/tenants/acme/attach",
                                   {"user": "test", "uid": os.getuid()})
        path = Path(opened["socket"])
        assert path.parent == router.data_dir / "console"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        probe = as_user(other_user, f"""
import socket, json
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({str(path)!r})
    print(json.dumps({{"connected": True}}))
except OSError as exc:
    print(json.dumps({{"connected": False, "errno": exc.errno}}))
""")
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout) == {"connected": False, "errno": 13}  # EACCES
        # Were the modes ever widened, the worker still refuses the uid (SO_PEERCRED): it
        # answers "refused" before any hello, and closes.
        os.chmod(router.data_dir, 0o711)
        os.chmod(path.parent, 0o711)
        os.chmod(path, 0o666)
        probe = as_user(other_user, f"""
import socket, json
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect({str(path)!r})
print(s.makefile("rb").readline().decode().strip())
""")
        assert probe.returncode == 0, probe.stderr
        answer = json.loads(probe.stdout)
        assert answer["event"] == "refused" and "may not attach" in answer["error"], answer
        assert "console refused for uid" in (router.data_dir / "logs" / "acme.log").read_text()
        # The CLI run as that user refuses before it tries (it cannot even see the socket).
        # Its code is copied where that user can read it: the checkout may sit under a folder
        # only its owner can enter (a CI clone in a 0700 temp dir).
        source = open_parent / "src"
        for package in ("ops", "contract", "switchboard"):
            shutil.copytree(ROOT / package, source / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(source)], check=True)
        entry = pwd.getpwnam(other_user)
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        refused = subprocess.run(
            [python, "-c", "import sys; from ops.attach import check_owner; "
             "from pathlib import Path; check_owner(Path(sys.argv[1]), 'acme')", str(path)],
            user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], capture_output=True,
            text=True, env={"PYTHONPATH": str(source), "HOME": "/"}, cwd="/", timeout=60)
        assert refused.returncode != 0
        assert "run attach as the user that runs switchboard serve" in refused.stderr
    finally:
        router.kill_group()


def test_attach_to_an_unknown_tenant_or_a_bad_name_is_a_clear_error(
    make_router: MakeRouter,
) -> None:
    router = make_router().start()
    unknown = router.cli("attach", "nosuch", check=False)
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr
    bad = router.cli("attach", "Bad/Name", check=False)
    assert bad.returncode == 1 and "tenant name" in bad.stderr
    router.create("acme")
    wrong_break = router.cli("attach", "acme", "--break", "examples.dabble.commands:nope",
                             check=False)
    assert wrong_break.returncode == 1 and "has no 'nope'" in wrong_break.stderr


@pytest.mark.slow
def test_a_breakpoint_stops_tenant_a_in_pdb_while_tenant_b_is_not_delayed(
    make_router: MakeRouter, tmp_path: Path,
) -> None:
    # Pings every 0.3 s (3 misses kill): a worker held at a breakpoint must not be killed.
    router = make_router(env={"SWITCHBOARD_BREAKPOINT_TIMEOUT_S": "8",
                              "SWITCHBOARD_PING_INTERVAL_S": "0.3",
                              "SWITCHBOARD_PING_TIMEOUT_S": "0.3"}).start()
    router.create("acme", "beta")
    add_people(router, "acme", "ada")
    add_people(router, "beta", "bea")
    target = "examples.dabble.commands:create_record"
    console = spawn_attach(router, tmp_path, "acme", "--break", target)
    held: dict[str, object] = {}

    def post_to_acme(name: str) -> threading.Thread:
        def post() -> None:
            with router.client(timeout=60) as client:
                held[name] = client.post("/t/acme/api/tables/people/records",
                                         json={"name": name}).status_code
        thread = threading.Thread(target=post)
        thread.start()
        return thread

    try:
        console.expect("breakpoints: " + target)
        console.expect(">>> ")
        pid = router.info("acme")["pid"]
        thread = post_to_acme("held")
        console.expect("breakpoint on " + target)
        console.expect(r"\(Pdb\) ")
        console.sendline("p fields")  # the function's own frame: its arguments
        console.expect("'held'")
        console.expect(r"\(Pdb\) ")
        # Tenant B runs the same code path, in its own process: not delayed.
        started = time.monotonic()
        add_people(router, "beta", "bob")
        assert time.monotonic() - started < 2.0
        # Tenant A's other requests wait while pdb has its loop.
        with router.client(timeout=1) as client, pytest.raises(httpx.TimeoutException):
            client.get("/t/acme/api/tables")
        time.sleep(1.5)  # several health pings' worth: they are held, not missed
        console.sendline("n")  # step
        console.expect(r"\(Pdb\) ")
        console.sendline("c")
        console.expect("breakpoint released: continued")
        thread.join(30)
        assert held["held"] == 201
        assert router.info("acme")["pid"] == pid

        # breakpoint_on() from the prompt; left open, it is released at the deadline.
        console.sendline(f"breakpoint_off({target!r})")
        console.expect("True")
        console.expect(">>> ")
        console.sendline(f"breakpoint_on({target!r})")
        console.expect(">>> ")
        thread = post_to_acme("late")
        console.expect(r"\(Pdb\) ")
        console.expect("breakpoint released: the breakpoint's deadline passed", timeout=30)
        thread.join(30)
        assert held["late"] == 201
        assert router.info("acme")["pid"] == pid  # not killed as unresponsive
        console.sendline("")
        console.sendcontrol("d")
        console.expect(pexpect.EOF)
    finally:
        console.close(force=True)
    assert people(router, "acme") == ["ada", "held", "late"]
    assert people(router, "beta") == ["bea", "bob"]
    log = (router.data_dir / "logs" / "acme.log").read_text()
    assert "released after" in log and "deadline passed" in log
    # The breakpoints went with the session: requests run straight through again.
    add_people(router, "acme", "after")
