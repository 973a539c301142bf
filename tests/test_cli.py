"""The `switchboard` command (ops.cli.main): usage errors, exit codes, output, and the client
commands against the real admin app served by a real uvicorn on a free port."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import uvicorn

from ops.cli import main
from snapshots.errors import SnapshotError
from snapshots.store import LocalStore
from switchboard.admin import build_admin_app
from switchboard.api import CheckpointResult, TenantInfo
from switchboard.config import Config, HostPort
from switchboard.errors import TenantExists, UnknownTenant
from switchboard.signing import Verifier, create_key


class FakeService:
    """An in-memory TenantService: enough state for the CLI to show."""

    def __init__(self) -> None:
        self.tenants: dict[str, TenantInfo] = {}

    def _get(self, name: str) -> TenantInfo:
        if name not in self.tenants:
            raise UnknownTenant(name)
        return self.tenants[name]

    def list_tenants(self) -> list[TenantInfo]:
        return list(self.tenants.values())

    def get_tenant(self, name: str) -> TenantInfo:
        return self._get(name)

    async def create_tenant(self, name: str) -> TenantInfo:
        if name in self.tenants:
            raise TenantExists(name)
        self.tenants[name] = TenantInfo(name, "stopped", None, 20000 + len(self.tenants), 0, None)
        return self.tenants[name]

    async def start_tenant(self, name: str) -> TenantInfo:
        info = replace(self._get(name), state="running", pid=4321, last_request_at=time.time() - 12)
        self.tenants[name] = info
        return info

    async def checkpoint_tenant(self, name: str) -> CheckpointResult:
        self._get(name)
        return CheckpointResult(name, 7, True, 3)

    async def stop_tenant(self, name: str) -> TenantInfo:
        info = replace(self._get(name), state="stopped", pid=None)
        self.tenants[name] = info
        return info

    async def remove_tenant(self, name: str) -> None:
        del self.tenants[self._get(name).name]

    def metrics_text(self) -> str:
        return "switchboard_tenants 0\n"


@dataclass
class AdminServer:
    url: str
    key_file: Path
    service: FakeService

    def run(self, *args: str) -> int:
        return main([*args, "--admin", self.url, "--key-file", str(self.key_file)])


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[AdminServer]:
    key_file = tmp_path / "admin.key"
    service = FakeService()
    app = build_admin_app(service, Verifier(create_key(key_file)))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="admin-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the admin server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield AdminServer(f"http://127.0.0.1:{port}", key_file, service)
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("switchboard: error: ")
    return lines[0]


# --- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["status"],
        ["create"],
        ["ls", "--no-such-flag"],
        ["snapshot"],
        ["snapshot", "inspect"],
        ["serve", "--max-resident", "zero"],
        ["serve", "--max-resident", "0"],
        ["serve", "--idle-timeout", "-1"],
        ["serve", "--listen", "nowhere"],
        ["serve", "--app", "no-colon"],
        ["serve", "--json"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: switchboard" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "snapshot" in capsys.readouterr().out


# --- serve -----------------------------------------------------------------------------------


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Config]:
    """Stand in for switchboard.server (the lead's module) and isolate config loading."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(name)
    seen: list[Config] = []

    def run(config: Config) -> int:
        seen.append(config)
        return 0

    module = types.ModuleType("switchboard.server")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "switchboard.server", module)
    return seen


def test_serve_passes_flags_into_the_config(fake_server: list[Config], tmp_path: Path) -> None:
    code = main(["serve", "--data-dir", str(tmp_path / "d"), "--listen", "0.0.0.0:9000",
                 "--admin-listen", "127.0.0.1:9001", "--app", "pkg.mod:app",
                 "--idle-timeout", "7.5", "--max-resident", "3"])
    assert code == 0
    [config] = fake_server
    assert config.data_dir == tmp_path / "d"
    assert config.listen == HostPort("0.0.0.0", 9000)
    assert config.admin_listen == HostPort("127.0.0.1", 9001)
    assert config.app == "pkg.mod:app"
    assert (config.idle_timeout_s, config.max_resident) == (7.5, 3)


