"""The admin API (switchboard.admin) driven in-process through httpx.ASGITransport.

The service behind it is a small in-memory fake of the TenantService protocol; the real
supervisor behind the same routes is covered by the integration tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from ops.client import AdminAuth
from switchboard.admin import DEFAULT_MAX_BODY_BYTES, build_admin_app
from switchboard.api import CheckpointResult, TenantInfo
from switchboard.errors import (
    TenantBusy,
    TenantExists,
    TenantUnavailable,
    UnknownTenant,
    WorkerError,
)
from switchboard.nonces import SeenNonces
from switchboard.signing import Verifier, sign_request
from tests.conftest import tmpfs

KEY = b"test-key-0123456789"


class FakeService:
    """Just enough of a supervisor: a dict of tenants, and errors injected per tenant."""

    def __init__(self) -> None:
        self.tenants: dict[str, TenantInfo] = {}
        self.fail: dict[str, Exception] = {}  # tenant name -> error every call raises
        self.calls: list[tuple[str, str]] = []
        self.generation = 0
        self.imported: list[tuple[Path, bytes, int]] = []  # (path, contents, mode) as seen

    def _check(self, op: str, name: str) -> TenantInfo:
        self.calls.append((op, name))
        if name in self.fail:
            raise self.fail[name]
        if name not in self.tenants:
            raise UnknownTenant(name)
        return self.tenants[name]

    def _set(self, name: str, **changes: Any) -> TenantInfo:
        info = TenantInfo(**{**self.tenants[name].to_json(), **changes})
        self.tenants[name] = info
        return info

    def list_tenants(self) -> list[TenantInfo]:
        return sorted(self.tenants.values(), key=lambda t: t.name)

    def get_tenant(self, name: str) -> TenantInfo:
        return self._check("get", name)

    async def create_tenant(self, name: str) -> TenantInfo:
        self.calls.append(("create", name))
        if name in self.fail:
            raise self.fail[name]
        if name in self.tenants:
            raise TenantExists(name)
        info = TenantInfo(name=name, state="stopped", pid=None, port=20000 + len(self.tenants),
                          restarts=0, last_request_at=None, created_at=1.0)
        self.tenants[name] = info
        return info

    async def start_tenant(self, name: str) -> TenantInfo:
        self._check("start", name)
        return self._set(name, state="running", pid=4242)

    async def checkpoint_tenant(self, name: str) -> CheckpointResult:
        self._check("checkpoint", name)
        self.generation += 1
        return CheckpointResult(name=name, generation=self.generation, changed=True,
                                journal_pos=17)

    async def stop_tenant(self, name: str) -> TenantInfo:
        self._check("stop", name)
        return self._set(name, state="stopped", pid=None)

    async def remove_tenant(self, name: str) -> None:
        self._check("remove", name)
        del self.tenants[name]

    async def import_tenant(self, name: str, source: Path) -> TenantInfo:
        self.calls.append(("import", name))
        self.imported.append((source, source.read_bytes(), stat.S_IMODE(source.stat().st_mode)))
        return await self.create_tenant(name)

    def metrics_text(self) -> str:
        return f"# TYPE switchboard_tenants gauge\nswitchboard_tenants {len(self.tenants)}\n"


@pytest.fixture
def service() -> FakeService:
    fake = FakeService()
    fake.tenants["acme"] = TenantInfo(name="acme", state="running", pid=100, port=20001,
                                      restarts=2, last_request_at=1_700_000_000.5, in_flight=1)
    return fake


def make_client(service: FakeService, *, auth: httpx.Auth | None = None,
                max_body_bytes: int = 1024, **options: Any) -> httpx.AsyncClient:
    verifier = options.pop("verifier", None)
    if verifier is None:
        verifier = Verifier(KEY)
    app = build_admin_app(service, verifier, max_body_bytes=max_body_bytes, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin",
                             auth=auth)


@pytest.fixture
async def client(service: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(service, auth=AdminAuth(KEY)) as c:
        yield c


@pytest.fixture
async def unsigned(service: FakeService) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(service) as c:
        yield c


# --- routes ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/health")
    assert (response.status_code, response.json()) == (200, {"ok": True})


@pytest.mark.anyio
async def test_list_tenants(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/tenants")
    assert response.status_code == 200
    [acme] = response.json()["tenants"]
    assert acme["name"] == "acme" and acme["state"] == "running" and acme["pid"] == 100
    assert acme["port"] == 20001 and acme["restarts"] == 2
    assert acme["last_request_at"] == 1_700_000_000.5


@pytest.mark.anyio
async def test_create_then_get(client: httpx.AsyncClient, service: FakeService) -> None:
    response = await client.post("/v1/tenants", json={"name": "beta"})
    assert response.status_code == 201
    assert response.json()["name"] == "beta" and response.json()["state"] == "stopped"
    assert response.json()["pid"] is None
    response = await client.get("/v1/tenants/beta")
    assert response.status_code == 200 and response.json()["name"] == "beta"


@pytest.mark.anyio
async def test_start_checkpoint_stop_remove(client: httpx.AsyncClient,
                                            service: FakeService) -> None:
    response = await client.post("/v1/tenants/acme/stop")
    assert response.status_code == 200 and response.json()["state"] == "stopped"
    response = await client.post("/v1/tenants/acme/start")
    assert response.status_code == 200 and response.json()["state"] == "running"
    response = await client.post("/v1/tenants/acme/checkpoint")
    assert response.status_code == 200
    assert response.json() == {"name": "acme", "generation": 1, "changed": True,
                               "journal_pos": 17}
    response = await client.delete("/v1/tenants/acme")
    assert response.status_code == 204 and response.content == b""
    assert "acme" not in service.tenants


@pytest.mark.anyio
async def test_metrics_is_prometheus_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "switchboard_tenants 1" in response.text


# --- error mapping ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", ["Acme", "-acme", "a" * 64, "a_b", "acme\n", "%2e%2e", "a.b", "a b", "é"]
)
async def test_bad_names_are_400_and_never_reach_the_service(
    client: httpx.AsyncClient, service: FakeService, name: str
) -> None:
    response = await client.post("/v1/tenants", json={"name": name})
    assert response.status_code == 400
    assert "bad tenant name" in response.json()["error"]
    for method, path in [("GET", ""), ("POST", "/start"), ("POST", "/stop"),
                         ("POST", "/checkpoint"), ("DELETE", "")]:
        response = await client.request(method, f"/v1/tenants/{quote(name, safe='')}{path}")
        assert response.status_code == 400, (method, path)
    assert service.calls == []


@pytest.mark.anyio
async def test_an_encoded_dot_dot_is_a_bad_name(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    response = await client.post("/v1/tenants/%2e%2e/start")
    assert response.request.url.raw_path == b"/v1/tenants/%2e%2e/start"
    assert response.status_code == 400
    assert response.json()["error"].startswith("bad tenant name '..'")
    assert service.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"name": 5}', b'{"nom": "x"}',
                                  b"\xff\xfe"])
async def test_a_bad_create_body_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/v1/tenants", content=body)
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.anyio
async def test_unknown_tenant_is_404(client: httpx.AsyncClient) -> None:
    for method, path in [("GET", ""), ("POST", "/start"), ("POST", "/stop"),
                         ("POST", "/checkpoint"), ("DELETE", "")]:
        response = await client.request(method, f"/v1/tenants/ghost{path}")
        assert response.status_code == 404
        assert response.json() == {"error": "no tenant named 'ghost'"}


@pytest.mark.anyio
async def test_existing_tenant_is_409(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/tenants", json={"name": "acme"})
    assert response.status_code == 409
    assert response.json() == {"error": "tenant 'acme' already exists"}


@pytest.mark.anyio
async def test_busy_tenant_is_409(client: httpx.AsyncClient, service: FakeService) -> None:
    service.fail["acme"] = TenantBusy("acme is stopping")
    response = await client.post("/v1/tenants/acme/start")
    assert (response.status_code, response.json()) == (409, {"error": "acme is stopping"})


@pytest.mark.anyio
async def test_unavailable_is_503_with_retry_after_rounded_up(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    service.fail["acme"] = TenantUnavailable("acme is backing off after 3 failed starts", 2.1)
    response = await client.post("/v1/tenants/acme/start")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.json() == {"error": "acme is backing off after 3 failed starts"}


@pytest.mark.anyio
async def test_unavailable_for_good_has_no_retry_after(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    service.fail["acme"] = TenantUnavailable("acme failed 5 times; start it by hand")
    response = await client.post("/v1/tenants/acme/checkpoint")
    assert response.status_code == 503
    assert "retry-after" not in response.headers


@pytest.mark.anyio
async def test_a_broken_worker_is_502(client: httpx.AsyncClient, service: FakeService) -> None:
    service.fail["acme"] = WorkerError("acme's worker died during the checkpoint")
    response = await client.post("/v1/tenants/acme/checkpoint")
    assert response.status_code == 502
    assert response.json() == {"error": "acme's worker died during the checkpoint"}


@pytest.mark.anyio
async def test_unknown_path_and_wrong_method_are_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/nothing")
    assert response.status_code == 404 and "no such endpoint" in response.json()["error"]
    response = await client.put("/v1/tenants/acme")
    assert response.status_code == 405 and "not allowed" in response.json()["error"]


# --- authentication --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/health"), ("GET", "/v1/tenants"), ("POST", "/v1/tenants"),
     ("GET", "/metrics"), ("GET", "/no/such/path"), ("DELETE", "/v1/tenants/acme"),
     ("POST", "/v1/dashboard/login-url")],
)
async def test_every_path_needs_a_signature(
    unsigned: httpx.AsyncClient, service: FakeService, method: str, path: str
) -> None:
    response = await unsigned.request(method, path)
    assert response.status_code == 401
    assert response.json()["error"].startswith("missing signature")
    assert response.headers["www-authenticate"] == "Switchboard-HMAC-SHA256"
    assert "acme" in service.tenants and service.calls == []


@pytest.mark.anyio
async def test_a_wrong_key_is_401_bad_signature(service: FakeService) -> None:
    async with make_client(service, auth=AdminAuth(b"wrong key")) as c:
        response = await c.get("/v1/tenants")
    assert response.status_code == 401
    assert response.json()["error"].startswith("bad signature")


@pytest.mark.anyio
async def test_a_stale_request_is_401_stale_timestamp(unsigned: httpx.AsyncClient) -> None:
    headers = sign_request(KEY, "GET", "/v1/tenants", b"", timestamp=1_000_000_000)
    response = await unsigned.get("/v1/tenants", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"].startswith("stale timestamp")


@pytest.mark.anyio
async def test_a_replayed_request_is_401_replayed_nonce(
    unsigned: httpx.AsyncClient, service: FakeService
) -> None:
    headers = sign_request(KEY, "DELETE", "/v1/tenants/acme", b"")
    assert (await unsigned.delete("/v1/tenants/acme", headers=headers)).status_code == 204
    service.tenants["acme"] = TenantInfo("acme", "stopped", None, 20001, 0, None)
    response = await unsigned.delete("/v1/tenants/acme", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"].startswith("replayed nonce")
    assert "acme" in service.tenants


@pytest.mark.anyio
async def test_a_tampered_body_is_401(unsigned: httpx.AsyncClient, service: FakeService) -> None:
    headers = sign_request(KEY, "POST", "/v1/tenants", b'{"name": "good"}')
    response = await unsigned.post("/v1/tenants", content=b'{"name": "evil"}', headers=headers)
    assert response.status_code == 401
    assert response.json()["error"].startswith("bad signature")
    assert "evil" not in service.tenants


@pytest.mark.anyio
async def test_the_query_string_is_part_of_what_is_signed(unsigned: httpx.AsyncClient) -> None:
    headers = sign_request(KEY, "GET", "/v1/tenants?verbose=1", b"")
    response = await unsigned.get("/v1/tenants?verbose=1", headers=headers)
    assert response.status_code == 200
    headers = sign_request(KEY, "GET", "/v1/tenants", b"")
    response = await unsigned.get("/v1/tenants?verbose=1", headers=headers)
    assert response.status_code == 401


# --- body size -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_oversized_signed_body_is_413_and_an_unsigned_one_401(
    client: httpx.AsyncClient, unsigned: httpx.AsyncClient, service: FakeService
) -> None:
    big = json.dumps({"name": "big", "pad": "x" * 2000}).encode()
    response = await client.post("/v1/tenants", content=big)  # signed, but too large
    assert response.status_code == 413
    assert "larger than 1024 bytes" in response.json()["error"]
    assert response.headers["connection"] == "close"
    # The headers are checked before the body's size: unsigned is 401 whatever it carries.
    response = await unsigned.post("/v1/tenants", content=big)
    assert response.status_code == 401
    assert response.json()["error"].startswith("missing signature")
    assert service.calls == []


@pytest.mark.anyio
async def test_an_oversized_streamed_body_without_length_is_413(service: FakeService) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 200

    async with make_client(service, auth=AdminAuth(KEY)) as c:
        response = await c.post("/v1/tenants", content=chunks())
    assert response.status_code == 413
    assert service.calls == []


@pytest.mark.anyio
async def test_a_body_at_the_limit_is_accepted(service: FakeService) -> None:
    body = json.dumps({"name": "edge", "pad": ""}).encode()
    body = body.replace(b'""', b'"' + b"x" * (1024 - len(body)) + b'"')
    assert len(body) == 1024
    async with make_client(service, auth=AdminAuth(KEY)) as c:
        response = await c.post("/v1/tenants", content=body)
    assert response.status_code == 201


# --- the order of the checks: headers, then the body under its cap, then the signature ---------


async def call_raw(app: Any, method: str, path: str, headers: dict[str, str],
                   body_chunks: list[bytes]) -> tuple[int, dict[str, str], bytes, int]:
    """One request straight into the ASGI app: (status, headers, body, chunks of the request
    body the app asked for)."""
    asked = 0
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if asked < len(body_chunks):
            asked += 1
            return {"type": "http.request", "body": body_chunks[asked - 1],
                    "more_body": asked < len(body_chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("admin", 80),
             "client": ("127.0.0.1", 1), "headers": [(k.lower().encode(), v.encode())
                                                     for k, v in headers.items()]}
    await app(scope, receive, send)
    return answer["status"], answer["headers"], answer["body"], asked


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "check"),
    [({}, "missing signature"),
     (sign_request(KEY, "POST", "/v1/tenants", b"{}", timestamp=1_000_000_000),
      "stale timestamp"),
     (sign_request(KEY, "POST", "/v1/tenants", b"{}", nonce="short"), "malformed signature")],
)
async def test_failing_the_header_checks_is_401_before_any_body_is_read(
    service: FakeService, headers: dict[str, str], check: str
) -> None:
    app = build_admin_app(service, Verifier(KEY))
    status, answer, body, asked = await call_raw(
        app, "POST", "/v1/tenants", {**headers, "Content-Length": str(3 * 65536)},
        [b"x" * 65536] * 3)
    assert (status, asked) == (401, 0)
    assert json.loads(body)["error"].startswith(check)
    assert answer["connection"] == "close"  # the server stops reading the rest
    assert service.calls == []


@pytest.mark.anyio
async def test_a_reused_nonce_is_401_before_any_body_is_read(service: FakeService) -> None:
    app = build_admin_app(service, Verifier(KEY))
    headers = sign_request(KEY, "POST", "/v1/tenants/acme/stop", b"")
    assert (await call_raw(app, "POST", "/v1/tenants/acme/stop", headers, [b""]))[0] == 200
    status, _, body, asked = await call_raw(app, "POST", "/v1/tenants/acme/stop", headers,
                                            [b"x" * 65536] * 3)
    assert (status, asked) == (401, 0)
    assert json.loads(body)["error"].startswith("replayed nonce: nonce seen")


@pytest.mark.anyio
async def test_a_wrong_key_is_found_after_the_capped_body_and_nothing_is_done(
    service: FakeService,
) -> None:
    app = build_admin_app(service, Verifier(KEY))
    body = json.dumps({"name": "evil"}).encode()
    headers = sign_request(b"not the key", "POST", "/v1/tenants", body)
    status, _, answer, asked = await call_raw(app, "POST", "/v1/tenants", headers, [body])
    assert (status, asked) == (401, 1)
    assert json.loads(answer)["error"].startswith("bad signature")
    assert "evil" not in service.tenants
    # Over the JSON routes' cap (64 KiB by default) it is 413 after at most that much.
    big = [b"x" * 16384] * 8
    status, _, answer, asked = await call_raw(app, "POST", "/v1/tenants", headers, big)
    assert status == 413 and asked * 16384 <= DEFAULT_MAX_BODY_BYTES + 16384
    assert service.calls == []


@pytest.mark.anyio
async def test_a_signed_import_reaches_the_service_as_a_private_file_then_is_deleted(
    service: FakeService, tmp_path: Path
) -> None:
    export = os.urandom(300_000)
    async with make_client(service, auth=AdminAuth(KEY), staging_dir=lambda: tmp_path,
                           max_import_bytes=len(export)) as client:
        response = await client.post("/v1/tenants/copy/import", content=export)
        assert response.status_code == 201 and response.json()["name"] == "copy"
        [(path, contents, mode)] = service.imported
        assert (path.parent, contents, mode) == (tmp_path, export, 0o600)
        assert list(tmp_path.iterdir()) == []  # deleted once the import returned
        # One byte over the import cap: 413, nothing reaches the service, nothing is kept.
        response = await client.post("/v1/tenants/other/import", content=export + b"!")
        assert response.status_code == 413
        assert response.json()["error"] == f"request body larger than {len(export)} bytes"
        response = await client.post("/v1/tenants/empty/import", content=b"")
        assert response.status_code == 400
    assert [name for op, name in service.calls if op == "import"] == ["copy"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_a_nonce_that_cannot_be_made_durable_is_507_and_nothing_is_done(
    service: FakeService, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "64k", otherwise="test_signing's nonce file tests") as disk:
        verifier = Verifier(KEY, nonces=SeenNonces.open(disk / "nonces"))
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # ENOSPC: the disk is full
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        async with make_client(service, verifier=verifier) as client:
            refused = None
            for _ in range(500):  # until the nonce file's last page is full
                headers = sign_request(KEY, "POST", "/v1/tenants/acme/stop", b"")
                response = await client.post("/v1/tenants/acme/stop", headers=headers)
                if response.status_code != 200:
                    refused = headers
                    break
            assert refused is not None, "the tmpfs never filled up"
            assert response.status_code == 507
            assert "cannot record the admin nonce" in response.json()["error"]
            stops = len(service.calls)
            filler.unlink()
            # The refused request was not done, and its nonce stays refused;
            # a new one goes through once there is room, the file rewritten whole.
            response = await client.post("/v1/tenants/acme/stop", headers=refused)
            assert response.status_code == 401
            assert len(service.calls) == stops
            headers = sign_request(KEY, "POST", "/v1/tenants/acme/stop", b"")
            assert (await client.post("/v1/tenants/acme/stop", headers=headers)
                    ).status_code == 200
        reopened = SeenNonces.open(disk / "nonces")
        assert reopened.is_seen(headers["X-Switchboard-Nonce"], now=time.time())
        reopened.close()
