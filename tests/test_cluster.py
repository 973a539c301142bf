"""Cluster mode end to end: real `switchboard serve --cluster` hosts on the session's real
PostgreSQL (harness/cluster.py), real kills, pauses and a PostgreSQL restart. Every test
checks what a user sees: answers, and that every acknowledged (2xx) write is there after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from harness import ROOT, SWITCHBOARD, wait_until
from harness.cluster import start_host, start_hosts
from harness.router import RouterProcess

LEASE_TTL_S = 2.0


@pytest.fixture
def hosts(cluster_db: str, tmp_path: Path) -> Iterator[list[RouterProcess]]:
    started = start_hosts(cluster_db, tmp_path, ["a", "b", "c"], lease_ttl_s=LEASE_TTL_S)
    try:
        yield started
    finally:
        for host in started:
            host.kill_group()


def cli(host: RouterProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(SWITCHBOARD), *args], capture_output=True, text=True,
                            env=host.env(), cwd=ROOT, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def worker_of(url: str, tenant: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/t/{tenant}/api/worker", timeout=30)
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()
    return found


def all_records(url: str, tenant: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with httpx.Client(timeout=30) as http:
        while True:
            resp = http.get(f"{url}/t/{tenant}/api/tables/w/records",
                            params={"offset": len(records), "limit": 1000})
            assert resp.status_code == 200, resp.text
            page = resp.json()
            records += page["records"]
            if not page["records"] or len(records) >= page["total"]:
                return records


class Writers:
    """Threads that POST numbered records through the given router URLs round robin, and
    remember every one answered 2xx (acknowledged) and every other answer."""

    def __init__(self, urls: list[str], tenant: str, count: int, *,
                 timeout_s: float = 20.0) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self.tenant = tenant
        self.acked: set[tuple[int, int]] = set()
        self.failures: list[tuple[float, str]] = []
        self.last_ack = 0.0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(count)]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, writer: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(self.timeout_s)) as client:
            n = 0
            while not self.stopping.is_set():
                url = self.urls[(writer + n) % len(self.urls)]
                try:
                    resp = client.post(f"{url}/t/{self.tenant}/api/tables/w/records",
                                       json={"w": writer, "n": n})
                    outcome = resp.status_code
                except httpx.HTTPError as exc:
                    outcome = 0
                    reason = type(exc).__name__
                with self.lock:
                    if 200 <= outcome < 300:
                        self.acked.add((writer, n))
                        self.last_ack = time.monotonic()
                    else:
                        self.failures.append((time.monotonic(), str(outcome or reason)))
                n += 1
                if outcome == 0 or outcome >= 500:
                    time.sleep(0.05)

    def acked_since(self, moment: float) -> bool:
        return self.last_ack > moment

    def check_all_there(self, url: str) -> None:
        seen = {(r["fields"]["w"], r["fields"]["n"]) for r in all_records(url, self.tenant)}
        missing = self.acked - seen
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"


def test_three_hosts_any_host_serves_any_tenant(hosts: list[RouterProcess]) -> None:
    a, b, c = hosts
    cli(a, "create", "acme")
    with httpx.Client(timeout=30) as http:
        for n in range(20):
            resp = http.post(f"{b.url}/t/acme/api/tables/w/records", json={"w": 0, "n": n})
            assert resp.status_code == 201, resp.text
    assert sorted(r["fields"]["n"] for r in all_records(c.url, "acme")) == list(range(20))
    # b took it on first touch; every host's answer comes from b's worker
    owner = {worker_of(h.url, "acme")["host"] for h in hosts}
    assert owner == {"b"}
    assert worker_of(a.url, "acme")["epoch"] == 2
    rows = json.loads(cli(c, "ls", "--json").stdout)
    assert [(r["name"], r["host"], r["epoch"]) for r in rows] == [("acme", "b", 2)]
    assert (rows[0]["pid"], rows[0]["port"], rows[0]["socket"]) == (None, None, None)
    [on_b] = json.loads(cli(b, "ls", "--json").stdout)
    assert on_b["pid"] == worker_of(b.url, "acme")["pid"] and on_b["socket"]
    header, row = cli(a, "ls").stdout.splitlines()
    assert header.split()[-1] == "HOST" and row.split()[-1] == "b"
    listed = json.loads(cli(a, "hosts", "--json").stdout)
    assert [h["id"] for h in listed] == ["a", "b", "c"]
    for row in listed:
        assert row["alive"] is True and 0 < row["lease_expires_in_s"] <= LEASE_TTL_S
        assert row["router_url"].startswith("http://127.0.0.1:") and row["admin_url"]
    assert {h["id"]: h["resident"] for h in listed}["b"] in (0, 1)  # as of its last renewal


def test_first_touch_race_has_one_owner(hosts: list[RouterProcess]) -> None:
    a, _b, _c = hosts
    cli(a, "create", "race")
    answers: list[dict[str, Any]] = []

    def touch(url: str) -> None:
        answers.append(worker_of(url, "race"))

    threads = [threading.Thread(target=touch, args=(h.url,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 3
    assert len({(w["host"], w["pid"], w["epoch"]) for w in answers}) == 1, answers
    assert answers[0]["epoch"] == 2  # one claim won; the others forward to it


@pytest.mark.slow
def test_killed_host_fails_over_with_every_acknowledged_write(
        hosts: list[RouterProcess], cluster_db: str) -> None:
    a, b, c = hosts
    cli(a, "create", "acme")
    assert worker_of(a.url, "acme")["host"] == "a"
    with Writers([b.url, c.url], "acme", 4) as writers:
        wait_until(lambda: len(writers.acked) >= 40, 30, "writes through b and c")
        # a snapshot in PostgreSQL, then a journal tail on top of it: the next owner needs both
        cli(a, "checkpoint", "acme")
        wait_until(lambda: snapshots_in(cluster_db, "acme"), 30, "the snapshot in PostgreSQL")
        wait_until(lambda: len(writers.acked) >= 80, 30, "writes after the checkpoint")
        killed_at = time.monotonic()
        os.killpg(a.pid, signal.SIGKILL)  # router, zygote, workers
        wait_until(lambda: writers.acked_since(killed_at + 0.1), LEASE_TTL_S + 10,
                   "a write acknowledged after the kill")
        recovery_s = writers.last_ack - killed_at
        wait_until(lambda: len(writers.acked) >= 120, 30, "more writes")
    assert recovery_s <= LEASE_TTL_S + 2, f"took {recovery_s:.2f}s to serve again"
    assert worker_of(b.url, "acme")["host"] in ("b", "c")
    writers.check_all_there(c.url)


@pytest.mark.slow
def test_paused_host_is_fenced(hosts: list[RouterProcess]) -> None:
    a, b, c = hosts
    cli(a, "create", "acme")
    paused_worker = worker_of(a.url, "acme")
    assert paused_worker["host"] == "a"
    with Writers([a.url], "acme", 2) as via_a:
        wait_until(lambda: len(via_a.acked) >= 20, 30, "writes through a")
        os.killpg(a.pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            # a request forwarded to the paused host waits for it: clients give up on those
            with Writers([b.url, c.url], "acme", 2, timeout_s=4) as via_others:
                wait_until(lambda: via_others.acked_since(stopped_at), LEASE_TTL_S + 10,
                           "b or c took the tenant over")
                wait_until(lambda: len(via_others.acked) >= 20, 30, "writes through b, c")
                taken = worker_of(b.url, "acme")
                assert taken["host"] in ("b", "c") and taken["epoch"] > paused_worker["epoch"]
                seen_through_a: list[tuple[int, int | None]] = []
                reading = threading.Event()

                def read_through_a() -> None:  # from the moment a resumes
                    with httpx.Client(timeout=10) as http:
                        while not reading.is_set():
                            try:
                                resp = http.get(f"{a.url}/t/acme/api/worker")
                            except httpx.HTTPError:
                                continue
                            seen_through_a.append((resp.status_code, resp.json().get("pid")
                                                   if resp.status_code == 200 else None))

                reader = threading.Thread(target=read_through_a, daemon=True)
                reader.start()
                os.killpg(a.pid, signal.SIGCONT)
                resumed_at = time.monotonic()
                # the paused worker never acknowledges again: a's writers get 503s or are
                # forwarded to the new owner; a's own worker goes away
                wait_until(lambda: via_a.acked_since(resumed_at + 1.5), 30,
                           "a forwarding to the new owner")
                wait_until(lambda: not psutil_alive(paused_worker["pid"]), 30,
                           "a's fenced worker to exit")
                assert worker_of(a.url, "acme")["pid"] == taken["pid"]
                reading.set()
                reader.join(30)
                # a's worker never answered again once a was back: 503s, then forwarded
                assert seen_through_a and all(
                    pid == taken["pid"] for status, pid in seen_through_a if status == 200)
                assert all(status in (200, 503) for status, _ in seen_through_a), seen_through_a
        finally:
            os.killpg(a.pid, signal.SIGCONT)
    for writers in (via_a, via_others):
        writers.check_all_there(c.url)
    pids_answering = {worker_of(h.url, "acme")["pid"] for h in hosts}
    assert pids_answering == {taken["pid"]}


def snapshots_in(url: str, tenant: str) -> list[tuple[int, int]]:
    """(generation, journal_pos) of the tenant's complete snapshots in PostgreSQL."""
    with psycopg.connect(url) as conn:
        return [(int(g), int(p)) for g, p in conn.execute(
            "SELECT generation, journal_pos FROM snapshots s JOIN tenants t ON t.id = "
            "s.tenant_id WHERE t.name = %s AND complete ORDER BY generation", (tenant,))]


