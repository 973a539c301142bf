"""The admin API (switchboard.admin) driven in-process through httpx.ASGITransport.

The service behind it is a small in-memory fake of the TenantService protocol; the real
supervisor behind the same routes is covered by the integration tests.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from ops.client import AdminAuth
from switchboard.admin import build_admin_app
from switchboard.api import CheckpointResult, TenantInfo
from switchboard.errors import (
    TenantBusy,
    TenantExists,
    TenantUnavailable,
    UnknownTenant,
    WorkerError,
)
from switchboard.signing import Verifier, sign_request

KEY = b"test-key-0123456789"


class FakeService:
    """Just enough of a supervisor: a dict of tenants, and errors injected per tenant."""

    def __init__(self) -> None:
        self.tenants: dict[str, TenantInfo] = {}
        self.fail: dict[str, Exception] = {}  # tenant name -> error every call raises
        self.calls: list[tuple[str, str]] = []
        self.generation = 0

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

    def metrics_text(self) -> str:
        return f"# TYPE switchboard_tenants gauge\nswitchboard_tenants {len(self.tenants)}\n"


@pytest.fixture
def service() -> FakeService:
    fake = FakeService()
    fake.tenants["acme"] = TenantInfo(name="acme", state="running", pid=100, port=20001,
                                      restarts=2, last_request_at=1_700_000_000.5, in_flight=1)
    return fake


def make_client(service: FakeService, *, auth: httpx.Auth | None = None,
                max_body_bytes: int = 1024) -> httpx.AsyncClient:
    app = build_admin_app(service, Verifier(KEY), max_body_bytes=max_body_bytes)
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
     ("GET", "/")],
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
async def test_an_oversized_body_is_413_before_anything_else(
    client: httpx.AsyncClient, unsigned: httpx.AsyncClient, service: FakeService
) -> None:
    big = json.dumps({"name": "big", "pad": "x" * 2000}).encode()
    response = await client.post("/v1/tenants", content=big)  # signed, but too large
    assert response.status_code == 413
    assert "larger than 1024 bytes" in response.json()["error"]
    response = await unsigned.post("/v1/tenants", content=big)
    assert response.status_code == 413
    assert service.calls == []


@pytest.mark.anyio
async def test_an_oversized_streamed_body_without_length_is_413(service: FakeService) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 200

    async with make_client(service) as c:
        response = await c.post("/v1/tenants", content=chunks())
    assert response.status_code == 413


@pytest.mark.anyio
async def test_a_body_at_the_limit_is_accepted(service: FakeService) -> None:
    body = json.dumps({"name": "edge", "pad": ""}).encode()
    body = body.replace(b'""', b'"' + b"x" * (1024 - len(body)) + b'"')
    assert len(body) == 1024
    async with make_client(service, auth=AdminAuth(KEY)) as c:
        response = await c.post("/v1/tenants", content=body)
    assert response.status_code == 201
