"""Batch create: `switchboard create` with many names, `POST /v1/tenants {"names": [...]}`.

A batch is one transaction in the tenant table and one fsync of the tenants folder, so mapping
thousands of tenants takes seconds; each batch is created whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from harness.errors import AdminCallFailed
from tests.conftest import Router, get_ok


def test_create_with_thousands_of_names_maps_them_all_and_they_survive_a_restart(
    make_router: Callable[..., Router],
) -> None:
    router = make_router().start()
    names = [f"tenant-{i:05d}" for i in range(5000)]  # several requests' worth of names
    result = router.cli("create", *names, "--json", timeout=120)
    created = json.loads(result.stdout)
    assert [row["name"] for row in created] == names
    assert all(row["state"] == "stopped" and row["epoch"] == 1 for row in created)

    with router.client(timeout=30) as client:
        posted = client.post("/t/tenant-04999/api/tables/t/records", json={"n": 1})
        assert posted.status_code == 201, posted.text

    router.stop()
    router.start()
    listed = {row["name"] for row in router.ls()}
    assert set(names) <= listed
    with router.client(timeout=30) as client:
        records = get_ok(client, "/t/tenant-04999/api/tables/t/records").json()
        assert records["total"] == 1


@pytest.mark.parametrize(("names", "status", "culprit"), [
    (["fresh-1", "taken", "fresh-2"], 409, "taken"),
    (["fresh-1", "Bad_Name", "fresh-2"], 400, "Bad_Name"),
    (["fresh-1", "fresh-2", "fresh-1"], 409, "fresh-1"),
])
def test_a_batch_with_one_bad_name_creates_none_of_them(
    make_router: Callable[..., Router], names: list[str], status: int, culprit: str,
) -> None:
    router = make_router().start()
    router.create("taken")
    with pytest.raises(AdminCallFailed) as failed:
        router.admin_call("POST", "/v1/tenants", {"names": names})
    assert failed.value.status == status
    assert culprit in str(failed.value)
    assert [row["name"] for row in router.ls()] == ["taken"]
    assert not any((router.data_dir / "tenants" / name).exists()
                   for name in names if name != "taken")


def test_the_cli_refuses_a_bad_name_before_creating_any(
    make_router: Callable[..., Router],
) -> None:
    router = make_router().start()
    result = router.cli("create", "good-1", "Not OK", "good-2", check=False)
    assert result.returncode == 1
    assert "Not OK" in result.stderr
    assert router.ls() == []
