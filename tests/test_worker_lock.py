"""One live worker per tenant, by construction: the worker's flock on its tenant's
`worker.lock` (tenant/lock.py).

The lock itself in-process; a worker frozen mid-checkpoint and killed -9 (its checkpoint child
holds the lock and dies with it); and for real through a router: a second worker started by
hand for a tenant the router serves is refused, names the holder, and loses no write.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from contract.worker import BOOT_FAILED, BOOT_FAILED_EXIT
from harness import ROOT, alive, kill_group, wait_until
from snapshots.layout import LOCK_FILE, DataLayout
from tenant.errors import TenantLocked
from tenant.lock import TenantLock
from tests.conftest import Router, count_and_pid
from tests.workerproc import WorkerProcess

WORKLOAD = "tests.apps.workload:app"
MakeRouter = Callable[..., Router]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(") ", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def open_paths(pid: int) -> list[str]:
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return paths


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    return DataLayout(tmp_path / "data")


# ---- the lock in-process ------------------------------------------------------------------


def test_the_lock_names_its_holder_and_refuses_a_second_taker_at_once(layout: DataLayout) -> None:
    lock = TenantLock.acquire(layout, "acme")
    try:
        path = layout.lock_path("acme")
        assert path == layout.tenant_dir("acme") / LOCK_FILE
        assert path.read_text() == f"{os.getpid()}\n"
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert fcntl.fcntl(lock.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # no exec'd program has it
        assert not layout.has_files("acme")  # the lock file is no tenant data
        started = time.monotonic()
        with pytest.raises(TenantLocked) as refused:
            TenantLock.acquire(layout, "acme")  # another open file description: a conflict
        assert time.monotonic() - started < 1.0  # a live holder: no handover wait
        assert str(refused.value) == (
            f"tenant acme is already served by another worker (pid {os.getpid()})")
        assert refused.value.holder == os.getpid()
        assert TenantLock.acquire(layout, "other").held  # other tenants are not affected
    finally:
        lock.release()
    again = TenantLock.acquire(layout, "acme")  # the file stays; only the kernel's lock counts
    again.release()
    assert not again.held


def test_a_dead_holders_lock_is_waited_for_then_refused_with_why(layout: DataLayout) -> None:
    lock = TenantLock.acquire(layout, "acme")
    try:
        # As after a worker crash: the file names a dead worker, and something it forked (here
        # our own descriptor) still holds the open file description.
        gone = dead_pid()
        layout.lock_path("acme").write_text(f"{gone}\n")
        started = time.monotonic()
        with pytest.raises(TenantLocked) as refused:
            TenantLock.acquire(layout, "acme", handover_s=0.3)
        assert time.monotonic() - started >= 0.3
        assert f"pid {gone}, exited" in str(refused.value)
        assert refused.value.holder == gone

        # Released during the handover wait: the new taker gets it.
        threading.Timer(0.2, lock.release).start()
        taken = TenantLock.acquire(layout, "acme", handover_s=5)
        assert layout.lock_path("acme").read_text() == f"{os.getpid()}\n"
        taken.release()
    finally:
        lock.release()


# ---- a worker killed -9 in the middle of a checkpoint -------------------------------------


@pytest.fixture
def frozen_checkpoint(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    data_dir = tmp_path / "data"
    with open(tmp_path / "holder.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.hold_checkpoint", str(data_dir),
                                 "acme"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                start_new_session=True)
    yield proc
    kill_group(proc)


def test_the_checkpoint_child_holds_the_lock_and_dies_with_its_worker(
    layout: DataLayout, tmp_path: Path, frozen_checkpoint: subprocess.Popen[bytes],
) -> None:
    holder = frozen_checkpoint.pid
    snapshots = layout.snapshot_dir("acme")

    def child_in_checkpoint() -> list[int]:
        kids = children(holder)
        temp = snapshots.is_dir() and any(p.name.endswith(".tmp") for p in snapshots.iterdir())
        return kids if temp else []

    [child] = wait_until(child_in_checkpoint, 30, "the checkpoint child writing its temp file")
    assert any(p.endswith(LOCK_FILE) for p in open_paths(child))  # it inherited the lock
    with pytest.raises(TenantLocked, match=f"pid {holder}"):
        TenantLock.acquire(layout, "acme", handover_s=0)

    os.kill(holder, signal.SIGKILL)  # the worker crashes mid-checkpoint
    frozen_checkpoint.wait(10)
    wait_until(lambda: not alive(child), 5, "the checkpoint child dying with its worker")
    lock = TenantLock.acquire(layout, "acme", handover_s=0)  # nothing of the old worker is left
    lock.release()
    assert layout.generations("acme") == []  # its snapshot was never renamed into place

    worker = WorkerProcess(layout.data_dir, "acme", WORKLOAD, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        with httpx.Client(base_url=worker.url, timeout=30) as client:
            assert client.get("/count").json()["count"] == 1  # the journaled write survived
        assert worker.stop() == 0
    finally:
        worker.kill()


# ---- hand-started workers ------------------------------------------------------------------


def test_export_takes_no_lock_while_a_worker_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    worker = WorkerProcess(data_dir, "acme", WORKLOAD, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        with httpx.Client(base_url=worker.url, timeout=30) as client:
            assert client.post("/add", json={"amount": 4}).status_code == 201
        out = tmp_path / "acme.sbexport"
        done = subprocess.run(
            [sys.executable, "-m", "tenant.export", "export", "--data-dir", str(data_dir),
             "--tenant", "acme", "--app", WORKLOAD, "-o", str(out)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
            text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert out.stat().st_size > 0
        assert layout_holder(data_dir) == worker.pid  # the worker's lock is untouched
        assert worker.stop() == 0
    finally:
        worker.kill()


def layout_holder(data_dir: Path) -> int:
    return int(DataLayout(data_dir).lock_path("acme").read_text())


# ---- through a real router -----------------------------------------------------------------


def test_a_second_worker_for_a_served_tenant_is_refused_and_no_write_is_lost(
    make_router: MakeRouter, tmp_path: Path,
) -> None:
    router = make_router(app=WORKLOAD).start()
    router.create("acme")
    acknowledged = 0
    failures: list[str] = []
    stop_writing = threading.Event()

    def write_until_stopped() -> None:
        nonlocal acknowledged
        with router.client() as client:
            while not stop_writing.is_set():
                response = client.post("/t/acme/add", json={"amount": 1})
                if response.status_code == 201:
                    acknowledged += 1
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    with router.client() as client:
        count, serving = count_and_pid(client, "acme")
        assert count == 0
        writer = threading.Thread(target=write_until_stopped)
        writer.start()
        try:
            wait_until(lambda: acknowledged >= 20, 30, "writes acknowledged")
            intruder = WorkerProcess(router.data_dir, "acme", WORKLOAD, tmp_path / "intruder.log")
            try:
                event = intruder.next_event()
                assert intruder.wait_exit() == BOOT_FAILED_EXIT
            finally:
                intruder.kill()
            assert event == {"event": BOOT_FAILED, "error": (
                f"tenant acme is already served by another worker (pid {serving})")}
            written_before = acknowledged
            wait_until(lambda: acknowledged >= written_before + 20, 30, "more writes")
        finally:
            stop_writing.set()
            writer.join(30)
        assert failures == []
        count, pid = count_and_pid(client, "acme")
        assert (count, pid) == (acknowledged, serving)  # the first worker serves on

        router.cli("stop", "acme")
        wait_until(lambda: not alive(serving), 30, "the first worker to stop")
        count, pid = count_and_pid(client, "acme")
        assert pid != serving and count == acknowledged  # restored: nothing was lost


def test_the_zygote_and_its_spare_hold_no_tenant_lock(make_router: MakeRouter) -> None:
    router = make_router(app=WORKLOAD).start()
    router.create("acme")
    with router.client() as client:
        worker = count_and_pid(client, "acme")[1]
    zygote = wait_until(router.zygote_pid, 30, "the zygote")
    assert zygote is not None
    assert any(p.endswith(f"/acme/{LOCK_FILE}") for p in open_paths(worker))
    spare = wait_until(lambda: [p for p in children(zygote) if p != worker], 10, "a spare")
    for pid in [zygote, *spare]:
        assert not any(p.endswith(LOCK_FILE) for p in open_paths(pid)), pid
