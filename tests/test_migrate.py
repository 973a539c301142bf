"""Moving a tenant between standalone hosts (issue 13; docs/migration.md): real `switchboard
serve` processes on 127.0.0.1, each with its own data dir, sharing admin.key and snapshot.key.

What a user sees: writes through the old host's URL go on during a move and all land on the new
host, sessions survive, the old host forwards (or redirects), a failed move leaves the tenant
serving where it was with all its data, a move back leaves no forwarding, and a host refuses a
migration whose epoch is not newer than its own.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import wait_until
from harness.errors import WaitTimeout
from harness.net import free_port
from tests.conftest import COUNTER, ROOT, SWITCHBOARD, Router, tmpfs

MakeRouter = Callable[..., Router]
KEYS = ("admin.key", "snapshot.key")
STALL_ENV = "SWITCHBOARD_TEST_MIGRATE_STALL"


def host_sharing_keys(make_router: MakeRouter, first: Router, name: str,
                      **kw: Any) -> Router:
    """A second host whose data dir holds `first`'s admin.key and snapshot.key."""
    data_dir = first.data_dir.parent / name
    data_dir.mkdir(mode=0o700, exist_ok=True)
    for key in KEYS:
        shutil.copy(first.data_dir / key, data_dir / key)
        (data_dir / key).chmod(0o600)
    return make_router(name, **kw).start()


def hosts(make_router: MakeRouter, count: int, **kw: Any) -> list[Router]:
    first = make_router("a", **kw).start()
    return [first, *(host_sharing_keys(make_router, first, name, **kw)
                     for name in "bcd"[:count - 1])]


def add_records(router: Router, tenant: str, count: int) -> list[int]:
    with router.client() as client:
        ids = []
        for i in range(count):
            answer = client.post(f"/t/{tenant}/api/tables/notes/records", json={"i": i})
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
    return ids


def record_ids(base_url: str, tenant: str) -> set[int]:
    ids: set[int] = set()
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        while True:
            answer = client.get(f"/t/{tenant}/api/tables/notes/records",
                                params={"offset": len(ids), "limit": 1000})
            assert answer.status_code == 200, answer.text
            page = {record["id"] for record in answer.json()["records"]}
            if not page:
                return ids
            ids |= page


def worker_pid(base_url: str, tenant: str) -> int:
    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        answer = client.get(f"/t/{tenant}/api/worker")
        assert answer.status_code == 200, answer.text
        return int(answer.json()["pid"])


def migrate(router: Router, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return router.cli("migrate", *args, check=check, timeout=120)


def serves(router: Router, tenant: str) -> bool:
    """Whether `router` has the tenant as its own (not moved, not unknown)."""
    return any(t["name"] == tenant and t["state"] != "moved" for t in router.ls())


# --- the move, under load -----------------------------------------------------------------------


@pytest.mark.slow
def test_writers_through_the_old_url_lose_nothing_during_a_move(make_router: MakeRouter) -> None:
    a, b = hosts(make_router, 2)
    a.create("acme")
    add_records(a, "acme", 200)  # something to pre-copy
    session = httpx.Client(base_url=a.url, timeout=30, trust_env=False)
    assert session.post("/t/acme/login", json={"user": "ada"}).status_code == 200

    acknowledged: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(n: int) -> None:
        with httpx.Client(base_url=a.url, timeout=30, trust_env=False) as client:
            deadline = time.monotonic() + 30
            i = 0
            while not stop.is_set() and time.monotonic() < deadline and i < 400:
                i += 1
                try:
                    answer = client.post("/t/acme/api/tables/notes/records",
                                         json={"writer": n, "i": i})
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    if answer.status_code == 201:
                        acknowledged.append(answer.json()["id"])
                    else:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 100, 30, "writes before the move")
    moved = migrate(a, "acme", "--to", b.admin_url, "--json")
    before_stop = len(acknowledged)
    wait_until(lambda: len(acknowledged) >= before_stop + 100, 30, "writes after the move")
    stop.set()
    for thread in threads:
        thread.join(60)

    outcome = json.loads(moved.stdout)
    assert outcome["step"] == "done" and outcome["moved_to"] == b.url
    assert failures == []
    assert set(acknowledged) <= record_ids(b.url, "acme")
    assert record_ids(a.url, "acme") == record_ids(b.url, "acme")  # forwarded
    assert a.info("acme")["state"] == "moved" and a.info("acme")["moved_to"] == b.url
    assert b.info("acme")["epoch"] == a.info("acme")["epoch"] == 2
    # The session from before the move, through either URL; the worker is B's.
    assert session.get("/t/acme/api/me").json() == {"user": "ada"}
    cookies = dict(session.cookies)
    with httpx.Client(base_url=b.url, cookies=cookies, timeout=30, trust_env=False) as client:
        assert client.get("/t/acme/api/me").json() == {"user": "ada"}
    worker = session.get("/t/acme/api/worker").json()
    assert worker["pid"] == b.info("acme")["pid"] and worker["epoch"] == 2
    assert worker["pid"] in b.worker_pids() and a.worker_pids() == []
    session.close()
    # Both hosts logged the steps.
    assert "migrating acme: snapshot staged" in a.log()
    assert "staged tenant acme" in b.log() and "moved here from" in b.log()


