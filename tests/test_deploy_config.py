"""`switchboard deploy-config`: what it prints follows the router's settings, bad input gets a
clear error, the systemd unit passes `systemd-analyze verify`, and the real `serve` speaks
systemd's notify protocol (READY=1 once listening, RELOADING=1/READY=1 around a SIGHUP
reload that applies the new settings, STOPPING=1) to a stand-in notify socket."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.deploy_config import render_template
from ops.errors import CommandError
from switchboard.config import load
from tests.conftest import SWITCHBOARD, Router, wait_until

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def deploy_config(tmp_path: Path, *args: str,
                  config: str = "") -> subprocess.CompletedProcess[str]:
    config_file = tmp_path / "switchboard.toml"
    config_file.write_text(config)
    return subprocess.run(
        [str(SWITCHBOARD), "deploy-config", *args, "--config", str(config_file),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)


SETTINGS = """
max_body_bytes = 12345
start_timeout_s = 20
request_timeout_s = 40
body_timeout_s = 7
header_timeout_s = 9
keepalive_timeout_s = 50
trusted_proxies = ["127.0.0.1"]
listen = "127.0.0.1:8123"
"""


def test_nginx_site_follows_the_routers_settings(tmp_path: Path) -> None:
    result = deploy_config(tmp_path, "nginx", "--server-name", "db.example.com",
                           config=SETTINGS)
    assert result.returncode == 0, result.stderr
    site = result.stdout
    for line in ("client_max_body_size 12345;", "client_body_timeout 7s;",
                 "client_header_timeout 9s;", "keepalive_timeout 50s;",
                 "proxy_read_timeout 60s;",  # start_timeout_s + request_timeout_s
                 "server 127.0.0.1:8123 max_fails=0;", "keepalive_timeout 40s;",
                 "server_name db.example.com;", "listen 80;", "proxy_request_buffering off;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                 '#     trusted_proxies = ["127.0.0.1", "::1"]'):
        assert line in site, line
    assert "{{" not in site and "{%" not in site
    assert result.stderr == ""  # the router already trusts 127.0.0.1: nothing to add


def test_the_routers_missing_settings_are_named(tmp_path: Path) -> None:
    result = deploy_config(tmp_path, "apache", "--host-mode", "Example.COM", "--direct")
    assert result.returncode == 0
    assert "ServerAlias *.example.com" in result.stdout
    assert "Include " + str(tmp_path / "data" / "direct" / "apache.conf") in result.stdout
    notes = result.stderr.splitlines()
    assert any("trusted_proxies does not list 127.0.0.1" in n for n in notes)
    assert any('routing = "host" and base_domain = "example.com"' in n for n in notes)
    assert any('direct_mode = "apache"' in n for n in notes)
    assert any('worker_transport = "tcp"' in n for n in notes)


def test_tls(tmp_path: Path) -> None:
    result = deploy_config(tmp_path, "nginx", "--tls-cert", "/etc/ssl/a.pem",
                           "--tls-key", "/etc/ssl/a.key")
    assert result.returncode == 0
    assert "listen 443 ssl;" in result.stdout
    assert "ssl_certificate_key /etc/ssl/a.key;" in result.stdout


@pytest.mark.parametrize(("args", "status", "message"), [
    (["nginx", "--tls-cert", "/a.pem"], 1, "--tls-cert and --tls-key go together"),
    (["nginx", "--router", "nowhere"], 2, "expected HOST:PORT"),
    (["nginx", "--router", "127.0.0.1:0"], 2, "cannot be 0"),
    (["nginx", "--listen", "70000"], 2, "expected a port number"),
    (["apache", "--host-mode", "bad domain!"], 2, "not a domain name"),
    (["lighttpd"], 2, "invalid choice"),
])
def test_bad_input_is_a_clear_error(tmp_path: Path, args: list[str], status: int,
                                    message: str) -> None:
    result = deploy_config(tmp_path, *args)
    assert result.returncode == status
    assert message in result.stderr
    assert result.stdout == ""


def test_a_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = deploy_config(tmp_path, "nginx", config="max_body_bytes = -1\n")
    assert result.returncode == 1
    assert "bad value for max_body_bytes" in result.stderr


def test_template_mistakes_are_errors() -> None:
    assert render_template("a\n{% if x and not y %}\nb {{z}}\n{% else %}\nc\n{% endif %}\n",
                           {"x": True, "y": False, "z": 1}) == "a\nb 1\n"
    with pytest.raises(CommandError, match="no value for 'z'"):
        render_template("{{z}}\n", {})
    with pytest.raises(CommandError, match="if without endif"):
        render_template("{% if x %}\n", {"x": True})
    with pytest.raises(CommandError, match="endif without if"):
        render_template("{% endif %}\n", {})


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = deploy_config(tmp_path, "systemd", "--user", "sbuser", config=SETTINGS)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "switchboard.service"
    unit.write_text(result.stdout)
    for line in ("Type=notify", "KillMode=mixed", "Restart=on-failure", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes", "User=sbuser",
                 f"ReadWritePaths={tmp_path / 'data'}", "ExecReload=/bin/kill -HUP $MAINPID",
                 f"ExecStart={SWITCHBOARD} serve --config {tmp_path / 'switchboard.toml'}"):
        assert line in result.stdout, line
    # The router's own stop deadline (stop_timeout_s, 10 s by default) comes first.
    assert "TimeoutStopSec=40" in result.stdout
    verify = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""
    # It can fail: a unit whose ExecStart does not exist is refused.
    unit.write_text(result.stdout.replace(str(SWITCHBOARD), "/nonexistent/switchboard"))
    broken = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert broken.returncode != 0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        yield sock, path
    finally:
        sock.close()


def messages(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.mark.slow
def test_serve_notifies_ready_reloads_on_sighup_and_says_stopping(
        tmp_path: Path, make_router: Any, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    config_file = tmp_path / "switchboard.toml"
    config_file.write_text("max_body_bytes = 1000\n")
    router: Router = make_router(env={"NOTIFY_SOCKET": path},
                                 extra=["--config", str(config_file)])
    router.start()
    ready = messages(sock)
    assert ready["READY"] == "1" and ready["MAINPID"] == str(router.pid)
    # READY came once the router listened: its health check answers.
    assert httpx.get(f"{router.url}/_switchboard/health", timeout=10).json()["pid"] == router.pid
    router.admin_call("POST", "/v1/tenants", {"name": "acme"})
    upload = f"{router.url}/t/acme/api/upload"
    assert httpx.post(upload, content=b"x" * 5000, timeout=60).status_code == 413

    # systemctl reload: SIGHUP. A reloadable setting applies at once; one that needs a
    # restart is named in the log and left as it was.
    config_file.write_text('max_body_bytes = 100000\napp = "tests.apps.counter:app"\n')
    router.signal(signal.SIGHUP)
    assert messages(sock)["RELOADING"] == "1"
    assert messages(sock)["READY"] == "1"
    answer = httpx.post(upload, content=b"x" * 5000, timeout=60)
    assert answer.status_code == 200 and answer.json()["bytes"] == 5000
    wait_until(lambda: "max_body_bytes = 100000" in router.log(), 10, "the reload logged")
    assert "app changed" in router.log() and "takes a restart" in router.log()

    # A file that does not load changes nothing.
    config_file.write_text("max_body_bytes = [\n")
    router.signal(signal.SIGHUP)
    assert messages(sock)["RELOADING"] == "1"
    assert messages(sock)["READY"] == "1"
    assert httpx.post(upload, content=b"x" * 5000, timeout=60).status_code == 200
    assert "nothing changed" in router.log()

    router.signal(signal.SIGTERM)
    assert messages(sock)["STOPPING"] == "1"
    assert router.proc is not None and router.proc.wait(60) == 0


def test_reload_keeps_settings_that_need_a_restart() -> None:
    from switchboard.reload import reloaded

    current = load(env={}, overrides={"idle_timeout_s": 30})
    fresh, changed = reloaded(current, lambda: load(
        env={}, overrides={"idle_timeout_s": 5, "listen": "127.0.0.1:9999"}))
    assert changed == ["idle_timeout_s"]
    assert fresh.idle_timeout_s == 5 and fresh.listen == current.listen


def test_direct_mode_setting_is_checked() -> None:
    from switchboard.errors import ConfigError

    with pytest.raises(ConfigError, match="direct_mode must be 'nginx', 'apache' or ''"):
        load(env={}, overrides={"direct_mode": "lighttpd"})


def test_direct_mode_over_private_unix_sockets_is_warned_about(make_router: Any) -> None:
    """direct_mode with the default worker_transport: the web server could not open the
    sockets, so every request would take the fallback; the router says what to set."""
    router: Router = make_router(env={"SWITCHBOARD_DIRECT_MODE": "nginx"}).start()
    assert 'set worker_transport = \\"tcp\\"' in router.log()
    assert (router.data_dir / "direct" / "nginx.conf").exists()
