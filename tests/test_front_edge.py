"""The router's front edge under attack (issue 17, "the router's front edge has no bounds"): raw
sockets against a real `switchboard serve`. Oversized request lines and heads, unterminated
headers, slowloris heads and bodies, idle and surplus connections, a WebSocket client that
pushes what nobody reads, spoofed forwarding headers, and error pages that would tell a visitor
too much. Each attack is refused and the router's memory stays flat, while normal clients (a
browser-sized head, a slow upload, a cold start) are never cut."""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import (
    BROKEN,
    COUNTER,
    ROOT,
    RawConnection,
    RawResponse,
    Router,
    raw_exchange,
    request_bytes,
    rss_kb,
    wait_until,
)

MakeRouter = Callable[..., Router]
MiB = 1024 * 1024
# Short timeouts, so a test of them takes seconds (the defaults are 30, 60 and 75 s).
QUICK_TIMEOUTS = {"SWITCHBOARD_HEADER_TIMEOUT_S": "1", "SWITCHBOARD_BODY_TIMEOUT_S": "1",
                  "SWITCHBOARD_KEEPALIVE_TIMEOUT_S": "1"}


@pytest.fixture
def counter(make_router: MakeRouter) -> Router:
    router = make_router(app=COUNTER).start()
    router.create("acme")
    return router


def router_pid(router: Router) -> int:
    assert router.proc is not None
    return router.proc.pid


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def worker_view(response: RawResponse) -> dict[str, Any]:
    """What tests/apps/counter.py's /headers saw, with its headers by name."""
    assert response.status == 200, response.body[:500]
    view: dict[str, Any] = json.loads(response.body)
    view["by_name"] = {}
    for name, value in view["headers"]:
        view["by_name"].setdefault(name, []).append(value)
    return view


