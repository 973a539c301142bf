"""Declared work in progress (`async with current().busy("import")`): counted per name, and
reported to the router as the `busy` event and in the ping reply.

In-process tests of TenantContext.busy, then a real worker (`python -m tenant`) whose app
holds work in background tasks, read from the router's end of its control channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tenant
from tenant import TenantApp, TenantContext
from tests.workerproc import WorkerProcess

WORKLOAD = "tests.apps.workload:app"

app = TenantApp(name="busy-test", initial_state=dict, app_version="test-1")


@pytest.fixture
def context() -> Iterator[tuple[TenantContext, list[list[str]]]]:
    """An active context whose busy changes are recorded in the list."""
    ctx = TenantContext(app, "acme", {})
    changes: list[list[str]] = []
    ctx.on_busy_changed = changes.append
    tenant.activate(ctx)
    yield ctx, changes
    tenant.activate(None)


@pytest.mark.anyio
async def test_nested_uses_are_counted_and_only_set_changes_are_reported(
    context: tuple[TenantContext, list[list[str]]],
) -> None:
    ctx, changes = context
    assert ctx.work_in_progress == []
    async with tenant.current().busy("import"):
        async with tenant.current().busy("import"):  # the same name again: no change
            async with tenant.current().busy("export"):
                assert ctx.work_in_progress == ["export", "import"]
            assert ctx.work_in_progress == ["import"]
        assert ctx.work_in_progress == ["import"]  # one "import" is still open
    assert ctx.work_in_progress == []
    assert changes == [["import"], ["export", "import"], ["import"], []]


@pytest.mark.anyio
async def test_concurrent_tasks_overlap_and_an_error_or_cancel_still_ends_the_work(
    context: tuple[TenantContext, list[list[str]]],
) -> None:
    ctx, changes = context
    release = asyncio.Event()

    async def hold(name: str) -> None:
        async with ctx.busy(name):
            await release.wait()

    first = asyncio.ensure_future(hold("import"))
    second = asyncio.ensure_future(hold("import"))
    await asyncio.sleep(0)
    assert ctx.work_in_progress == ["import"]
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert ctx.work_in_progress == ["import"]  # the first one still holds it
    with pytest.raises(RuntimeError, match="boom"):
        async with ctx.busy("reindex"):
            raise RuntimeError("boom")
    release.set()
    await first
    assert ctx.work_in_progress == []
    assert changes == [["import"], ["import", "reindex"], ["import"], []]


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["", "x" * 201, None, 3])
async def test_a_bad_work_name_is_refused_and_changes_nothing(
    context: tuple[TenantContext, list[list[str]]], name: object,
) -> None:
    ctx, changes = context
    with pytest.raises(ValueError, match="work name"):
        async with ctx.busy(name):  # type: ignore[arg-type]
            pass
    assert ctx.work_in_progress == [] and changes == []


@pytest.mark.anyio
async def test_busy_works_without_a_listener() -> None:
    ctx = TenantContext(app, "acme", {})
    async with ctx.busy("import"):
        assert ctx.work_in_progress == ["import"]
    assert ctx.work_in_progress == []


def test_a_worker_reports_busy_events_and_pings_with_its_work(tmp_path: Path) -> None:
    worker = WorkerProcess(tmp_path / "data", "acme", WORKLOAD, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        assert worker.call("ping")["busy"] == []
        with httpx.Client(base_url=worker.url, timeout=30) as client:

            def step(action: str, name: str) -> list[str]:
                response = client.post(f"/work/{action}", params={"name": name})
                assert response.status_code == 200, response.text
                work: list[str] = response.json()["work"]
                return work

            assert step("start", "import") == ["import"]
            assert worker.drain_events() == [{"event": "busy", "work": ["import"]}]
            assert worker.call("ping")["busy"] == ["import"]

            assert step("start", "import") == ["import"]  # counted, not a change
            assert step("start", "export") == ["export", "import"]
            assert worker.drain_events() == [{"event": "busy", "work": ["export", "import"]}]
            assert worker.call("ping")["busy"] == ["export", "import"]

            assert step("finish", "import") == ["export", "import"]  # one import still runs
            assert step("finish", "export") == ["import"]
            assert step("finish", "import") == []
            assert worker.drain_events() == [{"event": "busy", "work": ["import"]},
                                             {"event": "busy", "work": []}]
            assert worker.call("ping")["busy"] == []
        assert worker.stop() == 0
    finally:
        worker.kill()
