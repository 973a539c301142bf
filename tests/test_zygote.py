"""Workers forked from the zygote (tenant/zygote.py), through a real `switchboard serve`: they
serve, restore, carry the right title and die with the router; killing the zygote leaves the
tenants serving, new tenants start from fresh interpreters, and the zygote comes back."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import COUNTER, Router, alive, cmdline, group_pids, metric, wait_until

MakeRouter = Callable[..., Router]
ZYGOTE_TITLE = "switchboard: zygote"
SPARE_TITLE = "switchboard: spare worker"


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])


def zygote_pids(router: Router) -> list[int]:
    assert router.proc is not None
    return [p for p in group_pids(router.proc.pid) if cmdline(p).startswith(ZYGOTE_TITLE)]


def spares(router: Router) -> list[int]:
    assert router.proc is not None
    return [p for p in group_pids(router.proc.pid) if cmdline(p).startswith(SPARE_TITLE)]


def wait_for_zygote(router: Router, *, not_pid: int | None = None, timeout: float = 30) -> int:
    """The pid of a zygote that has told the router it is ready (the router logs it)."""

    def ready() -> int | None:
        pids = [int(p) for p in re.findall(r"zygote for \S+ ready \(pid (\d+)\)", router.log())]
        live = set(zygote_pids(router))
        fresh = [p for p in pids if p in live and p != not_pid]
        return fresh[-1] if fresh else None

    pid: int = wait_until(ready, timeout)
    return pid


def spawns(router: Router, via: str) -> float:
    return metric(router.metrics(), f'switchboard_spawns_total{{via="{via}"}}')


def count_and_pid(client: httpx.Client, tenant: str) -> tuple[int, int]:
    response = client.get(f"/t/{tenant}/count")
    assert response.status_code == 200, response.text
    body = response.json()
    return body["count"], body["pid"]


def add(client: httpx.Client, tenant: str, amount: int) -> int:
    response = client.post(f"/t/{tenant}/add", json={"amount": amount})
    assert response.status_code == 201, response.text
    count: int = response.json()["count"]
    return count


def test_a_forked_worker_serves_restores_is_named_and_dies_with_the_router(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER).start()
    zygote = wait_for_zygote(router)
    router.create("acme")
    with router.client() as client:
        assert count_and_pid(client, "acme")[0] == 0
        assert add(client, "acme", 5) == 5
        assert add(client, "acme", 2) == 7
        count, pid = count_and_pid(client, "acme")
        assert count == 7
        assert parent_pid(pid) == zygote  # forked by the zygote, not a fresh interpreter
        status = json.loads(router.cli("status", "acme", "--json").stdout)
        socket_name = os.path.basename(status["socket"])  # a Unix-socket worker, in run/
        assert cmdline(pid) == f"switchboard: tenant acme run/{socket_name}"

        router.cli("stop", "acme")
        wait_until(lambda: not alive(pid), 10)
        count, again = count_and_pid(client, "acme")
        assert count == 7  # restored from the snapshot and journal
        assert again != pid and parent_pid(again) == zygote
    assert spawns(router, "zygote") == 2
    assert spawns(router, "fresh") == 0

    assert router.proc is not None
    group = router.proc.pid
    os.kill(router.proc.pid, signal.SIGKILL)
    router.proc.wait(10)
    wait_until(lambda: not alive(again) and not alive(zygote), 10)
    wait_until(lambda: group_pids(group) == [], 10)  # the spare too: nothing outlives it


def test_a_burst_of_first_requests_to_many_tenants_all_get_zygote_workers(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER).start()
    zygote = wait_for_zygote(router)
    names = [f"t{i}" for i in range(6)]
    router.create(*names)

    def first(name: str) -> int:
        with router.client() as client:
            return count_and_pid(client, name)[1]

    with ThreadPoolExecutor(len(names)) as pool:
        pids = list(pool.map(first, names))
    assert len(set(pids)) == len(names)
    assert all(parent_pid(p) == zygote for p in pids)
    titles = sorted(cmdline(p).rsplit(" ", 1)[0] for p in pids)
    assert titles == [f"switchboard: tenant {n}" for n in names]
    assert spawns(router, "zygote") == len(names)


def test_the_zygote_holds_no_sockets_but_its_channels(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER).start()
    zygote = wait_for_zygote(router)
    spare = wait_until(lambda: spares(router), 10)[0]
    assert parent_pid(spare) == zygote

    def sockets(pid: int) -> int:
        fd_dir = f"/proc/{pid}/fd"
        return sum(os.readlink(f"{fd_dir}/{fd}").startswith("socket:") for fd in os.listdir(fd_dir))

    # The router's channel and the spare's: no listening socket or connection left over from
    # the rehearsal, which every child would otherwise inherit.
    assert sockets(zygote) == 2
    assert sockets(spare) == 1


@pytest.mark.slow
def test_a_request_right_after_the_router_starts_waits_for_the_zygote(
    make_router: MakeRouter,
) -> None:
    # The app takes 1.5 s to import, so the zygote is still starting when the request comes.
    router = make_router(app=COUNTER, env={"SWITCHBOARD_TEST_IMPORT_DELAY_S": "1.5"}).start()
    router.create("early")
    with router.client() as client:
        pid = count_and_pid(client, "early")[1]
    assert spawns(router, "zygote") == 1 and spawns(router, "fresh") == 0
    assert parent_pid(pid) == wait_for_zygote(router)


def test_killing_the_zygote_leaves_tenants_serving_and_new_ones_start_fresh(
    make_router: MakeRouter,
) -> None:
    # Spawns do not wait for the zygote to come back, so the fresh-interpreter path is taken.
    router = make_router(app=COUNTER, env={"SWITCHBOARD_ZYGOTE_WAIT_S": "0"}).start()
    zygote = wait_for_zygote(router)
    router.create("acme", "globex")
    with router.client() as client:
        assert add(client, "acme", 3) == 3
        acme_pid = count_and_pid(client, "acme")[1]
        assert parent_pid(acme_pid) == zygote

        os.kill(zygote, signal.SIGKILL)
        wait_until(lambda: not alive(zygote), 10)

        # Running tenants keep serving, reads and writes alike.
        assert add(client, "acme", 4) == 7
        assert count_and_pid(client, "acme") == (7, acme_pid)

        # A new tenant still starts: a fresh interpreter while the zygote is down.
        fresh_before = spawns(router, "fresh")
        assert count_and_pid(client, "globex")[0] == 0
        assert spawns(router, "fresh") == fresh_before + 1

        # The zygote comes back, and new workers are forked from it again.
        back = wait_for_zygote(router, not_pid=zygote)
        assert back != zygote
        router.cli("stop", "globex")
        assert add(client, "globex", 1) == 1
        globex_pid = count_and_pid(client, "globex")[1]
        assert parent_pid(globex_pid) == back
        assert count_and_pid(client, "acme") == (7, acme_pid)
    # The dead zygote's spare went with it (end of file on its channel); only the new one's stays.
    wait_until(lambda: all(parent_pid(p) == back for p in spares(router)), 10)
