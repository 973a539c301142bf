"""Per-worker limits and what counts as activity (issue 9), through a real router: a request
timeout, the kernel's OOM killer inside a real memory cgroup, an open WebSocket that keeps
its tenant resident past the idle timeout."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from websockets.sync.client import connect

from switchboard import procfs
from tests.conftest import Router, alive, count_and_pid, group_pids, wait_until

MakeRouter = Callable[..., Router]
FAULTY = "tests.apps.faulty:app"
DABBLE = "examples.dabble:app"


def test_a_request_the_worker_does_not_answer_in_time_gets_504_and_the_worker_lives_on(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=FAULTY, env={"SWITCHBOARD_REQUEST_TIMEOUT_S": "1"}).start()
    router.create("acme")
    with router.client() as client:
        _, pid = count_and_pid(client, "acme")
        started = time.monotonic()
        response = client.get("/t/acme/sleep?s=10")
        waited = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert "no answer within 1s" in response.text
        assert 1 <= waited < 5
        assert client.get("/t/acme/sleep?s=0.1").status_code == 200  # under the limit: served
        assert count_and_pid(client, "acme")[1] == pid  # same worker


def test_an_open_websocket_keeps_its_tenant_resident_past_the_idle_timeout(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=DABBLE, idle_timeout=1).start()
    router.create("acme")
    with connect(f"ws://127.0.0.1:{router.port}/t/acme/ws/echo", open_timeout=30) as ws:
        pid = router.info("acme")["pid"]
        deadline = time.monotonic() + 4  # four idle timeouts with the socket open and quiet
        while time.monotonic() < deadline:
            time.sleep(0.5)
            assert router.info("acme")["pid"] == pid and router.state("acme") == "running"
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"
    wait_until(lambda: router.state("acme") == "stopped", 15)  # idle again once it closed
    assert not alive(pid)


# ---- the OOM killer, in a memory cgroup made for the test ------------------------------------


def own_memory_cgroup() -> Path:
    counter = procfs.oom_counter_file(os.getpid())
    assert counter is not None, "no memory cgroup for this process: cannot test the OOM killer"
    return counter.parent


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A child memory cgroup (v1 or v2) with a hard limit and no swap; removed afterwards."""
    parent = own_memory_cgroup()
    group = parent / f"switchboard-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        v1 = (group / "memory.limit_in_bytes").exists()
        if v1:
            (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (group / "memory.swappiness").write_text("0")
        else:
            (group / "memory.max").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (parent / "cgroup.procs").write_text(pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_a_worker_taken_by_the_oom_killer_is_reported_as_such(make_router: MakeRouter) -> None:
    router = make_router(app=FAULTY).start()
    router.create("acme", "other")
    usage = sum(procfs.rss_bytes(pid) or 0 for pid in group_pids(router.pid))
    with memory_cgroup(usage + (160 << 20)) as group:
        for pid in group_pids(router.pid):  # router and zygote: the workers they fork follow
            (group / "cgroup.procs").write_text(str(pid))
        with router.client(timeout=60) as client:
            assert client.post("/t/acme/add", json={"amount": 5}).status_code == 201
            _, pid = count_and_pid(client, "acme")
            # The zygote may have forked this worker (its spare) before the zygote moved: move
            # it too, so what it allocates from here on counts against the limit.
            (group / "cgroup.procs").write_text(str(pid))
            assert str(pid) in (group / "cgroup.procs").read_text().split()
            with contextlib.suppress(httpx.HTTPError):
                client.post("/t/acme/grow?mb=400")  # past the limit: the kernel kills it
            wait_until(lambda: not alive(pid), 30)
            info = router.info("acme")
            assert "OOM killer" in (info["last_exit"] or ""), info
            assert router.metric("switchboard_oom_kills_total") == 1
            count, new_pid = count_and_pid(client, "acme")  # back, with its data
            assert count == 5 and new_pid != pid
            count_and_pid(client, "other")
        router.kill_group()



WORKLOAD = "tests.apps.workload:app"


def test_declared_busy_work_keeps_its_tenant_resident_and_idle_counts_from_its_end(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=WORKLOAD, idle_timeout=1).start()
    router.create("acme", "other")
    with router.client() as client:
        assert client.post("/t/acme/work/start?name=import").status_code == 200
        pid = router.info("acme")["pid"]
        wait_until(lambda: router.info("acme")["busy"] == ["import"], 10)
        assert client.get("/t/other/count").status_code == 200
        wait_until(lambda: router.state("other") == "stopped", 15)  # idles out as usual
        assert router.state("acme") == "running" and router.info("acme")["pid"] == pid
        finished = time.monotonic()
        assert client.post("/t/acme/work/finish?name=import").status_code == 200
        wait_until(lambda: router.state("acme") == "stopped", 15)
    assert time.monotonic() - finished >= 1  # a full idle timeout after the work ended
    assert not alive(pid)


def test_busy_work_past_max_busy_s_no_longer_pins_the_worker(make_router: MakeRouter) -> None:
    router = make_router(app=WORKLOAD, idle_timeout=1,
                         env={"SWITCHBOARD_MAX_BUSY_S": "2"}).start()
    router.create("acme")
    with router.client() as client:
        assert client.post("/t/acme/work/start?name=stuck").status_code == 200
    started = time.monotonic()
    wait_until(lambda: router.state("acme") == "stopped", 20)
    assert time.monotonic() - started >= 1.5
