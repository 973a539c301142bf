"""Direct mode through the real servers: nginx and Apache, in path and host mode, send a
resident tenant's requests straight to its worker with the site `deploy-config --direct`
prints and the map the router keeps (switchboard/direct.py); the router sees only what is
not resident.

What a user sees: a stopped tenant's first request is served (through the router, which
starts it), later ones never reach the router (its per-tenant request counter stands still)
while the demo app, a 50 MB upload and a WebSocket work; the tenant is still swapped out
when idle (the worker's own activity reports keep it resident while it is used); a worker
killed under the server's feet costs no request (the server falls back to the router); and a
load test across swap-outs sees no failed request and loses no write.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.net import connectable
from harness.webservers import WebServer
from switchboard.direct import DirectMap
from tests.conftest import Router, wait_until
from tests.frontends import (
    BASE_DOMAIN,
    BrowserLikeTransport,
    client,
    demo_requests,
    install,
    requests_seen,
    router_env,
    upload_50mb,
    websocket_echo,
)

IDLE_TIMEOUT_S = 3


def direct_router(make_router: Any, server: WebServer, kind: str, *, host_mode: bool,
                  idle_timeout: float = IDLE_TIMEOUT_S) -> Router:
    env = router_env(
        SWITCHBOARD_WORKER_TRANSPORT="tcp", SWITCHBOARD_DIRECT_MODE=kind,
        SWITCHBOARD_DIRECT_RELOAD_COMMAND=shlex.join(server.reload_command()),
        SWITCHBOARD_DIRECT_DRAIN_S="0.5",
        **({"SWITCHBOARD_ROUTING": "host", "SWITCHBOARD_BASE_DOMAIN": BASE_DOMAIN}
           if host_mode else {}))
    router: Router = make_router(env=env, idle_timeout=idle_timeout).start()
    return router


def direct_file(router: Router, kind: str) -> Path:
    return router.data_dir / "direct" / f"{kind}.conf"


def until_direct(router: Router, http: httpx.Client, tenant: str) -> None:
    """Wait until the server has reloaded with the tenant in its map: a request that the
    router's counter does not see."""
    def direct_now() -> bool:
        before = requests_seen(router, tenant)
        assert http.get("/api/worker").status_code == 200
        return requests_seen(router, tenant) == before

    wait_until(direct_now, 20, f"{tenant}'s requests going straight to its worker")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "host_mode"), [
    ("nginx", False), ("nginx", True), ("apache", False), ("apache", True),
], ids=["nginx-path", "nginx-host", "apache-path", "apache-host"])
def test_resident_tenants_bypass_the_router(
        kind: str, host_mode: bool, make_router: Any, nginx_server: WebServer,
        apache_server: WebServer) -> None:
    server = nginx_server if kind == "nginx" else apache_server
    router = direct_router(make_router, server, kind, host_mode=host_mode)
    router.admin_call("POST", "/v1/tenants", {"name": "acme"})
    site = f"{kind}-direct"
    args = ["--direct", *(["--host-mode", BASE_DOMAIN] if host_mode else [])]
    base_url = install(server, router, kind, site, *args)
    try:
        server.check()  # the site and the router's map file, with the server's own test
        with client(base_url, "acme", host_mode=host_mode) as http:
            # Stopped: the first request is served, through the router, which starts it.
            assert router.state("acme") == "stopped"
            first = http.get("/api/worker")
            assert first.status_code == 200 and first.json()["tenant"] == "acme"
            assert requests_seen(router, "acme") == 1
            until_direct(router, http, "acme")
            seen = requests_seen(router, "acme")
            demo_requests(http)
            upload_50mb(http)
            websocket_echo(base_url, "acme", host_mode=host_mode)
            assert requests_seen(router, "acme") == seen  # none of it passed the router

            # Used only directly, for longer than the idle timeout: it stays resident.
            pid = router.info("acme")["pid"]
            until = time.monotonic() + IDLE_TIMEOUT_S + 1.5
            while time.monotonic() < until:
                assert http.get("/api/tables").status_code == 200
                time.sleep(0.3)
            assert router.state("acme") == "running" and router.info("acme")["pid"] == pid
            assert requests_seen(router, "acme") == seen
            assert router.info("acme")["last_request_at"] > time.time() - 2

            # Left alone: swapped out, and out of the server's map.
            wait_until(lambda: router.state("acme") == "stopped", IDLE_TIMEOUT_S + 15,
                       "acme swapped out when idle")
            assert "acme" not in direct_file(router, kind).read_text()
            again = http.get("/api/tables/people/records")
            assert again.status_code == 200, (again.text, server.log()[-2000:])
            assert again.json()["total"] == 1
            assert requests_seen(router, "acme") == seen + 1  # that one through the router

            # A worker killed under the server (its map still names it): the request is
            # refused at connect and served through the router, which starts a new one.
            # (Sent once the worker is gone: a request that meets it as it dies may get 502
            # from Apache, which does not resend on a reused connection; nginx resends a GET.)
            until_direct(router, http, "acme")
            info = router.info("acme")
            os.kill(info["pid"], signal.SIGKILL)
            wait_until(lambda: not connectable(info["port"]), 10, "the worker's port closed")
            after_kill = http.get("/api/tables/people/records")
            assert after_kill.status_code == 200, (after_kill.text, server.log()[-2000:])
            assert after_kill.json()["total"] == 1
            # A write to a killed worker: served (Apache's standby member sends it on, body
            # and all), or refused with 503 + Retry-After and not applied (nginx cannot send
            # a streamed body twice); then served when sent again. Never a hang or a 502.
            until_direct(router, http, "acme")
            info = router.info("acme")
            os.kill(info["pid"], signal.SIGKILL)
            wait_until(lambda: not connectable(info["port"]), 10, "the worker's port closed")
            write = http.post("/api/tables/people/records", json={"name": "Grace"})
            if write.status_code == 503:
                assert kind == "nginx" and write.headers["retry-after"] == "1", write.text
                assert http.get("/api/tables/people/records").json()["total"] == 1
                write = http.post("/api/tables/people/records", json={"name": "Grace"})
            assert write.status_code == 201, (write.text, server.log()[-2000:])
            assert http.get("/api/tables/people/records").json()["total"] == 2
    finally:
        server.remove_site(site)


