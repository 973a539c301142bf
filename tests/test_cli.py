"""The `switchboard` command (ops.cli.main): usage errors, exit codes and output of every
command, in table form and in --json form, against a real `switchboard serve` started by the
fixture and real snapshot and export files.

`main()` runs in this process (so capsys sees its output); the server it talks to is a real
router process with the demo app, killed with its process group at teardown.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from harness import free_port
from ops.cli import build_parser, main, serve_config
from snapshots.store import LocalStore
from switchboard import runfile
from switchboard.config import Config, HostPort
from switchboard.signing import create_key
from tests.conftest import COUNTER, Router, alive, snapshot_files

MakeRouter = Callable[..., Router]


@dataclass
class Cli:
    """`switchboard ...` aimed at one running router, with what it printed."""

    router: Router
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> tuple[int, str, str]:
        code = main([*args, "--admin", self.router.admin_url,
                     "--key-file", str(self.router.key_file)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, err
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str) -> str:
        """The one error line of a command that must exit 1 and print nothing on stdout."""
        code, out, err = self.run(*args)
        assert (code, out) == (1, ""), (code, out, err)
        return one_error_line(err)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SWITCHBOARD_* from the caller's shell, and a scratch working directory."""
    for name in [n for n in os.environ if n.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def server(make_router: MakeRouter) -> Router:
    """A real `switchboard serve` with the demo app (the default app)."""
    return make_router().start()


@pytest.fixture
def cli(server: Router, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(server, capsys)


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("switchboard: error: ")
    return lines[0]


def add_record(router: Router, tenant: str, fields: dict[str, Any]) -> None:
    with router.client() as client:
        response = client.post(f"/t/{tenant}/api/tables/things/records", json=fields)
    assert response.status_code == 201, response.text


def records(router: Router, tenant: str) -> list[dict[str, Any]]:
    with router.client() as client:
        response = client.get(f"/t/{tenant}/api/tables/things/records")
    assert response.status_code == 200, response.text
    return [r["fields"] for r in response.json()["records"]]


def flip_last_byte(path: Path) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))


# --- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["status"],
        ["create"],
        ["ls", "--no-such-flag"],
        ["export"],
        ["import"],
        ["snapshot"],
        ["snapshot", "inspect"],
        ["snapshot", "verify"],
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


def test_serve_flags_make_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--data-dir", str(tmp_path / "d"), "--listen", "0.0.0.0:9000",
         "--admin-listen", "127.0.0.1:0", "--app", "pkg.mod:app",
         "--idle-timeout", "7.5", "--max-resident", "3"])
    config = serve_config(args)
    assert config.data_dir == tmp_path / "d"
    assert config.listen == HostPort("0.0.0.0", 9000)
    assert config.admin_listen == HostPort("127.0.0.1", 0)  # port 0: the router picks one
    assert config.app == "pkg.mod:app"
    assert (config.idle_timeout_s, config.max_resident) == (7.5, 3)


def test_serve_defaults_and_data_dir_before_the_command() -> None:
    config = serve_config(build_parser().parse_args(["--data-dir", "elsewhere", "serve"]))
    assert config.data_dir == Path("elsewhere")
    assert (config.listen, config.admin_listen) == (Config().listen, Config().admin_listen)


def test_serve_config_error_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", "missing.toml"]) == 1
    assert "cannot read config file missing.toml" in one_error_line(capsys.readouterr().err)


