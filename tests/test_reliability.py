"""Faults injected for real (issue 9): `rm` racing traffic, workers killed right after they
booted, crash loops. Each test failed on the code before the fix it covers."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import COUNTER, Router, alive, count_and_pid, group_pids, wait_until

MakeRouter = Callable[..., Router]


def tenant_workers(router: Router, tenant: str) -> list[int]:
    """PIDs in the router's process group whose title names `tenant`'s worker."""
    found = []
    for pid in group_pids(router.pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if title.startswith(f"switchboard: tenant {tenant} "):
            found.append(pid)
    return found


def test_rm_under_traffic_stops_the_worker_and_a_recreated_tenant_starts_empty(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER).start()
    router.create("acme")
    stop = threading.Event()
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def writer() -> None:
        deadline = time.monotonic() + 120
        with router.client(timeout=20) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    status = client.post("/t/acme/add", json={"amount": 1}).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: statuses.get(201, 0) > 20, 30)
        for _ in range(20):
            router.cli("rm", "acme")
            assert not (router.data_dir / "tenants" / "acme").exists()
            router.create("acme")
            time.sleep(0.05)  # let the writers start the new tenant
            assert len(tenant_workers(router, "acme")) <= 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    # Requests caught by an rm got 404 (or the new tenant); none got a 5xx.
    assert set(statuses) <= {201, 404}, statuses
    router.cli("rm", "acme")
    wait_until(lambda: tenant_workers(router, "acme") == [], 10)
    router.create("acme")
    with router.client() as client:
        count, _ = count_and_pid(client, "acme")
    assert count == 0
    assert len(tenant_workers(router, "acme")) == 1


def test_a_worker_killed_just_after_it_booted_restarts_on_the_next_request(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER).start()
    router.create("acme")
    with router.client() as client:
        for _ in range(200):
            assert client.post("/t/acme/add", json={"amount": 1}).status_code == 201
        _, pid = count_and_pid(client, "acme")
        os.kill(pid, signal.SIGKILL)  # well under a second after `ready`
        wait_until(lambda: not alive(pid), 10)
        new_count, new_pid = count_and_pid(client, "acme")  # waits for the restart, no 503
    assert (new_count, new_pid != pid) == (200, True)
    info = router.info("acme")
    assert info["state"] == "running" and info["restarts"] == 1
    assert info["last_error"] is None
    assert "killed by signal 9" in info["last_exit"]


def test_a_crash_loop_backs_off_and_a_request_within_its_budget_waits_it_out(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER, env={
        "SWITCHBOARD_CRASH_LOOP_CRASHES": "3", "SWITCHBOARD_BACKOFF_BASE_S": "1",
    }).start()
    router.create("acme")
    with router.client() as client:
        for crash in range(3):
            _, pid = count_and_pid(client, "acme")
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda pid=pid: not alive(pid), 10)  # type: ignore[misc]
            restarts = crash + 1
            wait_until(lambda: router.info("acme")["restarts"] == restarts, 10)  # noqa: B023
        info = router.info("acme")
        assert info["state"] == "failed" and info["retry_at"] is not None
        assert "3 crashes within" in info["last_error"]
        started = time.monotonic()
        count, _ = count_and_pid(client, "acme")  # backoff (~1 s) < start_timeout_s: it waits
    assert count == 0 and time.monotonic() - started < 10
    assert router.info("acme")["state"] == "running"


FAULTY = "tests.apps.faulty:app"
FAST_PINGS = {"SWITCHBOARD_PING_INTERVAL_S": "0.3", "SWITCHBOARD_PING_TIMEOUT_S": "0.3"}


def fire_and_forget(router: Router, method: str, path: str) -> threading.Thread:
    """Send a request whose answer the test does not wait for (it may never come)."""
    def send() -> None:
        with router.client(timeout=60) as client, contextlib.suppress(httpx.HTTPError):
            client.request(method, path)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("fault", ["spin", "deadlock"])
def test_a_stuck_worker_is_killed_and_replaced_while_others_keep_serving(
    make_router: MakeRouter, fault: str,
) -> None:
    router = make_router(app=FAULTY, env=FAST_PINGS).start()
    router.create("acme", "other")
    with router.client() as client:
        assert client.post("/t/acme/add", json={"amount": 7}).status_code == 201
        _, pid = count_and_pid(client, "acme")
        count_and_pid(client, "other")
        stuck_at = time.monotonic()
        # A POST: the router does not replay it on the next worker (a GET it would, once).
        fire_and_forget(router, "POST", f"/t/acme/{fault}?s=60")
        while alive(pid) and time.monotonic() - stuck_at < 30:
            count_and_pid(client, "other")  # another tenant is served throughout
        detected_s = time.monotonic() - stuck_at
        assert not alive(pid)
        count, new_pid = count_and_pid(client, "acme")
    print(f"{fault}: detected and killed after {detected_s:.2f}s")
    assert count == 7 and new_pid != pid
    info = router.info("acme")
    assert "unresponsive" in info["last_exit"], info
    assert router.metric("switchboard_unresponsive_kills_total") == 1


def test_a_worker_past_max_worker_rss_bytes_is_recycled_between_requests(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=FAULTY, env={
        **FAST_PINGS, "SWITCHBOARD_MAX_WORKER_RSS_BYTES": str(150 << 20)}).start()
    router.create("acme")
    with router.client() as client:
        assert client.post("/t/acme/add", json={"amount": 3}).status_code == 201
        _, pid = count_and_pid(client, "acme")
        grew_at = time.monotonic()
        assert client.post("/t/acme/grow?mb=200").status_code == 200
        wait_until(lambda: not alive(pid), 20)
        print(f"recycled {time.monotonic() - grew_at:.2f}s after growing past the limit")
        count, new_pid = count_and_pid(client, "acme")
    assert count == 3 and new_pid != pid
    assert "max_worker_rss_bytes" in router.info("acme")["last_exit"]
    assert router.metric("switchboard_rss_recycles_total") == 1