@pytest.mark.slow
def test_no_request_fails_across_swap_outs(make_router: Any, nginx_server: WebServer) -> None:
    """Four clients read and write through nginx in direct mode while the tenant is swapped
    out twice (the operator's stop: map first, reload, drain, then the worker stops): every
    request is answered 2xx, and every acknowledged write is there afterwards."""
    router = direct_router(make_router, nginx_server, "nginx", host_mode=False)
    router.admin_call("POST", "/v1/tenants", {"name": "acme"})
    base_url = install(nginx_server, router, "nginx", "nginx-load", "--direct")
    failures: list[str] = []
    written: list[int] = []
    answered = [0]
    stop = threading.Event()

    def load(number: int) -> None:
        with client(base_url, "acme", host_mode=False) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 3 == 0:
                        answer = http.post("/api/tables/load/records", json={"n": number, "i": i})
                        if answer.status_code == 201:
                            written.append(answer.json()["id"])
                    else:
                        answer = http.get("/api/worker")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                answered[0] += 1
                if answer.status_code not in (200, 201):
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    try:
        with client(base_url, "acme", host_mode=False) as http:
            until_direct(router, http, "acme")
        resent_before = BrowserLikeTransport.resent
        threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        pids = {router.info("acme")["pid"]}
        for _ in range(2):
            time.sleep(1.5)
            router.admin_call("POST", "/v1/tenants/acme/stop")
            wait_until(lambda: router.state("acme") == "running", 20, "acme back")
            pids.add(router.info("acme")["pid"])
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert failures == []
        print(f"{answered[0]} answers, {BrowserLikeTransport.resent - resent_before} resent")
        assert len(pids) == 3, "the worker was swapped out twice"
        assert answered[0] > 100
        stored: list[int] = []
        with client(base_url, "acme", host_mode=False) as http:
            while len(stored) < len(written):
                page = http.get("/api/tables/load/records",
                                params={"offset": len(stored), "limit": 1000}).json()
                assert page["total"] == len(written)
                stored += [record["id"] for record in page["records"]]
                if not page["records"]:
                    break
        assert sorted(stored) == sorted(written)
    finally:
        stop.set()
        nginx_server.remove_site("nginx-load")