def psutil_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_postgresql_restart_under_load(hosts: list[RouterProcess], postgres: Any) -> None:
    a, b, _c = hosts
    cli(a, "create", "acme")
    with Writers([a.url, b.url], "acme", 4) as writers:
        wait_until(lambda: len(writers.acked) >= 40, 30, "writes")
        # a restart with a crash on the way down (nothing flushed), held down until the
        # writers see it: a write waits up to 2 s for its commit, then gets 503
        down_at = time.monotonic()
        postgres.stop(mode="immediate")
        try:
            wait_until(lambda: any(t > down_at and reason == "503"
                                   for t, reason in list(writers.failures)), 30, "503s")
        finally:
            postgres.start_again()
        back_at = time.monotonic()  # pg_ctl returned: PostgreSQL accepts connections again
        wait_until(lambda: writers.acked_since(back_at), 30, "writes again")
        assert writers.last_ack - back_at < 10
        before = len(writers.acked)
        wait_until(lambda: len(writers.acked) >= before + 40, 30, "more writes")
    assert any(reason == "503" for _t, reason in writers.failures), writers.failures[:5]
    writers.check_all_there(b.url)


@pytest.mark.slow
def test_migrate_under_twenty_writers_loses_nothing(hosts: list[RouterProcess]) -> None:
    a, b, c = hosts
    cli(a, "create", "acme")
    assert worker_of(a.url, "acme")["host"] == "a"
    with Writers([a.url, b.url, c.url], "acme", 20) as writers:
        wait_until(lambda: len(writers.acked) >= 200, 60, "writes through all three hosts")
        moved = json.loads(cli(c, "migrate", "acme", "--to", "b", "--json").stdout)  # c: not
        after = len(writers.acked)                                # the owner; it asks a
        wait_until(lambda: len(writers.acked) >= after + 200, 60, "writes after the move")
    assert (moved["host"], moved["epoch"]) == ("b", 3) and moved["started"] is True
    assert moved["prewarmed"] is True  # b restored the snapshot before the switch
    assert 0 < moved["pause_ms"] < 10_000
    assert not writers.failures, writers.failures[:5]
    assert {worker_of(h.url, "acme")["host"] for h in hosts} == {"b"}
    writers.check_all_there(a.url)
    # the same again is a no-op; an unknown or dead target is refused and nothing moves
    assert "already" in cli(a, "migrate", "acme", "--to", "b").stdout
    refused = cli(a, "migrate", "acme", "--to", "nobody", check=False)
    assert refused.returncode == 1 and "no host 'nobody'" in refused.stderr
    assert worker_of(c.url, "acme")["host"] == "b"


