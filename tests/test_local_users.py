"""Other local users (issue 17): a second user, created by the test, can read no file of the
data dir and reach no worker; `serve` refuses a data dir or key anyone else may open; workers
listen on Unix sockets in run/, and `worker_transport = "tcp"` still works."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, SWITCHBOARD, Router, count_and_pid

MakeRouter = Callable[..., Router]
COUNTER = "tests.apps.counter:app"


@pytest.fixture
def other_user() -> Iterator[str]:
    """A fresh system user with no home and no groups of ours; removed afterwards."""
    name = f"sbt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A folder every user may traverse (pytest's own tmp folders are 0700, which would make
    the test pass for the wrong reason): only the data dir's own modes stop the other user."""
    parent = Path(tempfile.mkdtemp(prefix="sb-users-"))
    os.chmod(parent, 0o755)
    try:
        yield parent
    finally:
        subprocess.run(["rm", "-rf", str(parent)], check=False)


def as_user(user: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python `code` as `user` (we are root in the test environment). The system's
    interpreter: the project's may sit under a folder that user cannot enter."""
    entry = pwd.getpwnam(user)
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return subprocess.run([python, "-I", "-c", code], user=entry.pw_uid,
                          group=entry.pw_gid, extra_groups=[], capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_a_second_local_user_reads_no_file_and_reaches_no_worker(
    make_router: MakeRouter, other_user: str, open_parent: Path,
) -> None:
    router = Router(open_parent / "data", app=COUNTER)
    router.start()
    try:
        router.create("acme")
        with router.client() as client:
            assert client.post("/t/acme/add", json={"amount": 4111}).status_code == 201
            count_and_pid(client, "acme")
        router.cli("checkpoint", "acme")
        files = [p for p in router.data_dir.rglob("*") if not p.is_dir()]
        assert any(p.suffix == ".journal" for p in files) and any(p.suffix == ".snap"
                                                                    for p in files)
        for path in files:  # nothing the router or a worker wrote is open to others
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode & 0o077 == 0 or path.name == "router.log", (path, oct(mode))
        sockets = [str(p) for p in (router.data_dir / "run").iterdir()]
        assert sockets, "the worker listens on a Unix socket in run/"
        probe = as_user(other_user, f"""
import socket, sys
files, sockets = {[str(p) for p in files]!r}, {sockets!r}
read, reached = [], []
for path in files:
    try:
        open(path, 'rb').read(1); read.append(path)
    except OSError:
        pass
for path in sockets:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path); reached.append(path)
    except OSError:
        pass
import json
print(json.dumps({{"files": len(files), "sockets": len(sockets), "read": read,
                   "reached": reached}}))
""")
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        assert (seen["files"], seen["sockets"]) == (len(files), len(sockets))
        assert seen["read"] == [] and seen["reached"] == [], seen
    finally:
        router.kill_group()


def serve_refuses(data_dir: Path, *extra: str) -> str:
    result = subprocess.run(
        [str(SWITCHBOARD), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", *extra], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env=dict(os.environ, SWITCHBOARD_LOG_FORMAT="text"))
    assert result.returncode == 1, result
    return result.stderr


def test_serve_refuses_a_data_dir_others_may_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    err = serve_refuses(data)
    assert f"chmod 700 {data}" in err and "0755" in err
    assert not (data / "admin.key").exists()  # refused before anything was written


def test_serve_refuses_a_key_file_others_may_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = data / "admin.key"
    key.write_text("k" * 64)
    os.chmod(key, 0o644)
    assert f"chmod 600 {key}" in serve_refuses(data)


def test_serve_refuses_a_data_dir_owned_by_another_user(
    tmp_path: Path, other_user: str,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, pwd.getpwnam(other_user).pw_uid, -1)
    assert "not to this user" in serve_refuses(data)


def test_tcp_transport_still_serves_on_a_stable_port(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env={"SWITCHBOARD_WORKER_TRANSPORT": "tcp"}).start()
    router.create("acme")
    with router.client() as client:
        assert client.post("/t/acme/add", json={"amount": 2}).status_code == 201
        first = router.info("acme")
        assert isinstance(first["port"], int) and first["socket"] is None
        router.cli("stop", "acme")
        count, _ = count_and_pid(client, "acme")
    assert count == 2 and router.info("acme")["port"] == first["port"]  # kept across starts
    with socket.create_connection(("127.0.0.1", first["port"]), timeout=5):
        pass