def test_serve_defaults_and_data_dir_before_the_command(
    fake_server: list[Config], tmp_path: Path
) -> None:
    assert main(["--data-dir", "elsewhere", "serve"]) == 0
    assert fake_server[0].data_dir == Path("elsewhere")
    assert fake_server[0].listen == Config().listen


def test_serve_config_error_is_exit_1(
    fake_server: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--config", "missing.toml"]) == 1
    assert "cannot read config file missing.toml" in one_error_line(capsys.readouterr().err)
    assert fake_server == []


# --- snapshot inspect|verify -----------------------------------------------------------------


def test_snapshot_inspect_of_a_missing_file_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["snapshot", "inspect", str(tmp_path / "nope.snap")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "nope.snap" in one_error_line(err)


@pytest.fixture
def fake_inspect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for snapshots.inspect (another engineer's module): a file is good unless its
    contents say BAD."""

    def describe(path: Path) -> dict[str, Any]:
        verify(path)
        return {"tenant": "acme", "generation": 2, "header": {"codec": "msgpack"}}

    def verify(path: Path) -> None:
        if Path(path).read_bytes() == b"BAD":
            raise SnapshotError(f"{path}: corrupt snapshot: checksum mismatch")

    module = types.ModuleType("snapshots.inspect")
    module.describe = describe  # type: ignore[attr-defined]
    module.verify = verify  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshots.inspect", module)


def test_snapshot_inspect_prints_key_values_or_json(
    fake_inspect: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = tmp_path / "1.snap"
    snap.write_bytes(b"ok")
    assert main(["snapshot", "inspect", str(snap)]) == 0
    out = capsys.readouterr().out
    assert "tenant:" in out and "acme" in out and "header.codec:" in out
    assert main(["snapshot", "inspect", "--json", str(snap)]) == 0
    assert json.loads(capsys.readouterr().out)["generation"] == 2
    snap.write_bytes(b"BAD")
    assert main(["snapshot", "inspect", str(snap)]) == 1
    assert "checksum mismatch" in one_error_line(capsys.readouterr().err)


def test_snapshot_verify_a_tenant_checks_every_generation(
    fake_inspect: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snaps = tmp_path / "tenants" / "acme" / "snapshots"
    snaps.mkdir(parents=True)
    for generation in (9, 10):
        (snaps / f"gen-{generation}.snap").write_bytes(b"ok")
    assert main(["snapshot", "verify", "acme", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"OK {snaps / 'gen-9.snap'}", f"OK {snaps / 'gen-10.snap'}"
    ]
    (snaps / "gen-10.snap").write_bytes(b"BAD")
    assert main(["snapshot", "verify", "acme", "--data-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    bad = snaps / "gen-10.snap"
    assert out.splitlines()[1] == f"BAD {bad}: corrupt snapshot: checksum mismatch"
    assert "1 of 2" in one_error_line(err)
    # A single file by path, and JSON for scripts.
    assert main(["snapshot", "verify", "--json", str(snaps / "gen-9.snap")]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"path": str(snaps / "gen-9.snap"), "ok": True, "error": None}
    ]


def test_snapshot_verify_with_the_real_inspector_finds_a_flipped_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalStore(tmp_path / "tenants")
    paths = [
        store.save("acme", msgpack.packb({"n": n}), codec="msgpack", app_version="1",
                   schema_version=1, journal_pos=n).path
        for n in range(2)
    ]
    assert main(["snapshot", "verify", "acme", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"OK {p}" for p in paths]
    assert main(["snapshot", "inspect", str(paths[1])]) == 0
    assert "tenant:" in capsys.readouterr().out

    damaged = bytearray(paths[1].read_bytes())
    damaged[-1] ^= 0xFF
    paths[1].write_bytes(bytes(damaged))
    assert main(["snapshot", "verify", "acme", "--data-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"OK {paths[0]}"
    assert out.splitlines()[1].startswith(f"BAD {paths[1]}: ")
    assert "1 of 2" in one_error_line(err)


def test_snapshot_verify_of_an_unknown_tenant_is_exit_1(
    fake_inspect: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["snapshot", "verify", "ghost", "--data-dir", str(tmp_path)]) == 1
    assert "no snapshots of tenant 'ghost'" in one_error_line(capsys.readouterr().err)


# --- client commands against a live admin API ------------------------------------------------


def test_client_commands_end_to_end(
    admin_server: AdminServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin_server.run("create", "a", "b") == 0
    assert capsys.readouterr().out.splitlines() == ["a", "b"]

    assert admin_server.run("ls", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert isinstance(listed, list)
    assert [t["name"] for t in listed] == ["a", "b"]
    for tenant in listed:
        assert tenant["state"] == "stopped" and tenant["pid"] is None
        assert {"port", "restarts", "last_request_at"} <= tenant.keys()

    assert admin_server.run("start", "a") == 0
    assert capsys.readouterr().out == "running\n"

    assert admin_server.run("ls") == 0
    header, row_a, row_b = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "STATE", "PID", "PORT", "RESTARTS", "LAST", "REQUEST",
                              "IN-FLIGHT"]
    assert row_a.split()[:3] == ["a", "running", "4321"] and "s ago" in row_a
    assert row_b.split()[:3] == ["b", "stopped", "-"]

    admin_server.service.tenants["a"] = replace(admin_server.service.tenants["a"],
                                                last_error="worker exited with status 1")
    assert admin_server.run("status", "a") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name:", "a"]
    assert "last_error: worker exited with status 1" in [" ".join(x.split()) for x in lines]
    assert admin_server.run("status", "a", "--json") == 0
    assert json.loads(capsys.readouterr().out)["last_error"] == "worker exited with status 1"

    assert admin_server.run("checkpoint", "a") == 0
    assert capsys.readouterr().out == "7\n"
    assert admin_server.run("stop", "a") == 0
    assert capsys.readouterr().out == "stopped\n"

    assert admin_server.run("rm", "a") == 0
    assert capsys.readouterr().out == ""
    assert admin_server.run("status", "a") == 1
    out, err = capsys.readouterr()
    assert out == "" and one_error_line(err) == "switchboard: error: no tenant named 'a'"


def test_options_before_the_command_and_from_the_environment(
    admin_server: AdminServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert main(["--admin", admin_server.url, "--key-file", str(admin_server.key_file),
                 "--json", "create", "x"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["x"]

    monkeypatch.setenv("SWITCHBOARD_ADMIN", admin_server.url)
    monkeypatch.setenv("SWITCHBOARD_KEY_FILE", str(admin_server.key_file))
    assert main(["ls", "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["x"]

    # Without a key file option, the key is <data-dir>/admin.key.
    monkeypatch.delenv("SWITCHBOARD_KEY_FILE")
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(admin_server.key_file.parent))
    assert main(["rm", "x", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "x", "removed": True}


def test_failures_are_one_line_and_exit_1(
    admin_server: AdminServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert admin_server.run("create", "a") == 0
    capsys.readouterr()
    assert admin_server.run("create", "a") == 1
    out, err = capsys.readouterr()
    assert out == "" and one_error_line(err) == "switchboard: error: tenant 'a' already exists"

    assert admin_server.run("create", "ok", "Not_OK") == 1  # checked before anything is created
    assert "bad tenant name 'Not_OK'" in one_error_line(capsys.readouterr().err)
    assert "ok" not in admin_server.service.tenants

    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_text("not the key\n")
    assert main(["ls", "--admin", admin_server.url, "--key-file", str(wrong_key)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "bad signature" in line and "--key-file" in line

    assert main(["ls", "--admin", admin_server.url, "--key-file", str(tmp_path / "none")]) == 1
    assert "no admin key at" in one_error_line(capsys.readouterr().err)


def test_an_unreachable_admin_api_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key_file = tmp_path / "admin.key"
    create_key(key_file)
    url = f"http://127.0.0.1:{port}"
    assert main(["ls", "--admin", url, "--key-file", str(key_file)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot reach the admin API at {url}" in line
    assert "switchboard serve" in line
    assert main(["ls", "--admin", "localhost:8001", "--key-file", str(key_file)]) == 1
    assert "bad admin URL" in one_error_line(capsys.readouterr().err)
