"""The router's streaming proxy with real workers behind it: forwarded headers, hop-by-hop
headers, keep-alive both ways, HEAD and 204, chunked bodies, clients that vanish, 200 MB each way
without the router's memory growing (issue 3, "Done when" 5), WebSocket passthrough."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from switchboard.pages import simple_response
from tests.conftest import (
    COUNTER,
    RawConnection,
    Router,
    raw_exchange,
    request_bytes,
    rss_kb,
    wait_until,
)

MakeRouter = Callable[..., Router]


@pytest.fixture
def counter(make_router: MakeRouter) -> Router:
    router = make_router(app=COUNTER).start()
    router.create("acme")
    return router


def worker_view(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    view["names"] = [name for name, _ in view["headers"]]
    view["by_name"] = {name: value for name, value in view["headers"]}
    return view


# ---- what the worker sees ---------------------------------------------------------------------


def test_forwarded_headers_and_root_path_reach_the_worker(counter: Router) -> None:
    with counter.client() as client:
        view = worker_view(
            client.get(
                "/t/acme/headers",
                headers={
                    "Connection": "keep-alive, x-private-hop",
                    "X-Private-Hop": "must not pass",
                    "Keep-Alive": "timeout=5",
                    "TE": "trailers",
                    "Proxy-Connection": "keep-alive",
                    "X-Forwarded-Prefix": "/spoofed",
                    "X-End-To-End": "kept",
                },
            )
        )
    seen = view["by_name"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{counter.port}"
    assert seen["host"] == f"127.0.0.1:{counter.port}"
    assert (
        view["names"].count("x-forwarded-prefix") == 1 and seen["x-forwarded-prefix"] == "/t/acme"
    )
    for hop in ("x-private-hop", "keep-alive", "te", "proxy-connection", "transfer-encoding"):
        assert hop not in view["names"], hop
    assert seen["x-end-to-end"] == "kept"
    assert view["root_path"] == "/t/acme"
    assert (
        view["link"] == f"http://127.0.0.1:{counter.port}/t/acme/count"
    )  # links work behind the router
    assert view["client"] == "127.0.0.1"


def test_a_front_servers_forwarded_headers_are_extended_not_replaced(
    make_router: MakeRouter,
) -> None:
    # As nginx sends them: the client's address and scheme, and the public host. The router
    # believes them only from a peer in trusted_proxies (tests/test_front_edge.py: otherwise).
    counter = make_router(app=COUNTER, env={"SWITCHBOARD_TRUSTED_PROXIES": "127.0.0.1"}).start()
    counter.create("acme")
    with counter.client() as client:
        view = worker_view(
            client.get(
                "/t/acme/headers",
                headers={
                    "Host": "tenants.example.com",
                    "X-Forwarded-For": "203.0.113.7",
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-Host": "tenants.example.com",
                },
            )
        )
    seen = view["by_name"]
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "tenants.example.com"
    assert view["client"] == "203.0.113.7"
    assert view["link"] == "https://tenants.example.com/t/acme/count"


def test_hop_by_hop_response_headers_are_dropped(counter: Router) -> None:
    with counter.client() as client:
        response = client.get("/t/acme/hop")
    assert response.status_code == 200 and response.content == b"hop"
    assert "x-hop" not in response.headers and "keep-alive" not in response.headers
    assert response.headers["x-end-to-end"] == "kept"
    assert response.headers.get("connection", "keep-alive") == "keep-alive"


# ---- keep-alive, pipelining, HEAD, 204 --------------------------------------------------------


def test_one_client_connection_carries_many_requests_and_reuses_one_worker_connection(
    counter: Router,
) -> None:
    with RawConnection(counter.port) as conn:
        peer_ports = set()
        for i in range(150):
            if i % 3 == 0:
                response = conn.request(
                    "POST", "/t/acme/add", {"Content-Type": "application/json"}, b'{"amount": 1}'
                )
                assert response.status == 201, response.body
            else:
                response = conn.request("GET", "/t/acme/headers")
                assert response.status == 200
                peer_ports.add(json.loads(response.body)["peer_port"])
            assert response.header("connection") != "close"
        final = conn.request("GET", "/t/acme/count")
    assert json.loads(final.body)["count"] == 50
    assert len(peer_ports) == 1  # the router kept one keep-alive connection to the worker


def test_pipelined_requests_are_answered_in_order(counter: Router) -> None:
    with RawConnection(counter.port) as conn:
        conn.send(
            request_bytes("GET", "/t/acme/count")
            + request_bytes("GET", "/t/acme/empty")
            + request_bytes("HEAD", "/t/acme/count")
            + request_bytes("GET", "/t/acme/hop")
        )
        first = conn.read_response()
        second = conn.read_response()
        third = conn.read_response(head_only=True)
        fourth = conn.read_response()
    assert (first.status, json.loads(first.body)["count"]) == (200, 0)
    assert (second.status, second.body) == (204, b"")
    assert third.status == 200 and third.header("content-length") == str(len(first.body))
    assert (fourth.status, fourth.body) == (200, b"hop")


def test_head_and_204_answers_end_at_their_head(counter: Router) -> None:
    with RawConnection(counter.port) as conn:
        head = conn.request("HEAD", "/t/acme/count")
        assert head.status == 200 and head.body == b""
        assert int(head.header("content-length") or 0) > 0
        empty = conn.request("GET", "/t/acme/empty")
        assert empty.status == 204 and empty.body == b""
        assert empty.header("transfer-encoding") is None
        head_stream = conn.request("HEAD", "/t/acme/stream?n=3&size=10")
        assert head_stream.status == 200 and head_stream.body == b""
        after = conn.request("GET", "/t/acme/count")  # no stray body bytes confused the connection
    assert after.status == 200 and json.loads(after.body)["count"] == 0


def test_connection_close_from_the_client_is_honoured(counter: Router) -> None:
    with RawConnection(counter.port) as conn:
        response = conn.request("GET", "/t/acme/count", {"Connection": "close"})
        assert response.status == 200 and response.header("connection") == "close"
        assert conn.closed_by_server()


def test_an_http_1_0_client_gets_no_chunked_coding(counter: Router) -> None:
    streamed = raw_exchange(
        counter.port, b"GET /t/acme/stream?n=3&size=5 HTTP/1.0\r\nHost: x\r\n\r\n"
    )
    head, _, body = streamed.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower() and body == b"x" * 15  # ends at the close
    with RawConnection(counter.port) as conn:  # HTTP/1.0 keep-alive, as `ab -k` does
        for _ in range(3):
            conn.send(b"GET /t/acme/count HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = conn.read_response()
            assert response.status == 200 and response.header("connection") == "keep-alive"
            assert json.loads(response.body)["count"] == 0


def test_expect_100_continue_is_relayed(counter: Router) -> None:
    with RawConnection(counter.port) as conn:
        conn.send(
            b"POST /t/acme/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = conn.read_response()  # curl waits for this before sending a large body
        conn.send(b"hello")
        final = conn.read_response()
    assert interim.status == 100
    assert final.status == 200 and json.loads(final.body)["bytes"] == 5


def test_a_slow_reader_does_not_make_the_router_buffer_the_response(counter: Router) -> None:
    assert counter.proc is not None
    with socket.create_connection(("127.0.0.1", counter.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(request_bytes("GET", "/t/acme/stream?n=1600&size=65536"))  # 100 MiB
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        baseline = rss_kb(counter.proc.pid)
        # Read nothing for a while: backpressure must stop the worker, not fill the router.
        deadline = time.monotonic() + 1.0
        growth = 0
        while time.monotonic() < deadline:
            growth = max(growth, rss_kb(counter.proc.pid) - baseline)
            time.sleep(0.05)
        assert growth < 20 * 1024, f"router RSS grew {growth} KiB while the client did not read"
        received = len(first)
        while not first.endswith(b"0\r\n\r\n"):
            first = sock.recv(1 << 20)
            assert first, "the response ended early"
            received += len(first)
    assert received > 100 * 1024 * 1024


# ---- bodies -----------------------------------------------------------------------------------


def test_a_chunked_request_body_is_streamed_to_the_worker(counter: Router) -> None:
    sizes = [1, 7, 65536, 100_000, 3, 1_000_000, 17]
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for i, size in enumerate(sizes):
            chunk = bytes([i]) * size
            digest.update(chunk)
            yield chunk

    with counter.client() as client:
        response = client.post("/t/acme/echo", content=body())  # no length: chunked
    assert response.status_code == 200
    assert response.json() == {"bytes": sum(sizes), "sha256": digest.hexdigest()}


def test_a_raw_chunked_body_with_extensions_and_trailers(counter: Router) -> None:
    wire = (
        b"POST /t/acme/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    with RawConnection(counter.port) as conn:
        conn.send(wire)
        response = conn.read_response()
        after = conn.request("GET", "/t/acme/count")
    assert response.status == 200
    assert json.loads(response.body) == {
        "bytes": 11,
        "sha256": hashlib.sha256(b"hello world").hexdigest(),
    }
    assert after.status == 200


def test_clients_that_vanish_mid_response_or_mid_upload_do_not_hurt_the_router(
    counter: Router,
) -> None:
    with counter.client() as client:
        worker_pid = client.get("/t/acme/count").json()["pid"]
    for i in range(6):
        sock = socket.create_connection(("127.0.0.1", counter.port), timeout=10)
        sock.sendall(request_bytes("GET", "/t/acme/stream?n=3000&size=65536"))  # ~200 MB
        received = 0
        while received < 1_000_000:
            received += len(sock.recv(65536))
        if i % 2:  # an abortive close (RST) as well as a plain one
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    for _ in range(3):  # uploads cut off halfway
        sock = socket.create_connection(("127.0.0.1", counter.port), timeout=10)
        sock.sendall(
            request_bytes("POST", "/t/acme/echo", {"Content-Length": "5000000"}) + b"x" * 500_000
        )
        sock.close()
    wait_until(lambda: counter.info("acme")["in_flight"] == 0, 10)  # every request was released
    with counter.client() as client:
        response = client.get("/t/acme/count")
    assert response.status_code == 200 and response.json()["pid"] == worker_pid
    assert counter.proc is not None and counter.proc.poll() is None


def test_a_worker_that_answers_before_the_body_is_in_costs_the_router_nothing(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER, env={"SWITCHBOARD_MAX_BODY_BYTES": "200000000"}).start()
    router.create("acme")
    assert router.proc is not None
    with router.client() as client:
        assert client.get("/t/acme/count").status_code == 200
    baseline = rss_kb(router.proc.pid)
    peak = baseline
    size = 100_000_000
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        # /count answers 405 to a POST without reading its body; the client keeps sending.
        sock.sendall(request_bytes("POST", "/t/acme/count", {"Content-Length": str(size)}))
        sent, block = 0, b"b" * 65536
        sock.settimeout(0.2)
        answer = b""
        deadline = time.monotonic() + 20
        while sent < size and time.monotonic() < deadline:
            try:
                sent += sock.send(block)
            except TimeoutError:
                pass
            except OSError:
                break  # the router closed the connection
            peak = max(peak, rss_kb(router.proc.pid))
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:200]
    growth_mb = (peak - baseline) / 1024
    assert growth_mb < 30, f"router RSS grew {growth_mb:.1f} MB while the body kept coming"
    with router.client() as client:
        assert client.get("/t/acme/count").status_code == 200
    assert "Traceback" not in router.log()


def test_a_worker_killed_mid_response_ends_the_clients_connection(counter: Router) -> None:
    # Half an answer cannot be finished: the client must see its connection end (and know the
    # body is short), not wait on a keep-alive connection for bytes that never come.
    with RawConnection(counter.port) as conn:
        conn.send(request_bytes("GET", "/t/acme/stream?n=200&size=1000&pause=0.02"))
        conn.sock.settimeout(10)
        received = conn.sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 ")
        for pid in counter.worker_pids():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while chunk := conn.sock.recv(65536):
            received += chunk
            assert time.monotonic() < deadline, "the client connection was left open"
    assert not received.endswith(b"0\r\n\r\n")  # no false end of the chunked body
    with counter.client() as client:  # the next request gets the next worker
        assert client.get("/t/acme/count").status_code == 200


def test_body_bytes_both_ways_are_counted_for_the_tenant(counter: Router) -> None:
    with counter.client() as client:
        echoed = client.post("/t/acme/echo", content=b"u" * 100_000)
        streamed = client.get("/t/acme/stream", params={"n": 4, "size": 1000})
    assert echoed.json()["bytes"] == 100_000 and len(streamed.content) == 4000
    wait_until(lambda: counter.info("acme")["in_flight"] == 0, 10)
    info = counter.info("acme")
    assert info["bytes_in"] == 100_000
    assert info["bytes_out"] == len(echoed.content) + 4000


def test_a_client_that_leaves_while_its_tenant_starts_sends_nothing_to_the_worker(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER, env={"SWITCHBOARD_TEST_BOOT_DELAY_S": "0.5"}).start()
    router.create("acme")
    body = b'{"amount": 5}'
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        # Half the body, then gone, while the worker is still restoring.
        sock.sendall(
            request_bytes("POST", "/t/acme/add", {"Content-Length": str(len(body))}) + body[:6]
        )
        wait_until(lambda: router.info("acme")["state"] == "starting", 5)
    wait_until(lambda: router.info("acme")["state"] == "running", 10)
    wait_until(lambda: router.info("acme")["in_flight"] == 0, 10)
    with router.client() as client:
        assert client.get("/t/acme/count").json()["count"] == 0
        assert client.post("/t/acme/add", json={"amount": 1}).json()["count"] == 1


# ---- Done when 5: 200 MB each way, flat router memory; WebSocket ------------------------------

UPLOAD_BYTES = 200 * 1000 * 1000
CHUNK = 64 * 1024


@pytest.mark.slow
def test_200_mb_up_and_down_through_the_router_keeps_its_memory_flat(
    make_router: MakeRouter,
) -> None:
    router = make_router(env={"SWITCHBOARD_MAX_BODY_BYTES": "300000000"}).start()  # the demo app
    router.create("acme")
    assert router.proc is not None
    router_pid = router.proc.pid
    with router.client(timeout=120) as client:
        assert client.post("/t/acme/api/upload", content=b"warm up").json()["bytes"] == 7
        baseline = rss_kb(router_pid)
        peak = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_kb(router_pid))
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            sent = hashlib.sha256()

            def upload() -> Iterator[bytes]:
                block = bytes(range(256)) * (CHUNK // 256)
                remaining = UPLOAD_BYTES
                while remaining:
                    chunk = block[: min(CHUNK, remaining)]
                    remaining -= len(chunk)
                    sent.update(chunk)
                    yield chunk

            answer = client.post("/t/acme/api/upload", content=upload())
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"bytes": UPLOAD_BYTES, "sha256": sent.hexdigest()}

            got, expected, size = hashlib.sha256(), hashlib.sha256(), 0
            pattern = bytes(range(256)) * (CHUNK // 256)
            whole, rest = divmod(UPLOAD_BYTES, CHUNK)
            for _ in range(whole):
                expected.update(pattern)
            expected.update(pattern[:rest])
            with client.stream(
                "GET", "/t/acme/api/blob", params={"size": UPLOAD_BYTES}
            ) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    got.update(chunk)
                    size += len(chunk)
            assert size == UPLOAD_BYTES and got.hexdigest() == expected.hexdigest()
        finally:
            stop.set()
            sampler.join(5)
    growth_mb = (max(peak) - baseline) / 1024
    assert len(peak) > 10
    assert growth_mb < 50, f"router RSS grew {growth_mb:.1f} MB (baseline {baseline / 1024:.1f} MB)"


def test_websocket_echo_through_the_router(make_router: MakeRouter) -> None:
    router = make_router().start()  # the demo app
    router.create("acme")
    url = f"ws://127.0.0.1:{router.port}/t/acme/ws/echo"
    with connect(url, open_timeout=30, close_timeout=5) as ws:
        ws.send("hello through the router")
        assert ws.recv(10) == "hello through the router"
        blob = bytes(range(256)) * 2000  # 512 KB, several TCP segments
        ws.send(blob)
        assert ws.recv(10) == blob
        for i in range(50):
            ws.send(f"message {i}")
        assert [ws.recv(10) for _ in range(50)] == [f"message {i}" for i in range(50)]
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{router.port}/t/nobody/ws/echo", open_timeout=10)
    assert refused.value.response.status_code == 404
    with router.client() as client:  # the router serves on after the tunnel closed
        assert client.get("/t/acme/api/worker").status_code == 200
    wait_until(lambda: router.info("acme")["in_flight"] == 0, 10)


# ---- the router's own health check ------------------------------------------------------------


def test_the_health_check_names_this_router_in_path_and_host_mode(make_router: MakeRouter) -> None:
    path_mode = make_router(app=COUNTER).start()
    host_mode = make_router("host", app=COUNTER, env={"SWITCHBOARD_ROUTING": "host",
                                                       "SWITCHBOARD_BASE_DOMAIN": "example.com"})
    host_mode.start()
    for router, hosts in ((path_mode, [None]),
                          (host_mode, [None, "acme.example.com", "example.com", "elsewhere"])):
        assert router.proc is not None
        with router.client() as client:
            for host in hosts:
                headers = {"Host": host} if host else {}
                answer = client.get("/_switchboard/health", headers=headers)
                assert answer.status_code == 200, (host, answer.text)
                assert answer.headers["content-type"] == "application/json"
                assert answer.json() == {"status": "ok", "pid": router.proc.pid}
            assert client.head("/_switchboard/health").status_code == 200
            assert client.post("/_switchboard/health").status_code == 405
            assert client.get("/_switchboard/other").status_code == 404
    with RawConnection(path_mode.port) as conn:  # keep-alive: a health check, then a request
        assert conn.request("GET", "/_switchboard/health").status == 200
        path_mode.create("acme")
        assert conn.request("GET", "/t/acme/count").status == 200


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(400, "Bad Request"), (404, "Not Found"), (405, "Method Not Allowed"),
     (408, "Request Timeout"), (413, "Content Too Large"), (414, "URI Too Long"),
     (431, "Request Header Fields Too Large"), (502, "Bad Gateway"),
     (503, "Service Unavailable")],
)
def test_the_routers_own_answers_carry_the_standard_reason_phrase(status: int, phrase: str) -> None:
    answer = simple_response(status, "why <not>", close=True)
    assert answer.startswith(f"HTTP/1.1 {status} {phrase}\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(body) in head and b"connection: close" in head
    assert b"why &lt;not&gt;" in body
