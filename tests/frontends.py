"""Helpers for the tests that put a real nginx or Apache in front of a real router with the
config `switchboard deploy-config` prints (tests/test_deploy_servers.py,
tests/test_direct_mode.py)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from websockets.sync.client import connect

from harness import SWITCHBOARD
from harness.router import RouterProcess
from harness.webservers import WebServer

UPLOAD_BYTES = 50 * 1024 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
BASE_DOMAIN = "sb.test"


def router_env(**extra: str) -> dict[str, str]:
    """The settings a router behind a front server runs with in these tests."""
    return {"SWITCHBOARD_TRUSTED_PROXIES": "127.0.0.1",
            "SWITCHBOARD_MAX_BODY_BYTES": str(MAX_BODY_BYTES), **extra}


def deploy_config(router: RouterProcess, kind: str, *args: str) -> str:
    """What `switchboard deploy-config KIND --router <router> ARGS` prints, run as a user
    would, with the router's own environment (so its settings)."""
    result = subprocess.run(
        [str(SWITCHBOARD), "deploy-config", kind, "--router", f"127.0.0.1:{router.port}",
         "--data-dir", str(router.data_dir), *args],
        capture_output=True, text=True, env=router.env(), timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def install(server: WebServer, router: RouterProcess, kind: str, site: str,
            *args: str) -> str:
    """Generate the site, let the server test it (`nginx -t`, `apachectl -t`), load it;
    the base URL it serves on."""
    from harness.net import free_port

    port = free_port()
    text = deploy_config(router, kind, "--listen", str(port), *args)
    assert "switchboard_router" in text or "ProxyPass" in text
    server.add_site(site, text, port)  # runs the server's own config test first
    return f"http://127.0.0.1:{port}"


class BrowserLikeTransport(httpx.HTTPTransport):
    """Sends a request again, once, when its connection was closed or reset before the
    answer's head came back: what browsers do on a kept-alive connection. A server's reload
    (nginx -s reload, Apache's graceful restart; direct mode reloads as tenants come and go)
    closes its idle client connections, and a request may leave on one just as it closes
    (the server never read it: the kernel answers with a reset). `resent` counts these."""

    resent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)  # returns once the head has arrived
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if isinstance(exc, httpx.RemoteProtocolError) and (
                    "without sending a response" not in str(exc)):
                raise
            BrowserLikeTransport.resent += 1
            return super().handle_request(request)


def client(base_url: str, tenant: str, *, host_mode: bool) -> httpx.Client:
    """A client whose paths are the tenant app's own: /t/<tenant> in path mode, the Host
    header in host mode."""
    if host_mode:
        return httpx.Client(base_url=base_url, headers={"Host": f"{tenant}.{BASE_DOMAIN}"},
                            timeout=60, trust_env=False, transport=BrowserLikeTransport())
    return httpx.Client(base_url=f"{base_url}/t/{tenant}", timeout=60, trust_env=False,
                        transport=BrowserLikeTransport())


def demo_requests(http: httpx.Client) -> None:
    """The demo app's own API works end to end, a session cookie included."""
    created = http.post("/api/tables/people/records", json={"name": "Ada"})
    assert created.status_code == 201, created.text
    record_id = created.json()["id"]
    assert http.get(f"/api/tables/people/records/{record_id}").json()["fields"] == {
        "name": "Ada"}
    assert http.post("/login", json={"user": "ada"}).status_code == 200
    assert http.get("/api/me").json() == {"user": "ada"}
    page = http.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def upload_50mb(http: httpx.Client) -> None:
    """A 50 MB body streamed through, checked by the worker's hash of what it read."""
    chunk = os.urandom(1 << 20)
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for _ in range(UPLOAD_BYTES // len(chunk)):
            digest.update(chunk)
            yield chunk

    answer = http.post("/api/upload", content=body(),
                       headers={"Content-Length": str(UPLOAD_BYTES)})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json() == {"bytes": UPLOAD_BYTES, "sha256": digest.hexdigest()}


def websocket_echo(base_url: str, tenant: str, *, host_mode: bool) -> None:
    port = int(base_url.rpartition(":")[2])
    if host_mode:
        uri = f"ws://{tenant}.{BASE_DOMAIN}:{port}/ws/echo"
    else:
        uri = f"ws://127.0.0.1:{port}/t/{tenant}/ws/echo"
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    with connect(uri, sock=sock, open_timeout=30, close_timeout=5) as ws:
        for message in ("hello", "through the front server"):
            ws.send(message)
            assert ws.recv(timeout=30) == message
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=30) == b"\x00\x01binary"


@contextmanager
def front_client(base_url: str, tenant: str, *, host_mode: bool) -> Iterator[httpx.Client]:
    with client(base_url, tenant, host_mode=host_mode) as http:
        yield http


def requests_seen(router: RouterProcess, tenant: str) -> int:
    """The router's own count of the tenant's requests (those it relayed)."""
    info: dict[str, Any] = router.tenant_info(tenant)
    return int(info["requests"])