class RssSampler:
    """The router's peak RSS while the `with` block runs, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline_kb = rss_kb(pid)
        self.peak_kb = self.baseline_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak_kb = max(self.peak_kb, rss_kb(self.pid))

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.baseline_kb) / 1024


def push_unterminated_header(port: int, total: int, deadline_s: float) -> tuple[int, bytes]:
    """Send a request head whose last header never ends, as an attacker would: `total` bytes
    of value in 1 MiB writes, whatever the router answers (it is read meanwhile). Writing stops
    when all is sent, the router resets the connection, or `deadline_s` passes; reading when
    the router closes its side. Returns (bytes sent, bytes received)."""
    deadline = time.monotonic() + deadline_s
    block = b"a" * MiB
    pending = b"GET /t/acme/count HTTP/1.1\r\nHost: x\r\nX-Big: "
    sent = 0
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            selectors.DefaultSelector() as selector:
        sock.setblocking(False)
        interest = selectors.EVENT_READ | selectors.EVENT_WRITE
        selector.register(sock, interest)
        while interest and time.monotonic() < deadline:
            for _, events in selector.select(timeout=0.1):
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    received += chunk
                    if not chunk:  # the router closed (or reset): nothing more to read
                        interest &= ~selectors.EVENT_READ
                if events & selectors.EVENT_WRITE:
                    pending = pending or block
                    try:
                        sent += (n := sock.send(pending))
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:  # reset once the router's linger ended
                        n = 0
                        pending = b""
                    if not n or sent >= total:
                        interest &= ~selectors.EVENT_WRITE
                if interest:
                    selector.modify(sock, interest)
    return sent, received


# ---- 1. header limits -------------------------------------------------------------------------


def test_a_request_line_over_the_limit_is_a_414(counter: Router) -> None:
    long_query = "/t/acme/count?" + "q" * (8 * 1024)
    answer = raw_exchange(counter.port, request_bytes("GET", long_query))
    assert status_of(answer) == 414 and b"connection: close" in answer.lower()
    assert counter.info("acme")["requests"] == 0  # never reached (or woke) the tenant
    with RawConnection(counter.port) as conn:  # a long URL a browser would send is fine
        assert conn.request("GET", "/t/acme/count?" + "q" * 7000).status == 200


def test_one_header_over_the_limit_is_a_431_and_a_big_cookie_is_not(counter: Router) -> None:
    answer = raw_exchange(counter.port, request_bytes(
        "GET", "/t/acme/count", {"Cookie": "c=" + "x" * (16 * 1024)}))
    assert status_of(answer) == 431
    answer = raw_exchange(counter.port, request_bytes(  # the 10 MB header line
        "GET", "/t/acme/count", {"X-Huge": "x" * (10 * MiB)}), timeout=30)
    assert status_of(answer) == 431
    assert counter.info("acme")["requests"] == 0
    with RawConnection(counter.port) as conn:
        cookies = "; ".join(f"c{i}={'v' * 400}" for i in range(30))  # 12 KB of cookies
        assert conn.request("GET", "/t/acme/count", {"Cookie": cookies}).status == 200


def test_header_bytes_in_all_over_the_limit_are_a_431(counter: Router) -> None:
    headers = {f"X-Fill-{i}": "f" * (8 * 1024) for i in range(9)}  # 72 KiB in all
    assert status_of(raw_exchange(counter.port, request_bytes(
        "GET", "/t/acme/count", headers))) == 431
    headers = {f"X-Fill-{i}": "f" * (8 * 1024) for i in range(6)}  # 48 KiB: fine
    with RawConnection(counter.port) as conn:
        assert conn.request("GET", "/t/acme/count", headers).status == 200


def test_too_many_headers_are_a_431(counter: Router) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))  # the 100,000
    answer = raw_exchange(counter.port, b"GET /t/acme/count HTTP/1.1\r\nHost: x\r\n" + many
                          + b"\r\n", timeout=30)
    assert status_of(answer) == 431
    assert b"more than 100 request header fields" in answer
    assert counter.info("acme")["requests"] == 0
    with RawConnection(counter.port) as conn:
        headers = {f"X-H{i}": "v" for i in range(90)}
        assert conn.request("GET", "/t/acme/count", headers).status == 200


def test_a_refusal_waits_for_the_answers_before_it(counter: Router) -> None:
    with RawConnection(counter.port) as conn:
        conn.send(request_bytes("GET", "/t/acme/stream?n=3&size=10&pause=0.3")
                  + request_bytes("GET", "/t/acme/count", {"X-Big": "b" * (20 * 1024)}))
        first = conn.read_response()
        second = conn.read_response()
        assert conn.closed_by_server()
    assert (first.status, first.body) == (200, b"x" * 30)  # whole, not cut by the 431
    assert second.status == 431 and second.header("connection") == "close"


def test_broken_chunked_framing_is_a_400_and_the_worker_never_sees_the_body_end(
    counter: Router,
) -> None:
    with RawConnection(counter.port) as conn:
        conn.send(b"POST /t/acme/add HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: application/json\r\n\r\n4\r\n{\"am\r\n")
        time.sleep(0.5)  # the request is at its worker, waiting for the rest
        conn.send(b"zz\r\nount\": 5}\r\n0\r\n\r\n")
        answer = conn.read_response()
        assert conn.closed_by_server()
    assert answer.status == 400 and b"malformed request body" in answer.body
    with counter.client() as client:
        assert client.get("/t/acme/count").json()["count"] == 0


def test_an_unterminated_100_mb_header_is_cut_without_buffering_it(counter: Router) -> None:
    with counter.client() as client:  # the worker up, the router warm
        assert client.get("/t/acme/count").status_code == 200
    with RssSampler(router_pid(counter)) as rss:
        sent, received = push_unterminated_header(counter.port, 100 * MiB, deadline_s=30)
    print(f"pushed {sent / MiB:.1f} MiB; router RSS {rss.baseline_kb / 1024:.1f} MB "
          f"-> peak {rss.peak_kb / 1024:.1f} MB")
    assert status_of(received) == 431, received[:300]
    assert rss.growth_mb < 10, f"router RSS grew {rss.growth_mb:.1f} MB ({sent} bytes sent)"
    with counter.client() as client:
        assert client.get("/t/acme/count").status_code == 200
    assert counter.info("acme")["requests"] == 2  # the cut request never reached the worker


# ---- 2. timeouts and the connection cap -------------------------------------------------------


def test_a_slowloris_head_gets_408_even_while_it_trickles(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env=QUICK_TIMEOUTS).start()
    router.create("acme")
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"GET /t/acme/count HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        received = b""
        sock.settimeout(0.2)
        for i in range(40):  # a header byte every 0.2 s, for at most 8 s
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Slow-%d: y\r\n" % i if i % 5 == 0 else b"")
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        elapsed = time.monotonic() - started
    assert status_of(received) == 408 and b"connection: close" in received.lower()
    assert elapsed < 4, f"cut after {elapsed:.1f}s with header_timeout_s = 1"
    assert router.info("acme")["requests"] == 0


def test_a_connection_that_sends_nothing_is_closed_quietly(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env=QUICK_TIMEOUTS).start()
    with socket.create_connection(("127.0.0.1", router.port), timeout=6) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # no 408 to an unused (pre-)connection: just the close
        assert time.monotonic() - started < 4


def test_a_stalled_body_gets_408_and_the_worker_never_sees_it_end(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER, env=QUICK_TIMEOUTS).start()
    router.create("acme")
    with RawConnection(router.port, timeout=10) as conn:
        conn.send(request_bytes("POST", "/t/acme/add", {"Content-Length": "100",
                                                         "Content-Type": "application/json"}))
        conn.send(b'{"amount": ')  # and nothing more
        started = time.monotonic()
        answer = conn.read_response()
        elapsed = time.monotonic() - started
        assert conn.closed_by_server()
    assert answer.status == 408 and b"request body sent nothing for 1s" in answer.body
    assert elapsed < 4
    with router.client() as client:
        assert client.get("/t/acme/count").json()["count"] == 0


def test_an_idle_keep_alive_connection_is_closed(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env=QUICK_TIMEOUTS).start()
    router.create("acme")
    with RawConnection(router.port) as conn:
        assert conn.request("GET", "/t/acme/count").status == 200
        started = time.monotonic()
        assert conn.closed_by_server(timeout=5)
        assert 0.9 < time.monotonic() - started < 4
        assert conn.buffer == b""  # closed without a word


@pytest.mark.slow
def test_a_cold_start_a_slow_upload_and_a_slow_answer_are_not_cut(
    make_router: MakeRouter,
) -> None:
    # Every client timeout at 1 s, a tenant that takes 3 s to start: waiting for it is not
    # idling, a body that keeps coming is not stalled, an answer that streams is not idle.
    router = make_router(app=COUNTER, env={**QUICK_TIMEOUTS,
                                            "SWITCHBOARD_TEST_BOOT_DELAY_S": "3"}).start()
    router.create("acme", "bravo")
    with RawConnection(router.port, timeout=20) as cold:
        started = time.monotonic()
        assert cold.request("GET", "/t/acme/count").status == 200
        assert time.monotonic() - started > 2.5  # it did wait for the start
    with RawConnection(router.port, timeout=20) as expecting:  # curl's upload, cold tenant
        expecting.send(request_bytes("POST", "/t/bravo/echo", {
            "Content-Length": "5", "Expect": "100-continue"}))
        assert expecting.read_response().status == 100
        expecting.send(b"hello")
        assert json.loads(expecting.read_response().body)["bytes"] == 5
    with RawConnection(router.port, timeout=20) as uploading:
        uploading.send(request_bytes("POST", "/t/acme/echo", {"Content-Length": "50"}))
        for _ in range(5):  # 3 s in all, never 1 s without a byte
            time.sleep(0.6)
            uploading.send(b"u" * 10)
        answer = uploading.read_response()
        assert answer.status == 200 and json.loads(answer.body)["bytes"] == 50
        slow = uploading.request("GET", "/t/acme/stream?n=4&size=10&pause=0.7")
        assert slow.status == 200 and slow.body == b"x" * 40


def test_connections_over_the_cap_get_503_and_the_open_files_limit_is_raised(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER, env={"SWITCHBOARD_MAX_CLIENT_CONNECTIONS": "10"}).start()
    router.create("acme")
    with open(f"/proc/{router_pid(router)}/limits") as f:
        line = next(row for row in f if row.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line
    held = [socket.create_connection(("127.0.0.1", router.port), timeout=10) for _ in range(10)]
    try:
        answer = raw_exchange(router.port, request_bytes("GET", "/t/acme/count"), timeout=10)
        assert status_of(answer) == 503
        head = answer.partition(b"\r\n\r\n")[0].lower()
        assert b"connection: close" in head and b"retry-after: 1" in head
        for sock in held[:5]:
            sock.close()

        def served() -> bool:
            return status_of(raw_exchange(router.port, request_bytes(
                "GET", "/t/acme/count", {"Connection": "close"}))) == 200

        wait_until(served, 10, "a request served once connections were freed", step_s=0.05)
    finally:
        for sock in held:
            sock.close()


# ---- 3. WebSocket backpressure, client to worker ----------------------------------------------


def websocket_frame(payload: bytes) -> bytes:
    """A masked binary frame (a client's), with a zero mask so the payload goes as it is."""
    assert len(payload) >= 1 << 16
    return b"\x82\xff" + len(payload).to_bytes(8, "big") + b"\x00\x00\x00\x00" + payload


@pytest.mark.slow
def test_300_mb_of_websocket_frames_nobody_reads_do_not_grow_the_router(
    make_router: MakeRouter,
) -> None:
    router = make_router().start()  # the demo app: /ws/echo sends every message back
    router.create("acme")
    frame = websocket_frame(b"w" * (256 * 1024))
    with socket.create_connection(("127.0.0.1", router.port), timeout=30) as sock:
        sock.sendall(request_bytes("GET", "/t/acme/ws/echo", {
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        sock.setblocking(False)
        sent = 0
        last_progress = time.monotonic()
        deadline = last_progress + 60
        pending = b""
        with RssSampler(router_pid(router)) as rss, selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            # Send, never read the echoes, until 300 MB are out or nothing moves for 3 s.
            while sent < 300 * MiB and time.monotonic() < deadline:
                if time.monotonic() - last_progress > 3:
                    break
                if not selector.select(timeout=0.2):
                    continue
                pending = pending or frame
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    continue
                pending = pending[n:]
                sent += n
                last_progress = time.monotonic()
    print(f"pushed {sent / MiB:.0f} MiB; router RSS {rss.baseline_kb / 1024:.0f} MB "
          f"-> peak {rss.peak_kb / 1024:.0f} MB")
    assert rss.growth_mb < 64, f"router RSS grew {rss.growth_mb:.1f} MB for {sent} bytes"
    with router.client() as client:
        assert client.get("/t/acme/api/worker").status_code == 200


# ---- 4. forwarding headers ---------------------------------------------------------------------

SPOOFED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "443",
    "Forwarded": "for=6.6.6.6;proto=https;host=evil.example",
    "X-Real-IP": "6.6.6.6",
    "X-Switchboard-Tenant": "someone-else",
}


def test_forwarding_headers_from_an_untrusted_client_are_dropped(counter: Router) -> None:
    host = f"127.0.0.1:{counter.port}"
    with RawConnection(counter.port) as conn:
        conn.send(b"GET /t/acme/headers HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in SPOOFED.items()) + b"\r\n")
        response = conn.read_response()
    view = worker_view(response)
    seen = view["by_name"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [host]
    for name in ("forwarded", "x-real-ip", "x-forwarded-port", "x-switchboard-tenant"):
        assert name not in seen, name
    assert view["client"] == "127.0.0.1" and view["scheme"] == "http"
    assert view["link"] == f"http://{host}/t/acme/count"


def test_a_trusted_proxys_forwarding_headers_pass_and_its_chain_is_extended(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER,
                         env={"SWITCHBOARD_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.0/8"}).start()
    router.create("acme")
    with RawConnection(router.port) as conn:
        conn.send(b"GET /t/acme/headers HTTP/1.1\r\nHost: tenants.example.com\r\n" + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in SPOOFED.items()) + b"\r\n")
        response = conn.read_response()
    view = worker_view(response)
    seen = view["by_name"]
    assert seen["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]  # appended to, not replaced
    assert seen["x-forwarded-proto"] == ["https"] and seen["x-forwarded-host"] == ["evil.example"]
    assert seen["forwarded"] == [SPOOFED["Forwarded"]] and seen["x-real-ip"] == ["6.6.6.6"]
    assert seen["x-switchboard-tenant"] == ["someone-else"]
    assert view["client"] == "6.6.6.6"


def test_two_host_fields_are_a_400(counter: Router) -> None:
    answer = raw_exchange(counter.port, b"GET /t/acme/headers HTTP/1.1\r\nHost: a.example\r\n"
                                        b"Host: b.example\r\n\r\n")
    assert status_of(answer) == 400 and b"more than one Host" in answer
    assert counter.info("acme")["requests"] == 0


def test_connection_naming_host_does_not_strip_host(counter: Router) -> None:
    with RawConnection(counter.port) as conn:
        response = conn.request("GET", "/t/acme/headers", {"Connection": "host, x-hop",
                                                            "X-Hop": "dropped"})
    view = worker_view(response)
    assert view["by_name"]["host"] == ["127.0.0.1"]  # what request_bytes sends
    assert "x-hop" not in view["by_name"]


# ---- 5. error pages ---------------------------------------------------------------------------


def test_a_503_tells_the_visitor_nothing_internal_and_the_operator_everything(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=BROKEN, env={"SWITCHBOARD_BACKOFF_BASE_S": "0.05",
                                          "SWITCHBOARD_MAX_BOOT_FAILURES": "2"}).start()
    router.create("acme")
    pages = []
    for _ in range(3):  # backing off, then failed for good
        with RawConnection(router.port, timeout=30) as conn:
            response = conn.request("GET", "/t/acme/")
        assert response.status == 503
        pages.append(response.body.decode())
        time.sleep(0.3)
    for page in pages:
        for leak in ("Traceback", "RuntimeError", "broken on purpose", "broken.py", ".py",
                     str(ROOT), str(router.data_dir), "File "):
            assert leak not in page, (leak, page)
        assert "acme" in page and len(page) < 1000
    status = json.loads(router.cli("status", "acme", "--json").stdout)
    assert "RuntimeError: this app is broken on purpose" in status["last_error"]
    assert "this app is broken on purpose" in router.log()


def test_one_404_page_for_a_missing_tenant_and_for_a_url_without_one(counter: Router) -> None:
    pages = [raw_exchange(counter.port, request_bytes("GET", target))
             for target in ("/t/nobody/page", "/t/nobody-else/", "/no-tenant-here", "/")]
    assert all(status_of(page) == 404 for page in pages)
    assert len(set(pages)) == 1, pages
    assert b"nobody" not in pages[0]


# ---- 6. issue 17, "Done when" 2 ---------------------------------------------------------------


@pytest.mark.slow
def test_slowloris_and_oversized_heads_leave_memory_flat_and_normal_requests_fast(
    make_router: MakeRouter,
) -> None:
    # 100 slowloris connections and 5 oversized-header connections leave the router's RSS
    # within 20 MB of where it started, and a normal request is served in under a second.
    router = make_router(app=COUNTER, env={"SWITCHBOARD_HEADER_TIMEOUT_S": "3"}).start()
    router.create("acme")
    with router.client() as client:
        for _ in range(20):
            assert client.get("/t/acme/count").status_code == 200
    loris_answers: list[bytes] = []
    big_answers: list[tuple[int, bytes]] = []
    latencies: list[float] = []

    def slowloris() -> None:
        socks = [socket.create_connection(("127.0.0.1", router.port), timeout=5)
                 for _ in range(100)]
        answers = [b""] * len(socks)
        open_ = set(range(len(socks)))
        try:
            for sock in socks:
                sock.sendall(b"GET /t/acme/count HTTP/1.1\r\nHost: x\r\n")
                sock.setblocking(False)
            deadline = time.monotonic() + 12
            tick = 0
            while open_ and time.monotonic() < deadline:
                tick += 1
                for i in list(open_):
                    with contextlib.suppress(OSError):
                        if tick % 10 == 0:
                            socks[i].send(b"X-%d: z\r\n" % tick)  # a header now and then
                    try:
                        chunk = socks[i].recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    answers[i] += chunk
                    if not chunk:
                        open_.discard(i)
                time.sleep(0.05)
        finally:
            for sock in socks:
                sock.close()
            loris_answers.extend(answers)

    def oversized() -> None:
        big_answers.append(push_unterminated_header(router.port, 100 * MiB, deadline_s=12))

    with RssSampler(router_pid(router)) as rss:
        threads = [threading.Thread(target=slowloris)]
        threads += [threading.Thread(target=oversized) for _ in range(5)]
        for thread in threads:
            thread.start()
        with router.client(timeout=10) as client:
            for _ in range(16):  # normal requests all through the attack
                started = time.monotonic()
                assert client.get("/t/acme/count").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.25)
        for thread in threads:
            thread.join(30)
    print(f"router RSS {rss.baseline_kb / 1024:.1f} MB -> peak {rss.peak_kb / 1024:.1f} MB; "
          f"normal requests: max {max(latencies) * 1000:.0f} ms; oversized pushed "
          f"{[round(sent / MiB) for sent, _ in big_answers]} MiB")
    assert rss.growth_mb < 20, f"router RSS grew {rss.growth_mb:.1f} MB"
    assert max(latencies) < 1.0, latencies
    assert len(loris_answers) == 100
    assert all(re.match(rb"HTTP/1\.1 408 ", a) for a in loris_answers), \
        {a[:40] for a in loris_answers}
    assert len(big_answers) == 5 and all(status_of(a) == 431 for _, a in big_answers)
    assert router.info("acme")["requests"] == 20 + 16  # no attack reached the worker