def test_forwarding_carries_websockets(make_router: MakeRouter) -> None:
    from websockets.sync.client import connect

    a, b = hosts(make_router, 2)
    a.create("acme")
    migrate(a, "acme", "--to", b.admin_url)
    uri = f"ws://127.0.0.1:{a.port}/t/acme/ws/echo"
    with connect(uri, open_timeout=30, close_timeout=5) as ws:
        ws.send("through two routers")
        assert ws.recv(timeout=30) == "through two routers"


def test_forwarded_requests_keep_their_forwarding_headers(make_router: MakeRouter) -> None:
    """B believes A's X-Forwarded-* (hosts that exchanged a tenant trust each other): the
    worker sees the client, then A, and the Host the client used."""
    a, b = hosts(make_router, 2, app=COUNTER)
    a.create("acme")
    migrate(a, "acme", "--to", b.admin_url)
    with a.client() as client:
        seen = client.get("/t/acme/headers", headers={"host": "shop.example"}).json()
    headers = dict(seen["headers"])
    assert headers["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"
    assert headers["x-forwarded-host"] == "shop.example"
    assert seen["root_path"] == "/t/acme"
    assert seen["link"] == "http://shop.example/t/acme/count"


def test_redirect_mode_answers_307(make_router: MakeRouter) -> None:
    a, b = hosts(make_router, 2, env={"SWITCHBOARD_FORWARD_MODE": "redirect"})
    a.create("acme")
    add_records(a, "acme", 3)
    migrate(a, "acme", "--to", b.admin_url)
    with a.client() as client:
        answer = client.get("/t/acme/api/tables/notes/records?limit=5")
    assert answer.status_code == 307
    assert answer.headers["location"] == f"{b.url}/t/acme/api/tables/notes/records?limit=5"
    with a.client(follow_redirects=True) as client:
        assert client.get("/t/acme/api/tables/notes/records").json()["total"] == 3


# --- back, and chains ---------------------------------------------------------------------------


def test_a_move_back_serves_on_the_first_host_with_no_forwarding(make_router: MakeRouter) -> None:
    a, b = hosts(make_router, 2)
    a.create("acme")
    ids = add_records(a, "acme", 5)
    migrate(a, "acme", "--to", b.admin_url)
    ids += add_records(b, "acme", 5)  # written on B
    back = migrate(b, "acme", "--back")
    assert "moved to " + a.url in back.stdout
    info = a.info("acme")
    assert (info["state"], info["moved_to"], info["epoch"]) == ("running", None, 3)
    assert record_ids(a.url, "acme") == set(ids)
    assert worker_pid(a.url, "acme") in a.worker_pids()
    assert b.info("acme")["moved_to"] == a.url and b.worker_pids() == []
    b.cli("rm", "acme", "--moved-copy")  # B's fallback copy, removed by the operator
    assert b.ls() == [] and record_ids(a.url, "acme") == set(ids)


def test_a_chain_collapses(make_router: MakeRouter) -> None:
    a, b, c = hosts(make_router, 3)
    a.create("acme")
    ids = add_records(a, "acme", 4)
    migrate(a, "acme", "--to", b.admin_url)
    migrate(b, "acme", "--to", c.admin_url)
    wait_until(lambda: a.info("acme")["moved_to"] == c.url, 10, "A learns that acme is on C")
    assert record_ids(a.url, "acme") == set(ids)
    assert worker_pid(a.url, "acme") in c.worker_pids()


# --- failures before the switch ------------------------------------------------------------------


@pytest.mark.slow
def test_failed_moves_leave_the_tenant_serving_where_it_was(make_router: MakeRouter) -> None:
    a = make_router("a").start()
    (a.data_dir.parent / "other").mkdir(mode=0o700)  # the same admin key: calls pass ...
    shutil.copy(a.key_file, a.data_dir.parent / "other" / "admin.key")
    stranger = make_router("other").start()  # ... but a snapshot.key of its own: MACs do not
    a.create("acme")
    ids = add_records(a, "acme", 5)

    unreachable = migrate(a, "acme", "--to", f"http://127.0.0.1:{free_port()}", check=False)
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr and "still serves on the source" in \
        unreachable.stderr
    for _ in range(2):  # and safe to run again
        other_key = migrate(a, "acme", "--to", stranger.admin_url, check=False)
        assert other_key.returncode == 1
        assert "does not verify" in other_key.stderr and "snapshot.key" in other_key.stderr
    assert serves(a, "acme") and [t["name"] for t in stranger.ls()] == []
    ids += add_records(a, "acme", 2)
    assert record_ids(a.url, "acme") == set(ids)


@pytest.mark.slow
def test_a_full_target_refuses_and_the_source_keeps_serving(make_router: MakeRouter,
                                                            tmp_path: Path) -> None:
    a = make_router("a").start()
    a.create("acme")
    ids = add_records(a, "acme", 3)
    with a.client() as client:  # a snapshot of about 4 MB
        for _ in range(10):
            assert client.post("/t/acme/api/tables/big/records",
                               json={"text": "x" * 400_000}).status_code == 201
    with tmpfs(tmp_path / "small", "3m"):
        small = host_sharing_keys(make_router, a, "small")
        full = migrate(a, "acme", "--to", small.admin_url, check=False)
        assert full.returncode == 1
        assert "cannot stage" in full.stderr and "still serves on the source" in full.stderr
        assert small.ls() == [] and serves(a, "acme")
        ids += add_records(a, "acme", 1)
        assert record_ids(a.url, "acme") == set(ids)
        small.kill_group()


@pytest.mark.slow
def test_a_checkpoint_between_copy_and_switch_is_copied_too(make_router: MakeRouter) -> None:
    """A checkpoint after the pre-copy may prune the journal the switch would ship: the
    newest snapshot goes then (a longer pause), and nothing is lost."""
    a = make_router("a", env={STALL_ENV: "staged:4"}).start()
    b = host_sharing_keys(make_router, a, "b")
    a.create("acme")
    ids = add_records(a, "acme", 3)
    command = subprocess.Popen([str(SWITCHBOARD), "migrate", "acme", "--to", b.admin_url],
                               env=a.env(), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "migration stalls" in a.log(), 60, "the pre-copy to finish")
        ids += add_records(a, "acme", 2)
        assert a.cli("checkpoint", "acme").stdout.strip() != "unchanged"
        _, stderr = command.communicate(timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
    assert command.returncode == 0, stderr
    assert "a checkpoint came in between" in stderr
    assert record_ids(b.url, "acme") == set(ids) == record_ids(a.url, "acme")


@pytest.mark.slow
@pytest.mark.parametrize("step", ["staging", "staged", "stopped", "committed"])
def test_a_source_killed_at_each_step(make_router: MakeRouter, tmp_path: Path,
                                      step: str) -> None:
    """SIGKILL of the source's whole process group at each step of a move: afterwards the tenant
    serves on exactly one host, with every acknowledged write."""
    a = make_router("a", env={STALL_ENV: f"{step}:60"}).start()
    b = host_sharing_keys(make_router, a, "b")
    a.create("acme")
    ids = add_records(a, "acme", 5)
    with a.client() as client:  # a 1 MiB+ snapshot, so the upload is under way at "staging"
        for _ in range(3):
            assert client.post("/t/acme/api/tables/big/records",
                               json={"text": "x" * 400_000}).status_code == 201
    command = subprocess.Popen([str(SWITCHBOARD), "migrate", "acme", "--to", b.admin_url],
                               env=a.env(), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "migration stalls" in a.log() or command.poll() is not None, 60,
                   f"the move reaching {step}")
        assert command.poll() is None, (command.communicate(), a.log()[-3000:])
        a.kill_group()
        _, stderr = command.communicate(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
    assert command.returncode == 1 and "broke off" in stderr  # it says it did not finish

    restarted = Router(a.data_dir)  # no stall this time
    try:
        restarted.start()
        try:
            wait_until(lambda: restarted.info("acme")["state"] != "stopped" or httpx.get(
                f"{restarted.url}/t/acme/api/tables", timeout=30).status_code != 503, 30,
                "the restarted source resolving the move")
        except WaitTimeout:
            pytest.fail(f"source:\n{restarted.log()[-4000:]}\ntarget:\n{b.log()[-3000:]}")
        if step == "committed":
            wait_until(lambda: restarted.info("acme")["state"] == "moved", 30,
                       "the restarted source learning that the switch landed")
            owner, other = b, restarted
        else:
            owner, other = restarted, b
        if step in ("stopped", "committed"):  # the switch was under way: asked B first
            assert "asking it before serving" in restarted.log()
        assert record_ids(owner.url, "acme") == set(ids)
        assert serves(owner, "acme") and not serves(other, "acme")
        assert record_ids(other.url, "acme") == set(ids) if step == "committed" else \
            httpx.get(f"{other.url}/t/acme/api/tables", timeout=30).status_code == 404
    finally:
        restarted.kill_group()


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused_and_changes_nothing(make_router: MakeRouter) -> None:
    a, b = hosts(make_router, 2)
    a.create("acme")
    ids = add_records(a, "acme", 3)

    unknown = migrate(a, "nobody", "--to", b.admin_url, check=False)
    assert unknown.returncode == 1 and "nobody" in unknown.stderr
    bad_url = migrate(a, "acme", "--to", "ftp://elsewhere", check=False)
    assert bad_url.returncode == 1 and "admin URL" in bad_url.stderr
    no_origin = migrate(a, "acme", "--back", check=False)
    assert no_origin.returncode == 1 and "came from" in no_origin.stderr
    usage = a.cli("migrate", "acme", check=False)
    assert usage.returncode == 2
    not_moved = a.cli("rm", "acme", "--moved-copy", check=False)
    assert not_moved.returncode == 1 and "has not moved" in not_moved.stderr
    assert serves(a, "acme") and record_ids(a.url, "acme") == set(ids)

    # A reclaimed copy (epoch 3 on A) makes B's epoch-2 tenant an older one: A refuses it.
    migrate(a, "acme", "--to", b.admin_url)
    again = migrate(a, "acme", "--to", b.admin_url, check=False)
    assert again.returncode == 1 and "moved to" in again.stderr
    reclaimed = a.cli("start", "acme", "--reclaim")
    assert "not in this copy" in reclaimed.stderr
    assert a.info("acme")["epoch"] == 3 and serves(a, "acme")
    older = migrate(b, "acme", "--to", a.admin_url, check=False)
    assert older.returncode == 1 and "not newer" in older.stderr
    assert "still serves on the source" in older.stderr
    assert record_ids(b.url, "acme") == set(ids) and serves(b, "acme")


def test_the_docs_list_every_migration_route() -> None:
    source = (ROOT / "switchboard" / "migration_api.py").read_text()
    routes = re.findall(r'Route\((?:"([^"]+)"|(tenant|incoming) \+ "([^"]*)"), [\w.]+, '
                        r'methods=\["(\w+)"\]\)', source)
    assert len(routes) == 8
    documented = (ROOT / "docs" / "admin-api.md").read_text()
    prefixes = {"tenant": "/v1/tenants/{name}", "incoming": "/v1/migrations/{name}"}
    for plain, prefix, suffix, method in routes:
        path = plain or prefixes[prefix] + suffix
        assert f"| `{method} {path}" in documented, (method, path)


def test_a_worker_never_starts_at_an_older_epoch_than_its_files(make_router: MakeRouter) -> None:
    """An old tenant table put back (epoch 1) under files written at epoch 3: no worker."""
    a, b = hosts(make_router, 2)
    a.create("acme")
    add_records(a, "acme", 2)
    a.stop()
    backup = a.data_dir.parent / "tenants-epoch-1.sqlite"
    shutil.copy(a.data_dir / "tenants.sqlite", backup)
    a.start()
    migrate(a, "acme", "--to", b.admin_url)
    migrate(b, "acme", "--back")
    add_records(a, "acme", 1)
    assert a.cli("checkpoint", "acme").stdout.strip() == "2"  # stamped with epoch 3
    a.stop()
    for suffix in ("-wal", "-shm"):
        (a.data_dir / f"tenants.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, a.data_dir / "tenants.sqlite")
    a.start()
    assert a.info("acme")["epoch"] == 1
    with a.client() as client:
        assert client.get("/t/acme/api/tables").status_code == 503
    assert "newer owner" in str(a.info("acme")["last_error"])


@pytest.mark.slow
def test_a_forwarding_loop_ends_in_508(make_router: MakeRouter) -> None:
    """Two hosts that each think the other has the tenant (here: B's table edited by hand)
    stop the request after a few hops instead of passing it back and forth for ever."""
    a, b = hosts(make_router, 2)
    a.create("acme")
    migrate(a, "acme", "--to", b.admin_url)
    port = b.port
    b.stop()
    with sqlite3.connect(b.data_dir / "tenants.sqlite") as db:
        db.execute("UPDATE tenants SET moved_to = ? WHERE name = 'acme'", (a.url,))
    b.extra_args = ["--listen", f"127.0.0.1:{port}"]  # where A forwards to
    b.start()
    with a.client() as client:
        answer = client.get("/t/acme/api/tables")
    assert answer.status_code == 508
    assert "forwarded 8 times" in a.log() + b.log()
