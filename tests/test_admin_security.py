"""Attacks on the admin API and the export CLI, against a real `switchboard serve` (issue 17).

- Uploads that fail the header checks (unsigned, stale, a nonce already used, malformed) get
  401 naming the check before a byte of their body is read: 8 x 60 MiB sent at once leave the
  router's RSS where it was (they once grew it to 529 MB).
- A signed body over its route's cap is 413 and nothing of it is kept; a forged import (its
  signature cannot be checked before its body is read) streams to a file, not memory, at most
  two at a time, and is deleted when the signature fails.
- A signed DELETE captured on the wire cannot be replayed after the router restarts, cleanly
  or by SIGKILL: seen nonces are on disk before a request is acted on.
- `export -o` never writes through a symlink planted next to its destination.

Requests go over raw sockets, so what is sent is exactly what an attacker would send.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapshots.exportfile import read_export
from switchboard.signing import load_key, sign_request
from tests.conftest import Router, rss_kb, wait_until

MiB = 1 << 20
RSS_SLACK_KB = 20 * 1024
IMPORT = "/v1/tenants/acme/import"


@dataclass
class Upload:
    response: bytes = b""
    body_bytes_sent: int = 0  # what the server's socket took before it closed
    error: str = ""

    @property
    def status(self) -> int:
        return int(self.response.split(b" ", 2)[1]) if self.response.startswith(b"HTTP/") else 0

    @property
    def error_text(self) -> str:
        text = json.loads(self.response.partition(b"\r\n\r\n")[2])["error"]
        assert isinstance(text, str)
        return text


def head(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upload(port: int, request_head: bytes, body_size: int, *, keep_sending: bool = True,
           first: bytes = b"", timeout_s: float = 60) -> Upload:
    """Send `request_head` and `first`, then (keep_sending) zeros until `body_size` bytes of
    body are out, as fast as the server's socket takes them, reading whatever comes back
    until the server closes (or `timeout_s`: a request that is answered without
    `Connection: close` should ask for it)."""
    result = Upload()
    zeros = memoryview(b"\0" * (256 * 1024))
    pending = memoryview(first)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head)
        sock.setblocking(False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pending and keep_sending and result.body_bytes_sent < body_size:
                pending = zeros[:body_size - result.body_bytes_sent]
            sending = bool(pending) and not result.error
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                result.response += data
            if writable:
                try:
                    sent = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    result.error = type(exc).__name__
                else:
                    pending = pending[sent:]
                    result.body_bytes_sent += sent
    return result


def signed_headers(key: bytes, method: str, target: str, body: bytes, **kw: Any) -> dict[str, str]:
    return sign_request(key, method, target, body, **kw)


def peak_rss_during(router: Router, work: Callable[[], None]) -> int:
    """Run `work` while sampling the router's RSS; the highest sample, in KiB."""
    peak = rss_kb(router.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kb(router.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(peak, rss_kb(router.pid))


def staged_files(router: Router) -> list[Path]:
    transfers = router.data_dir / "transfers"
    return sorted(transfers.iterdir()) if transfers.is_dir() else []


# --- refused from the headers, body unread ------------------------------------------------------


@pytest.mark.slow
def test_uploads_failing_the_header_checks_get_401_unread_and_cost_no_memory(
    make_router: Callable[..., Router],
) -> None:
    router = make_router().start()
    key = load_key(router.key_file)
    size = 60 * MiB
    length = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    used = signed_headers(key, "GET", "/v1/tenants", b"")
    response = httpx.get(router.admin_url + "/v1/tenants", headers=used, trust_env=False)
    assert response.status_code == 200

    now = int(time.time())
    attacks: list[tuple[str, dict[str, str], str]] = [
        ("unsigned", {}, "missing signature"),
        ("stale", signed_headers(key, "POST", IMPORT, b"", timestamp=now - 3600),
         "stale timestamp"),
        ("from the future", signed_headers(key, "POST", IMPORT, b"", timestamp=now + 3600),
         "stale timestamp"),
        ("nonce used", signed_headers(key, "POST", IMPORT, b"",
                                      nonce=used["X-Switchboard-Nonce"]), "replayed nonce"),
        ("short nonce", signed_headers(key, "POST", IMPORT, b"", nonce="x" * 15),
         "malformed signature"),
        ("not hex", {**signed_headers(key, "POST", IMPORT, b""),
                     "Authorization": "Switchboard-HMAC-SHA256 " + "z" * 64},
         "malformed signature"),
        ("bearer", {"Authorization": "Bearer " + "a" * 64}, "missing signature"),
        ("unsigned, to a JSON route", {}, "missing signature"),
    ]
    results: dict[str, Upload] = {}

    def attack(name: str, headers: dict[str, str]) -> None:
        target = "/v1/tenants" if "JSON" in name else IMPORT
        results[name] = upload(router.admin_port, head("POST", target, {**headers, **length}),
                               size)

    def all_at_once() -> None:
        threads = [threading.Thread(target=attack, args=(name, headers))
                   for name, headers, _ in attacks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    before = rss_kb(router.pid)
    peak = peak_rss_during(router, all_at_once)
    assert peak - before < RSS_SLACK_KB, f"router RSS {before} KiB -> peak {peak} KiB"
    for name, _, check in attacks:
        result = results[name]
        assert result.status == 401, (name, result.response[:200])
        assert result.error_text.startswith(check), (name, result.error_text)
        # The server closed with the body unread: only what the sockets' buffers took got out.
        assert result.body_bytes_sent < 16 * MiB, (name, result.body_bytes_sent)
    assert staged_files(router) == []

    # A client that waits for the answer after the headers gets it without sending any body,
    # and one that asked for 100 Continue gets the 401 instead.
    for expect in ({}, {"Expect": "100-continue"}):
        stopped = upload(router.admin_port, head("POST", IMPORT, {**length, **expect}), size,
                         keep_sending=False, timeout_s=10)
        assert stopped.status == 401 and stopped.body_bytes_sent == 0
        assert stopped.error_text.startswith("missing signature")
    assert "acme" not in {t["name"] for t in router.ls()}


# --- caps ---------------------------------------------------------------------------------------


def chunked(body: bytes, piece: int = 16 * 1024) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + piece]), body[i:i + piece])
                   for i in range(0, len(body), piece))
    return out + b"0\r\n\r\n"


