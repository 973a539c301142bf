"""Code versions (issue 12): a tenant pinned to version 2 serves it while the others serve
version 1; `upgrade` restores in a shadow worker first, and a version whose schema upgrade
raises leaves the tenant on its version, serving, with the traceback printed.

The versions are copies of the demo app in folders of their own (DESIGN.md: directories on
sys.path, the same interpreter): v1 as shipped, v2 with app_version 2.0, v3 with schema 2
whose upgrade from schema 1 raises."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from switchboard.errors import UnknownTenant
from switchboard.table import SqliteDirectory
from tests.conftest import ROOT, SWITCHBOARD, Router

MakeRouter = Callable[..., Router]
BROKEN_UPGRADE = '''
app.schema_version = 2


@app.upgrade(1)
def _refuse_schema_1(state):
    raise RuntimeError("v3 cannot read schema 1: refused on purpose")
'''


def make_version(root: Path, name: str, patch: Callable[[str], str]) -> Path:
    folder = root / name
    shutil.copytree(ROOT / "examples", folder / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = folder / "examples" / "dabble" / "__init__.py"
    init.write_text(patch(init.read_text()))
    return folder


@pytest.fixture
def versions(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "versions"
    return {
        "v1": make_version(root, "v1", lambda text: text),
        "v2": make_version(root, "v2", lambda text: text.replace('APP_VERSION = "1.0"',
                                                                  'APP_VERSION = "2.0"')),
        "v3": make_version(root, "v3", lambda text: text + BROKEN_UPGRADE),
    }


def worker(router: Router, tenant: str) -> dict[str, object]:
    with router.client() as client:
        response = client.get(f"/t/{tenant}/api/worker")
        assert response.status_code == 200, response.text
        answer: dict[str, object] = response.json()
        return answer


def add(router: Router, tenant: str, name: str) -> None:
    with router.client() as client:
        response = client.post(f"/t/{tenant}/api/tables/people/records", json={"name": name})
        assert response.status_code == 201, response.text


def names(router: Router, tenant: str) -> list[str]:
    with router.client() as client:
        records = client.get(f"/t/{tenant}/api/tables/people/records").json()["records"]
        return [r["fields"]["name"] for r in records]


@pytest.mark.slow
def test_pinned_tenant_serves_its_version_and_a_failing_upgrade_leaves_it_serving(
    make_router: MakeRouter, versions: dict[str, Path],
) -> None:
    spec = ",".join(f"{name}={path}" for name, path in versions.items())
    router = make_router(env={"SWITCHBOARD_CODE_VERSIONS": spec,
                              "SWITCHBOARD_DEFAULT_CODE_VERSION": "v1"}).start()
    router.create("acme", "beta")
    add(router, "acme", "ada")
    add(router, "beta", "bea")

    pinned = router.cli("pin", "acme", "v2")
    assert pinned.stdout == "acme: v2 (running)\n"
    assert (worker(router, "acme")["code_version"], worker(router, "acme")["app_version"]) == (
        "v2", "2.0")
    assert (worker(router, "beta")["code_version"], worker(router, "beta")["app_version"]) == (
        "v1", "1.0")
    listed = {row["name"]: row["code_version"] for row in router.ls()}
    assert listed == {"acme": "v2", "beta": "v1"}
    header, *rows = router.cli("ls").stdout.splitlines()
    assert header.split()[-1] == "VERSION" and rows[0].split()[-1] == "v2"
    assert names(router, "acme") == ["ada"]
    status = router.cli("status", "acme").stdout.splitlines()
    assert [line.split()[-1] for line in status if line.startswith("code version")] == ["v2"]

    # v3's schema upgrade raises: the shadow restore fails, acme stays on v2 and serves.
    router.cli("checkpoint", "acme")  # a snapshot at schema 1 for v3 to upgrade
    pid = worker(router, "acme")["pid"]
    failed = router.cli("upgrade", "acme", "--to", "v3", check=False, timeout=120)
    assert failed.returncode == 1
    assert "Traceback" in failed.stderr
    assert "RuntimeError: v3 cannot read schema 1: refused on purpose" in failed.stderr
    assert "shadow restore on v3 failed" in failed.stderr
    after = worker(router, "acme")
    assert (after["code_version"], after["pid"]) == ("v2", pid)  # never stopped
    add(router, "acme", "amy")
    assert names(router, "acme") == ["ada", "amy"]

    # A good upgrade: beta to v2, its data kept.
    upgraded = router.cli("upgrade", "beta", "--to", "v2", timeout=120)
    assert upgraded.stdout == "beta: v1 -> v2\n"
    assert worker(router, "beta")["code_version"] == "v2"
    assert names(router, "beta") == ["bea"]

    # Unpinned, acme is back on the default; then --all moves the rest with a summary.
    assert router.cli("unpin", "acme").stdout == "acme: v1 (running)\n"
    assert worker(router, "acme")["code_version"] == "v1"
    every = router.cli("upgrade", "--all", "--to", "v2", "--json", timeout=180)
    summary = json.loads(every.stdout)
    assert (summary["upgraded"], summary["failed"], summary["already"]) == (["acme"], {}, 1)
    assert worker(router, "acme")["code_version"] == "v2"
    assert names(router, "acme") == ["ada", "amy"]
    # The pin is in the tenant table: it survives a restart of the router.
    router.stop()
    router.start()
    assert {row["name"]: row["code_version"] for row in router.ls()} == {
        "acme": "v2", "beta": "v2"}


def test_bad_versions_and_tenants_are_clear_errors(
    make_router: MakeRouter, versions: dict[str, Path],
) -> None:
    router = make_router(env={"SWITCHBOARD_CODE_VERSIONS": f"v2={versions['v2']}"}).start()
    router.create("acme")
    unknown = router.cli("pin", "acme", "v9", check=False)
    assert unknown.returncode == 1
    assert "unknown code version 'v9'; configured: v2" in unknown.stderr
    assert router.cli("upgrade", "acme", "--to", "v9", check=False).returncode == 1
    missing = router.cli("pin", "nosuch", "v2", check=False)
    assert missing.returncode == 1 and "nosuch" in missing.stderr
    missing = router.cli("upgrade", "nosuch", "--to", "v2", check=False)
    assert missing.returncode == 1 and "nosuch" in missing.stderr
    usage = router.cli("upgrade", "--to", "v2", check=False)
    assert usage.returncode == 2  # neither NAME nor --all
    # Not pinned, no default: the app as installed, no version name.
    assert router.ls()[0]["code_version"] is None
    wrong_default = router.cli("config", "show", check=False)
    assert wrong_default.returncode == 0
    env = dict(router.env(), SWITCHBOARD_DEFAULT_CODE_VERSION="v7")
    refused = subprocess.run([str(SWITCHBOARD), "config", "show"], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=60)
    assert refused.returncode == 1
    assert "default_code_version 'v7' is not one of code_versions (v2)" in refused.stderr


@pytest.mark.anyio
async def test_a_tenant_table_without_the_pin_column_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "tenants.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tenants (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
               "creation_id TEXT NOT NULL, epoch INTEGER NOT NULL DEFAULT 1, "
               "created_at REAL NOT NULL, port INTEGER UNIQUE, app TEXT, code_path TEXT, "
               "owner TEXT, moved_to TEXT)")
    db.execute("INSERT INTO tenants (name, creation_id, created_at) VALUES ('acme', 'c1', 1.0)")
    db.commit()
    db.close()
    directory = SqliteDirectory(path)
    try:
        record = await directory.get("acme")
        assert (record.name, record.creation_id, record.code_version) == ("acme", "c1", None)
        assert (await directory.set_code_version("acme", "v2")).code_version == "v2"
        assert (await directory.set_code_version("acme", None)).code_version is None
        with pytest.raises(UnknownTenant):
            await directory.set_code_version("nosuch", "v2")
    finally:
        directory.close()
