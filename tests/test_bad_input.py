"""What bad input gets from a real router (issue 3, "Bad input"): a clear error and nothing
touched or lost. Bad tenant names, unknown tenants, oversized bodies, unsigned admin calls, a
tenant port someone else holds, a worker that crashes at import."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    BROKEN,
    COUNTER,
    RawConnection,
    Router,
    free_port,
    raw_exchange,
    request_bytes,
    wait_until,
)

MakeRouter = Callable[..., Router]
SMALL_LIMIT = 1_000_000


@pytest.fixture
def counter(make_router: MakeRouter) -> Router:
    router = make_router(app=COUNTER, env={"SWITCHBOARD_MAX_BODY_BYTES": str(SMALL_LIMIT)}).start()
    router.create("acme")
    return router


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


BAD_NAMES = [
    "..",
    "%2e%2e",
    "%2E%2E",
    ".",
    "",
    "UPPER",
    "Acme",
    "a" * 64,
    "a%00b",
    "a%2fb",
    "-lead",
    "_x",
    "a.b",
    "a%20b",
    "%61cme",
    "\xe9t\xe9",
]  # %61cme decodes to a real tenant: still no


@pytest.mark.parametrize("raw_name", BAD_NAMES)
def test_a_bad_tenant_name_is_a_400_and_touches_nothing(counter: Router, raw_name: str) -> None:
    before = tree(counter.data_dir / "tenants")
    with RawConnection(counter.port) as conn:
        response = conn.request("GET", f"/t/{raw_name}/count")
    assert response.status == 400, response.body
    # Non-ASCII bytes are refused by the HTTP parser itself, before routing.
    assert b"bad tenant name" in response.body or b"malformed request" in response.body
    assert len(response.body) < 1000
    assert response.header("connection") == "close"
    assert tree(counter.data_dir / "tenants") == before
    assert [row["name"] for row in counter.ls()] == ["acme"]


def test_a_nul_byte_in_the_name_is_a_400(counter: Router) -> None:
    before = tree(counter.data_dir / "tenants")
    answer = raw_exchange(counter.port, b"GET /t/a\x00b/count HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert tree(counter.data_dir / "tenants") == before


@pytest.mark.parametrize("name", ["UPPER", "a" * 64, "-lead", "..", "a/b"])
def test_creating_a_tenant_with_a_bad_name_is_refused(counter: Router, name: str) -> None:
    before = tree(counter.data_dir / "tenants")
    result = counter.cli("create", "--", name, check=False)
    assert result.returncode == 1
    assert "bad tenant name" in result.stderr or "name" in result.stderr
    assert tree(counter.data_dir / "tenants") == before


def test_an_unknown_tenant_is_a_404_with_a_short_page(counter: Router) -> None:
    with counter.client() as client:
        response = client.get("/t/nobody/some/page")
        elsewhere = client.get("/not-a-tenant-url")
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert len(response.content) < 1000
    # One page for both: a visitor cannot tell a missing tenant from a URL that names none.
    assert elsewhere.status_code == 404 and elsewhere.content == response.content
    assert not (counter.data_dir / "tenants" / "nobody").exists()


def test_a_body_over_max_body_bytes_with_content_length_is_a_413(counter: Router) -> None:
    # The router answers from the header alone; a raw socket reads the answer even though the
    # body is still being sent.
    head = request_bytes("POST", "/t/acme/echo", {"Content-Length": str(SMALL_LIMIT + 1)})
    answer = raw_exchange(counter.port, head + b"x" * 100_000)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"request body over 1000000 bytes" in answer
    assert counter.info("acme")["state"] == "stopped"  # refused before the tenant was woken
    with counter.client() as client:  # exactly at the limit is fine
        ok = client.post("/t/acme/echo", content=b"y" * SMALL_LIMIT)
    assert ok.status_code == 200 and ok.json()["bytes"] == SMALL_LIMIT


def test_a_chunked_body_over_max_body_bytes_is_a_413(counter: Router) -> None:
    def too_much() -> Iterator[bytes]:
        for _ in range(40):
            yield b"z" * 50_000  # 2 MB in all, twice the limit

    with counter.client() as client:
        response = client.post("/t/acme/echo", content=too_much())
        assert response.status_code == 413
        assert "request body over 1000000 bytes" in response.text
        assert client.get("/t/acme/count").status_code == 200  # the tenant is fine
    assert counter.info("acme")["in_flight"] == 0


def test_a_raw_chunked_body_over_the_limit_is_answered_before_it_ends(counter: Router) -> None:
    with RawConnection(counter.port) as conn:
        conn.send(b"POST /t/acme/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (100_000, b"w" * 100_000)
        for _ in range(11):  # 1.1 MB and no final chunk
            conn.send(chunk)
        response = conn.read_response()
    assert response.status == 413


def test_a_smuggling_shaped_request_is_a_400(counter: Router) -> None:
    answer = raw_exchange(
        counter.port,
        b"POST /t/acme/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /t/acme/count HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1") == 1
    assert counter.info("acme")["requests"] == 0


def test_an_unsigned_admin_call_is_a_401(counter: Router) -> None:
    listing = httpx.get(counter.admin + "/v1/tenants", timeout=10)
    assert listing.status_code == 401
    assert "signature" in listing.text.lower() or "authorization" in listing.text.lower()
    create = httpx.post(counter.admin + "/v1/tenants", json={"name": "sneaky"}, timeout=10)
    assert create.status_code == 401
    forged = httpx.post(
        counter.admin + "/v1/tenants",
        json={"name": "sneaky"},
        timeout=10,
        headers={
            "X-Switchboard-Timestamp": "1",
            "X-Switchboard-Nonce": "n" * 20,
            "Authorization": "Switchboard-HMAC-SHA256 " + "0" * 64,
        },
    )
    assert forged.status_code == 401
    assert [row["name"] for row in counter.ls()] == ["acme"]
    assert not (counter.data_dir / "tenants" / "sneaky").exists()


TCP = {"SWITCHBOARD_WORKER_TRANSPORT": "tcp"}  # ports matter only for TCP workers


def test_a_taken_port_moves_the_tenant_and_the_new_port_is_recorded(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER, env=TCP).start()
    router.create("acme")
    router.cli("start", "acme")  # a TCP tenant gets its port at its first start, and keeps it
    old_port = router.ls()[0]["port"]
    router.cli("stop", "acme")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past earlier tests' TIME_WAIT
    try:
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        with router.client() as client:
            response = client.get("/t/acme/count")
        assert response.status_code == 200
        new_port = router.ls()[0]["port"]
        assert new_port != old_port
        assert router.info("acme")["state"] == "running"
        with httpx.Client(timeout=10) as direct:  # the worker really serves on the new port
            assert direct.get(f"http://127.0.0.1:{new_port}/count").status_code == 200
    finally:
        squatter.close()
    assert router.stop() == 0
    again = make_router(router.data_dir.name, app=COUNTER, env=TCP).start()
    assert again.ls()[0]["port"] == new_port  # recorded on disk, not only in memory


def test_no_free_port_left_is_a_503_with_the_reason_not_a_hang(make_router: MakeRouter) -> None:
    port = free_port()
    router = make_router(
        app=COUNTER,
        env={**TCP, "SWITCHBOARD_PORT_RANGE": f"{port}-{port}",
             "SWITCHBOARD_MAX_BOOT_FAILURES": "1"},
    ).start()
    router.create("acme")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with router.client(timeout=20) as client:
            response = client.get("/t/acme/count")
        assert response.status_code == 503
        assert f"no free port left in {port}-{port}" in router.info("acme")["last_error"]
        assert router.info("acme")["state"] == "failed"
    finally:
        squatter.close()
    assert router.cli("start", "acme").stdout.strip() == "running"  # once the port is free again


def test_a_worker_that_crashes_at_import_ends_failed_with_the_reason(
    make_router: MakeRouter,
) -> None:
    router = make_router(
        app=BROKEN, env={"SWITCHBOARD_BACKOFF_BASE_S": "0.05", "SWITCHBOARD_MAX_BOOT_FAILURES": "3"}
    ).start()
    router.create("acme")
    with router.client() as client:
        first = client.get("/t/acme/")
    assert first.status_code == 503 and "retry-after" in first.headers
    assert "broken on purpose" not in first.text  # the reason is the operator's (below)

    def failed_for_good() -> bool:
        row = router.info("acme")
        return row["state"] == "failed" and row["retry_at"] is None

    wait_until(failed_for_good, 15)
    status = router.tenant("acme")
    assert status["state"] == "failed" and status["pid"] is None
    assert "RuntimeError: this app is broken on purpose" in status["last_error"]
    assert "this app is broken on purpose" in router.cli("status", "acme").stdout
    assert "this app is broken on purpose" in router.log()
    assert router.worker_pids() == []
    with router.client() as client:
        later = client.get("/t/acme/")
    assert later.status_code == 503 and "retry-after" not in later.headers
    # An operator's start clears the count and tries again: it fails again, loudly, with the
    # same reason, backs off and ends failed after the same bounded number of tries.
    result = router.cli("start", "acme", check=False)
    assert result.returncode == 1 and "broken on purpose" in result.stderr
    wait_until(failed_for_good, 15)
    assert router.metric("switchboard_boot_failures_total") == 6
    assert json.loads(router.cli("status", "acme", "--json").stdout)["state"] == "failed"


def test_an_early_answer_before_the_body_closes_quietly(counter: Router) -> None:
    # Issue 9, defect 4: the router answers 404 (unknown tenant) from the head alone; the body
    # the client sends after reading that answer must be dropped quietly, with no "write() after
    # write_eof()" traceback in the router's log.
    body = b"x" * 50_000
    for target in ("/t/nobody/upload", "/t/acme/echo", "/elsewhere"):
        size = len(body) if target != "/t/acme/echo" else SMALL_LIMIT + 1
        with RawConnection(counter.port) as conn:
            conn.send(request_bytes("POST", target, {"Content-Length": str(size)}))
            answer = conn.read_response()
            assert answer.status in (404, 413), answer.body
            assert answer.header("connection") == "close"
            with contextlib.suppress(OSError):  # the router may close before it has read it all
                for _ in range(4):
                    conn.send(body)
            assert conn.closed_by_server()
    with counter.client() as client:  # the router serves on
        assert client.get("/t/acme/count").status_code == 200
    log = counter.log()
    assert "write_eof" not in log and "Traceback" not in log, log[-3000:]