def test_failover_and_bad_input(hosts: list[RouterProcess]) -> None:
    a, b, c = hosts
    cli(a, "create", "acme")
    assert worker_of(a.url, "acme")["host"] == "a"
    a.kill_group()
    # without failover, b would wait out a's lease; declared dead, b claims it at once
    cli(b, "failover", "--from", "a")
    assert {h["id"]: h["alive"] for h in json.loads(cli(c, "hosts", "--json").stdout)} == {
        "a": False, "b": True, "c": True}
    taken = worker_of(b.url, "acme")
    assert taken["host"] == "b" and taken["epoch"] == 3
    unknown = cli(b, "failover", "--from", "nobody", check=False)
    assert unknown.returncode == 1 and "no host 'nobody'" in unknown.stderr
    table = cli(c, "hosts").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "ALIVE", "LEASE"]


def test_cluster_flags_and_commands_refuse_bad_input(tmp_path: Path, router: Any) -> None:
    bad = subprocess.run([str(SWITCHBOARD), "serve", "--data-dir", str(tmp_path / "d"),
                          "--cluster", "mysql://x@y/z"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert bad.returncode != 0 and "cluster_url must be postgresql://" in bad.stderr
    unreachable = subprocess.run(
        [str(SWITCHBOARD), "serve", "--data-dir", str(tmp_path / "d"), "--listen",
         "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--cluster",
         "postgresql://postgres@127.0.0.1:1/switchboard"],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert unreachable.returncode == 1
    assert "cannot reach the cluster database" in unreachable.stderr
    no_url = subprocess.run([str(SWITCHBOARD), "db", "upgrade"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60,
                            env={k: v for k, v in os.environ.items()
                                 if k != "SWITCHBOARD_CLUSTER_URL"})
    assert no_url.returncode == 1 and "no database" in no_url.stderr
    standalone = router.cli("hosts", check=False)  # a standalone router has no hosts
    assert standalone.returncode == 1 and "not in cluster mode" in standalone.stderr


def test_db_upgrade_command(cluster_db: str) -> None:
    done = subprocess.run([str(SWITCHBOARD), "db", "upgrade", "--cluster", cluster_db],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "schema version 1"


@pytest.mark.slow
def test_cluster_demo_starts_and_stops_cleanly(tmp_path: Path) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "ops.demo", "--cluster", "2", "--data-dir",
                             str(tmp_path / "demo")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Ctrl-C stops" in x for x in lines):
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
        routers = [x.split()[3] for x in lines if x.strip().startswith("host ")]
        assert len(routers) == 2, "".join(lines)
        for router in routers:  # either host serves the seeded tenants
            assert all_records_of(router, "acme", "customers") == 1
        demo.send_signal(signal.SIGINT)
        assert demo.wait(90) == 0
        pg_url = next(x for x in lines if "hosts on postgresql://" in x)
        port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(psycopg.OperationalError):  # its PostgreSQL is gone too
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/switchboard",
                            connect_timeout=2)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(30)
        if demo.stdout is not None:
            demo.stdout.close()


def all_records_of(url: str, tenant: str, table: str) -> int:
    resp = httpx.get(f"{url}/t/{tenant}/api/tables/{table}/records", timeout=30)
    assert resp.status_code == 200, resp.text
    total: int = resp.json()["total"]
    return total


def test_rm_through_any_host_and_create_again(hosts: list[RouterProcess]) -> None:
    a, b, c = hosts
    cli(a, "create", "acme")
    resp = httpx.post(f"{b.url}/t/acme/api/tables/w/records", json={"n": 1}, timeout=30)
    assert resp.status_code == 201
    wait_until(lambda: [r["name"] for r in json.loads(cli(c, "ls", "--json").stdout)] ==
               ["acme"], 10, "c maps acme")
    cli(c, "rm", "acme")  # b runs it; c removes it
    for host in hosts:
        wait_until(lambda h=host: json.loads(cli(h, "ls", "--json").stdout) == [], 10,
                   f"acme gone from {host.data_dir.name}")
    assert httpx.get(f"{b.url}/t/acme/api/worker", timeout=30).status_code == 404
    cli(a, "create", "acme")  # a new tenant of the name: empty, epoch 1 then claimed
    fresh = worker_of(c.url, "acme")
    assert fresh["epoch"] == 2 and all_records(b.url, "acme") == []


def test_fenced_worker_answers_503_and_exits_not_crashed(hosts: list[RouterProcess],
                                                         cluster_db: str) -> None:
    a, _b, _c = hosts
    cli(a, "create", "acme")
    worker = worker_of(a.url, "acme")
    [row] = json.loads(cli(a, "ls", "--json").stdout)
    os.kill(a.pid, signal.SIGSTOP)  # the router only: its worker goes on serving its socket
    try:
        with psycopg.connect(cluster_db, autocommit=True) as conn:  # another change of owner
            conn.execute("UPDATE tenants SET epoch = epoch + 1 WHERE name = 'acme'")
        with httpx.Client(transport=httpx.HTTPTransport(uds=row["socket"]),
                          timeout=30) as direct:
            reads = direct.get("http://worker/api/worker")
            resp = direct.post("http://worker/api/tables/w/records", json={"n": 1})
        assert reads.status_code == 200  # a read before the write noticed
        assert resp.status_code == 503 and "another host owns it" in resp.text
        wait_until(lambda: not psutil_alive(worker["pid"]), 30, "the fenced worker to exit")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    [after] = wait_until(lambda: [r for r in json.loads(cli(a, "ls", "--json").stdout)
                                  if r["last_exit"]], 30, "a to see the exit")
    assert after["last_exit"].startswith("fenced") and after["restarts"] == 0
    with psycopg.connect(cluster_db) as conn:  # the refused write never reached PostgreSQL
        assert conn.execute("SELECT count(*) FROM journal").fetchone() == (0,)


@pytest.mark.slow
def test_full_host_places_a_new_tenant_on_the_roomiest_host(cluster_db: str,
                                                            tmp_path: Path) -> None:
    app = ["--app", "tests.apps.counter:app"]
    a = start_host(cluster_db, tmp_path, "a", lease_ttl_s=LEASE_TTL_S, max_resident=1,
                   extra_args=app)
    started = [a]
    try:
        started.append(start_host(cluster_db, tmp_path, "b", lease_ttl_s=LEASE_TTL_S,
                                  max_resident=4, extra_args=app, keys_from=a.data_dir))
        cli(a, "create", "busy", "fresh")
        with httpx.Client(timeout=30) as http, http.stream(
                "GET", f"{a.url}/t/busy/stream", params={"n": 40, "size": 10, "pause": 0.1}
        ) as slow:  # a's one worker slot, busy for 4 s: nothing idle to evict
            assert slow.status_code == 200
            resp = http.post(f"{a.url}/t/fresh/add", json={"amount": 1})
            assert resp.status_code == 201, resp.text
            owners = {r["name"]: r["host"] for r in json.loads(cli(a, "ls", "--json").stdout)}
            assert owners == {"busy": "a", "fresh": "b"}
            slow.read()
    finally:
        for host in started:
            host.kill_group()