def test_direct_map_batches_changes_into_one_reload(tmp_path: Path) -> None:
    """Tenants that start and stop together cost one write and one reload; a withdrawal
    returns only after the reload that left it out, and the files say what is resident."""
    marker = tmp_path / "reloads"

    async def scenario() -> DirectMap:
        direct = DirectMap("nginx", tmp_path / "direct", "127.0.0.1:8000",
                           reload_command=f"sh -c 'echo x >> {marker}'", reload_delay_s=0.1,
                           drain_s=0.0)
        await direct.start()
        for number in range(20):
            direct.publish(f"t{number}", 20000 + number)
        direct.publish("sock", "/srv/data/run/7.sock")
        await asyncio.sleep(0.3)
        assert "t19 switchboard_t_t19;" in (tmp_path / "direct" / "nginx.conf").read_text()
        await asyncio.gather(*(direct.withdraw(f"t{n}") for n in range(10)))
        text = (tmp_path / "direct" / "nginx.conf").read_text()
        assert "t3 " not in text and "t13 switchboard_t_t13;" in text
        assert "server unix:/srv/data/run/7.sock max_fails=0;" in text
        return direct

    direct = asyncio.run(scenario())
    assert direct.reloads == 3  # start, the 21 publishes, the 10 withdrawals
    assert marker.read_text().count("x") == 3


def test_a_failing_reload_command_is_logged_and_the_map_still_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        direct = DirectMap("apache", tmp_path / "direct", "127.0.0.1:8000",
                           base_domain="example.com", reload_command="sh -c 'echo nope; exit 3'",
                           reload_delay_s=0.01, drain_s=0.0)
        await direct.start()
        direct.publish("acme", 20001)
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    text = (tmp_path / "direct" / "apache.conf").read_text()
    assert 'BalancerMember "http://127.0.0.1:20001" retry=1' in text
    assert 'RewriteCond "%{HTTP_HOST}" "^acme\\.example\\.com(:[0-9]+)?$" [NC]' in text
    assert "failed (exit 3): nope" in caplog.text


def test_the_worker_reports_its_own_requests() -> None:
    """The `activity` event (contract/worker.py) as tenant/activity.py sends it: counts per
    report, open requests kept reported while they last, `in_flight: 0` at once when the
    last one ends, and silence while nothing happens."""
    from tenant.activity import ActivityMeter

    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("path") == "/slow":
            await asyncio.sleep(0.4)

    async def scenario() -> None:
        meter = ActivityMeter(app, sent.append, interval_s=0.05)
        for _ in range(3):
            await meter({"type": "http", "path": "/"}, None, None)
        await meter({"type": "lifespan"}, None, None)  # not a request
        await asyncio.sleep(0.12)
        assert [(m["requests"], m["in_flight"]) for m in sent] == [(3, 0)]
        slow = asyncio.ensure_future(meter({"type": "websocket", "path": "/slow"}, None, None))
        await asyncio.sleep(0.2)  # open across reports: reported open each tick
        assert [(m["requests"], m["in_flight"]) for m in sent[1:]][:2] == [(1, 1), (0, 1)]
        await slow
        # At once when it ended, not a tick later.
        assert [m["in_flight"] for m in sent[-2:]] == [1, 0]
        after = len(sent)
        await asyncio.sleep(0.2)
        assert len(sent) == after  # nothing happened: nothing sent
        assert all(m["event"] == "activity" and m["last_request_at"] > 0 for m in sent)

    asyncio.run(scenario())