@pytest.mark.slow
def test_a_signed_body_over_its_route_cap_is_413_and_nothing_is_kept(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(env={"SWITCHBOARD_MAX_IMPORT_BYTES": str(1 * MiB)}).start()
    key = load_key(router.key_file)
    port = router.admin_port
    big_json = json.dumps({"name": "big", "pad": "x" * 100_000}).encode()
    big_import = os.urandom(2 * MiB)

    for target, body, cap in [("/v1/tenants", big_json, 64 * 1024), (IMPORT, big_import, MiB)]:
        # Declared too large: refused before it is read.
        headers = {**signed_headers(key, "POST", target, body),
                   "Content-Length": str(len(body))}
        result = upload(port, head("POST", target, headers), len(body), keep_sending=False,
                        timeout_s=10)
        assert result.status == 413, result.response[:200]
        assert result.error_text == f"request body larger than {cap} bytes"
        # Chunked, no length: refused as soon as the cap is passed.
        headers = {**signed_headers(key, "POST", target, body), "Transfer-Encoding": "chunked"}
        result = upload(port, head("POST", target, headers), 0, first=chunked(body),
                        keep_sending=False, timeout_s=10)
        assert result.status == 413, result.response[:200]
        assert result.error_text == f"request body larger than {cap} bytes"
    assert staged_files(router) == []
    assert router.ls() == []

    # Under the caps the same routes work, the signature covering a chunked body too.
    body = json.dumps({"name": "small"}).encode()
    headers = {**signed_headers(key, "POST", "/v1/tenants", body), "Connection": "close",
               "Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    result = upload(port, head("POST", "/v1/tenants", headers), 0, first=chunked(body, 5),
                    keep_sending=False, timeout_s=10)
    assert result.status == 201, result.response[:300]
    assert [t["name"] for t in router.ls()] == ["small"]


@pytest.mark.slow
def test_a_forged_import_streams_to_disk_two_at_a_time_and_is_deleted(
    make_router: Callable[..., Router],
) -> None:
    """The signature covers the body, so a forged one (right format, wrong key) is only found
    out after the body is read: it goes to a file, never to memory, and is deleted."""
    router = make_router().start()
    port = router.admin_port
    size = 60 * MiB
    forger = secrets.token_bytes(32)

    def forged() -> bytes:
        return head("POST", IMPORT, {**signed_headers(forger, "POST", IMPORT, b"\0" * size),
                                     "Content-Length": str(size)})

    # Two uploads in progress hold both staging slots.
    holders = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(forged() + b"\0" * MiB)
        wait_until(lambda: len(staged_files(router)) == 2, 10, "two staged uploads")
        for path in staged_files(router):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        third = upload(port, forged(), size, keep_sending=False, timeout_s=10)
        assert third.status == 503, third.response[:200]
        assert "imports are being uploaded" in third.error_text
        assert b"\r\nretry-after: 5\r\n" in third.response.lower()
    finally:
        for sock in holders:
            sock.close()  # gone mid-body: what they sent is deleted
    wait_until(lambda: staged_files(router) == [], 10, "abandoned uploads deleted")

    results: list[Upload] = []

    def two_forgeries() -> None:
        threads = [threading.Thread(target=lambda: results.append(upload(port, forged(), size)))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    before = rss_kb(router.pid)
    peak = peak_rss_during(router, two_forgeries)
    assert peak - before < RSS_SLACK_KB, f"router RSS {before} KiB -> peak {peak} KiB"
    for result in results:
        assert result.status == 401, result.response[:200]
        assert result.error_text.startswith("bad signature")
        assert result.body_bytes_sent == size  # read whole: no cheaper check could refuse it
    assert staged_files(router) == []
    assert router.ls() == []


# --- a signed import still works --------------------------------------------------------------


@pytest.mark.slow
def test_a_signed_import_round_trips_through_a_staged_file(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    router = make_router().start()
    router.create("src")
    with router.client() as client:
        for i in range(20):
            response = client.post("/t/src/api/tables/people/records",
                                   json={"name": f"person {i}", "n": i})
            assert response.status_code == 201, response.text
        before = client.get("/t/src/api/tables/people/records?limit=100").json()
        out = tmp_path / "src.sbexport"
        router.cli("export", "src", "-o", str(out))
        assert router.cli("import", str(out), "--as", "dst").stdout.strip() == "dst"
        assert client.get("/t/dst/api/tables/people/records?limit=100").json() == before
    assert staged_files(router) == []  # the staged upload is gone once the import is done

    # An import with an empty body is a clear 400, and leaves nothing either.
    response = router.admin_http().post("/v1/tenants/empty/import", content=b"")
    assert response.status_code == 400 and "export file" in response.json()["error"]
    assert staged_files(router) == []


# --- replays across restarts ------------------------------------------------------------------


def replay(port: int, request: bytes) -> Upload:
    return upload(port, request, 0, keep_sending=False, timeout_s=10)


@pytest.mark.slow
def test_a_captured_delete_cannot_be_replayed_after_a_restart(
    make_router: Callable[..., Router],
) -> None:
    router = make_router().start()
    key = load_key(router.key_file)
    router.create("acme")
    captured = head("DELETE", "/v1/tenants/acme",
                    {**signed_headers(key, "DELETE", "/v1/tenants/acme", b""),
                     "Connection": "close"})
    first = replay(router.admin_port, captured)
    assert first.status == 204, first.response[:200]
    router.create("acme")  # a new tenant of the same name, which the replay would delete

    assert router.stop() == 0
    router.start()
    again = replay(router.admin_port, captured)
    assert again.status == 401, again.response[:200]
    assert again.error_text.startswith("replayed nonce: nonce seen")
    assert [t["name"] for t in router.ls()] == ["acme"]

    # Killed outright: the nonce was on disk before the DELETE was acted on.
    second = head("DELETE", "/v1/tenants/acme",
                  {**signed_headers(key, "DELETE", "/v1/tenants/acme", b""),
                   "Connection": "close"})
    assert replay(router.admin_port, second).status == 204
    router.create("acme")
    router.signal(signal.SIGKILL)
    assert router.proc is not None and router.proc.wait(10) == -signal.SIGKILL
    router.kill_group()
    router.start()
    for request in (captured, second):
        result = replay(router.admin_port, request)
        assert result.status == 401 and result.error_text.startswith("replayed nonce")
    assert [t["name"] for t in router.ls()] == ["acme"]
    nonces = router.data_dir / "nonces"
    assert stat.S_IMODE(nonces.stat().st_mode) == 0o600
    assert nonces.read_bytes().startswith(b"switchboard-nonces 1\n")


# --- export -o ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_o_never_writes_through_a_planted_symlink(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    router = make_router().start()
    router.create("acme")
    with router.client() as client:
        response = client.post("/t/acme/api/tables/t/records", json={"secret": "kept"})
        assert response.status_code == 201
    victim = tmp_path / "victim"
    victim.write_bytes(b"root-owned file\n")
    os.chmod(victim, 0o644)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "acme.sbexport"
    (out_dir / "acme.sbexport.part").symlink_to(victim)  # the name the old code used

    router.cli("export", "acme", "-o", str(dest))
    assert victim.read_bytes() == b"root-owned file\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    header, data = read_export(dest)
    assert header.tenant == "acme"
    assert data["tables"]["t"]["records"][1]["fields"] == {"secret": "kept"}
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(p.name for p in out_dir.iterdir()) == ["acme.sbexport", "acme.sbexport.part"]

    # A symlink at the destination itself is replaced by the export, not written through.
    dest.unlink()
    dest.symlink_to(victim)
    router.cli("export", "acme", "-o", str(dest))
    assert victim.read_bytes() == b"root-owned file\n"
    assert not dest.is_symlink() and read_export(dest)[0].tenant == "acme"