def test_serve_runs_the_router_with_its_flags(make_router: MakeRouter) -> None:
    """The real `switchboard serve`: its flags reach the router, it reports the ports it
    bound for port 0, answers health as itself, and a SIGTERM stops it cleanly."""
    router = make_router(app=COUNTER, max_resident=1).start()
    published = runfile.read(router.data_dir)
    assert published is not None and router.proc is not None
    assert published.pid == router.proc.pid
    assert published.listen.startswith("127.0.0.1:") and router.port != 0
    assert published.admin_listen.startswith("127.0.0.1:") and router.admin_port != 0
    with router.client() as client:
        health = client.get("/_switchboard/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "pid": router.proc.pid}
        router.create("a", "b")
        assert client.get("/t/a/count").status_code == 200  # --app: the counter app serves
        assert client.get("/t/b/count").status_code == 200
    states = {row["name"]: row["state"] for row in router.ls()}
    assert sorted(states.values()) == ["running", "stopped"]  # --max-resident 1 swapped one out

    assert router.stop() == 0
    assert runfile.read(router.data_dir) is None  # removed on a clean exit


# --- tenant commands -------------------------------------------------------------------------


def test_tenant_commands_print_tables(cli: Cli) -> None:
    assert cli.ok("create", "a", "b") == "a\nb\n"

    header, row_a, row_b = cli.ok("ls").splitlines()
    assert header.split() == ["NAME", "STATE", "PID", "ADDRESS", "RESTARTS", "LAST", "REQUEST",
                              "IN-FLIGHT", "VERSION"]
    assert row_a.split()[:3] == ["a", "stopped", "-"]
    assert row_b.split()[:3] == ["b", "stopped", "-"]

    assert cli.ok("start", "a") == "running\n"
    pid = cli.router.info("a")["pid"]
    assert isinstance(pid, int) and alive(pid)
    add_record(cli.router, "a", {"n": 1})
    row_a = cli.ok("ls").splitlines()[1]
    assert row_a.split()[:3] == ["a", "running", str(pid)]
    assert row_a.split()[3].startswith("run/") and row_a.split()[3].endswith(".sock")
    assert "just now" in row_a or "s ago" in row_a  # LAST REQUEST

    status = [" ".join(line.split()) for line in cli.ok("status", "a").splitlines()]
    assert status[0] == "name: a"
    assert {"state: running", f"pid: {pid}"} <= set(status)

    assert cli.ok("checkpoint", "a") == "1\n"  # the generation written
    assert cli.ok("checkpoint", "a") == "unchanged\n"
    assert cli.ok("stop", "a") == "stopped\n"
    assert not alive(pid)

    assert cli.ok("rm", "b") == ""
    assert cli.fails("status", "b") == "switchboard: error: no tenant named 'b'"
    assert [line.split()[0] for line in cli.ok("ls").splitlines()] == ["NAME", "a"]


def test_tenant_commands_print_json(cli: Cli) -> None:
    created = cli.json("create", "a", "b")
    assert [(t["name"], t["state"]) for t in created] == [("a", "stopped"), ("b", "stopped")]

    listed = cli.json("ls")
    assert [t["name"] for t in listed] == ["a", "b"]
    contract_fields = {"name", "state", "pid", "port", "socket", "restarts", "last_request_at",
                       "host", "epoch", "moved_to"}
    for tenant in listed:
        assert contract_fields <= tenant.keys()
        assert tenant["state"] == "stopped" and tenant["pid"] is None
        assert tenant["host"] is None and tenant["moved_to"] is None

    started = cli.json("start", "a")
    assert started["name"] == "a" and started["state"] == "running"
    assert isinstance(started["pid"], int) and alive(started["pid"])
    add_record(cli.router, "a", {"n": 1})
    status = cli.json("status", "a")
    assert status["state"] == "running" and status["pid"] == started["pid"]
    assert status["last_request_at"] is not None

    checkpoint = cli.json("checkpoint", "a")
    assert (checkpoint["name"], checkpoint["generation"], checkpoint["changed"]) == ("a", 1, True)
    assert cli.json("checkpoint", "a")["changed"] is False

    stopped = cli.json("stop", "a")
    assert (stopped["state"], stopped["pid"]) == ("stopped", None)
    assert cli.json("rm", "b") == {"name": "b", "removed": True}
    assert [t["name"] for t in cli.json("ls")] == ["a"]


def test_export_and_import(cli: Cli, tmp_path: Path) -> None:
    cli.ok("create", "acme")
    for n in range(3):
        add_record(cli.router, "acme", {"n": n})
    exported = tmp_path / "acme.sbexport"

    line = cli.ok("export", "acme", "-o", str(exported))
    size = exported.stat().st_size
    assert line == (f"exported acme up to journal position 3 ({size} bytes) to {exported}\n")
    # Without -o: NAME.sbexport in the working directory (an export's size varies by a byte
    # or so with the time it records, so the two lines are not compared whole).
    default = cli.ok("export", "acme")
    assert default == (f"exported acme up to journal position 3 "
                       f"({Path('acme.sbexport').stat().st_size} bytes) to acme.sbexport\n")
    described = cli.json("export", "acme", "-o", str(tmp_path / "again.sbexport"))
    assert described["path"] == str(tmp_path / "again.sbexport")
    assert (described["tenant"], described["journal_pos"]) == ("acme", 3)
    assert described["size"] == (tmp_path / "again.sbexport").stat().st_size

    assert cli.ok("import", str(exported), "--as", "copy") == "copy\n"
    imported = cli.json("import", str(exported), "--as", "copy2")
    assert imported["name"] == "copy2"
    for name in ("copy", "copy2"):
        assert records(cli.router, name) == [{"n": 0}, {"n": 1}, {"n": 2}]
    # Without --as the name in the file is used, which exists here.
    assert cli.fails("import", str(exported)) == "switchboard: error: tenant 'acme' already exists"

    damaged = tmp_path / "damaged.sbexport"
    damaged.write_bytes(exported.read_bytes()[:-10])
    assert "damaged.sbexport" in cli.fails("import", str(damaged), "--as", "broken")
    assert cli.fails("import", str(tmp_path / "none.sbexport")).endswith(
        "none.sbexport: no such export file")
    assert sorted(t["name"] for t in cli.json("ls")) == ["acme", "copy", "copy2"]


# --- snapshot inspect|verify -----------------------------------------------------------------


def test_snapshot_commands_on_the_servers_snapshots(cli: Cli, tmp_path: Path) -> None:
    cli.ok("create", "acme")
    for n in range(2):
        add_record(cli.router, "acme", {"n": n})
        assert cli.ok("checkpoint", "acme") == f"{n + 1}\n"
    older, newer = snapshot_files(cli.router.data_dir, "acme")
    data_dir = str(cli.router.data_dir)

    # The server signs what it writes with <data-dir>/snapshot.key, where verify looks.
    assert cli.ok("snapshot", "verify", "acme", "--data-dir", data_dir).splitlines() == [
        f"OK (signed) {older}", f"OK (signed) {newer}"]
    assert cli.json("snapshot", "verify", "acme", "--data-dir", data_dir) == [
        {"path": str(p), "ok": True, "status": "signed", "signed": True, "error": None}
        for p in (older, newer)]
    assert cli.json("snapshot", "verify", str(newer), "--data-dir", data_dir) == [
        {"path": str(newer), "ok": True, "status": "signed", "signed": True, "error": None}]

    lines = [" ".join(line.split()) for line in cli.ok("snapshot", "inspect", str(newer),
                                                       "--data-dir", data_dir).splitlines()]
    assert {"tenant: acme", "generation: 2", "valid: yes", "format_version: 2", "signed: yes",
            "signature: verified", "epoch: 1"} <= set(lines)
    described = cli.json("snapshot", "inspect", str(newer))
    assert (described["tenant"], described["generation"], described["valid"]) == ("acme", 2, True)

    # The demo app's snapshots are segmented: damage the segment file only `newer` names.
    shared = {s["stored"] for s in
              cli.json("snapshot", "inspect", str(older))["segments"].values()}
    own = next(s["stored"] for s in described["segments"].values() if s["stored"] not in shared)
    flip_last_byte(newer.parent / own.removeprefix("segment file "))
    code, out, err = cli.run("snapshot", "verify", "acme", "--data-dir", data_dir)
    assert code == 1
    assert out.splitlines()[0] == f"OK (signed) {older}"
    assert out.splitlines()[1].startswith(f"BAD {newer}: corrupt: segment 'tables/")
    assert "checksum mismatch" in out.splitlines()[1]
    assert "1 of 2" in one_error_line(err)
    code, out, err = cli.run("snapshot", "verify", "--json", "acme", "--data-dir", data_dir)
    assert code == 1 and [r["ok"] for r in json.loads(out)] == [True, False]
    assert cli.json("snapshot", "inspect", str(newer))["valid"] is False


def test_snapshot_verify_a_directory_in_generation_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gen-9 before gen-10, whether or not the store pads generation numbers."""
    store = LocalStore.in_data_dir(tmp_path / "data")
    saved = store.save("acme", msgpack.packb({"n": 1}), codec="msgpack", app_version="1",
                       schema_version=1, journal_pos=1).path
    folder = tmp_path / "copies"
    folder.mkdir()
    for generation in (10, 9):
        (folder / f"gen-{generation}.snap").write_bytes(saved.read_bytes())
    assert main(["snapshot", "verify", str(folder), "--data-dir", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.splitlines() == [  # no key: written unsigned
        f"OK (unsigned) {folder / 'gen-9.snap'}", f"OK (unsigned) {folder / 'gen-10.snap'}"]


def test_snapshot_errors_are_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "inspect", str(tmp_path / "nope.snap")]) == 1
    assert "nope.snap" in one_error_line(capsys.readouterr().err)

    garbage = tmp_path / "garbage.snap"
    garbage.write_bytes(b"not a snapshot at all")
    assert main(["snapshot", "inspect", str(garbage)]) == 1
    assert "garbage.snap" in one_error_line(capsys.readouterr().err)

    assert main(["snapshot", "verify", "ghost", "--data-dir", str(tmp_path)]) == 1
    assert "no snapshots of tenant 'ghost'" in one_error_line(capsys.readouterr().err)
    assert main(["snapshot", "verify", "Not/A/Name"]) == 1
    assert "not a tenant name" in one_error_line(capsys.readouterr().err)


# --- options and failures --------------------------------------------------------------------


def test_options_before_the_command_and_from_the_environment(
    server: Router, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--admin", server.admin_url, "--key-file", str(server.key_file),
                 "--json", "create", "x"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["x"]

    monkeypatch.setenv("SWITCHBOARD_ADMIN", server.admin_url)
    monkeypatch.setenv("SWITCHBOARD_KEY_FILE", str(server.key_file))
    assert main(["ls", "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["x"]

    # Without a key file option, the key is <data-dir>/admin.key.
    monkeypatch.delenv("SWITCHBOARD_KEY_FILE")
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(server.data_dir))
    assert main(["rm", "x", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "x", "removed": True}


def test_failures_are_one_line_and_exit_1(cli: Cli, tmp_path: Path) -> None:
    cli.ok("create", "a")
    assert cli.fails("create", "a") == "switchboard: error: tenant 'a' already exists"

    # Every name is checked before any is created.
    assert "bad tenant name 'Not_OK'" in cli.fails("create", "ok", "Not_OK")
    assert "bad tenant name 'a/b'" in cli.fails("status", "a/b")
    assert [t["name"] for t in cli.json("ls")] == ["a"]
    assert cli.fails("start", "ghost") == "switchboard: error: no tenant named 'ghost'"

    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_text("not the key\n")
    code = main(["ls", "--admin", cli.router.admin_url, "--key-file", str(wrong_key)])
    out, err = cli.capsys.readouterr()
    assert (code, out) == (1, "")
    assert "bad signature" in one_error_line(err) and "--key-file" in err

    assert main(["ls", "--admin", cli.router.admin_url,
                 "--key-file", str(tmp_path / "none")]) == 1
    assert "no admin key at" in one_error_line(cli.capsys.readouterr().err)


def test_an_unreachable_admin_api_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A port nothing listens on: free_port() is the right tool here, there is no router.
    url = f"http://127.0.0.1:{free_port()}"
    key_file = tmp_path / "admin.key"
    create_key(key_file)
    assert main(["ls", "--admin", url, "--key-file", str(key_file)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot reach the admin API at {url}" in line and "switchboard serve" in line
    assert main(["ls", "--admin", "localhost:8001", "--key-file", str(key_file)]) == 1
    assert "bad admin URL" in one_error_line(capsys.readouterr().err)


def test_the_admin_client_signs_what_it_sends(server: Router) -> None:
    """AdminAuth (ops.client) signs query strings, bodies and encoded paths as sent."""
    from ops.client import AdminAuth
    from switchboard.signing import load_key

    key = load_key(server.key_file)
    with httpx.Client(base_url=server.admin_url, auth=AdminAuth(key), timeout=30) as client:
        assert client.post("/v1/tenants", json={"name": "signed"}).status_code == 201
        assert client.get("/v1/tenants", params={"verbose": "1"}).status_code == 200
        assert client.get("/v1/tenants/sign%65d").status_code == 200  # %65 is "e"
    with httpx.Client(base_url=server.admin_url, timeout=30) as unsigned:
        assert unsigned.get("/v1/tenants").status_code == 401


def test_a_router_sigkilled_leaves_a_stale_router_file_that_is_not_trusted(
    make_router: MakeRouter,
) -> None:
    """A router killed with SIGKILL cannot remove router.json; the next router on the same
    data dir replaces it, and the harness waits for the file that names its own pid."""
    first = make_router().start()
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    stale = runfile.read(first.data_dir)
    assert stale is not None and stale.pid == first.proc.pid
    second = make_router(first.data_dir.name).start()
    assert second.proc is not None and second.pid == second.proc.pid != stale.pid
    assert runfile.read(second.data_dir) == second.addresses
