"""`switchboard snapshot verify`, `switchboard export` and `switchboard import`, for real: a real
router, real workers, the CLI as an operator runs it. Plus the export file format itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapshots.errors import ExportFileError
from snapshots.exportfile import encode_export, read_export
from tests.conftest import Router

# ---- the export file format ---------------------------------------------------------------------


def sample_export(**overrides: Any) -> bytes:
    fields: dict[str, Any] = dict(tenant="acme", app="examples.dabble:app", app_version="1.0",
                                  schema_version=1, journal_pos=42, generation=3)
    fields.update(overrides)
    data = {"tables": {"people": {"records": {1: {"name": "Ann"}}}}, "tags": {"b", "a"}}
    _, blob = encode_export(data, **fields)
    return blob


def test_an_export_file_round_trips_and_describes_itself() -> None:
    blob = sample_export()
    header, data = read_export(blob)
    assert data == {"tables": {"people": {"records": {1: {"name": "Ann"}}}}, "tags": {"a", "b"}}
    assert (header.format, header.version, header.encoding) == ("switchboard-export", 1,
                                                                "msgpack+zlib")
    assert (header.tenant, header.journal_pos, header.generation) == ("acme", 42, 3)
    # The header is plain JSON right after the magic and length: readable without this code.
    length = int.from_bytes(blob[8:12], "big")
    assert json.loads(blob[12:12 + length])["tenant"] == "acme"


def test_every_flipped_byte_of_an_export_file_is_detected() -> None:
    blob = sample_export()
    for offset in range(len(blob)):
        damaged = bytearray(blob)
        damaged[offset] ^= 0x01
        with pytest.raises(ExportFileError):
            read_export(bytes(damaged))
    for cut in (0, 5, 12, 40, len(blob) - 1):
        with pytest.raises(ExportFileError):
            read_export(blob[:cut])
    with pytest.raises(ExportFileError, match="the file has"):
        read_export(blob + b"\0")


def test_a_newer_export_format_is_refused_clearly() -> None:
    blob = bytearray(sample_export())
    length = int.from_bytes(blob[8:12], "big")
    header = json.loads(blob[12:12 + length])
    header["version"] = 2
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    import zlib

    head = bytes(blob[:8]) + len(text).to_bytes(4, "big") + text
    newer = head + zlib.crc32(head).to_bytes(4, "big") + bytes(blob[16 + length:])
    with pytest.raises(ExportFileError, match="version 2 is newer than this code reads"):
        read_export(newer)


# ---- through a real router ----------------------------------------------------------------------


def add(client: httpx.Client, tenant: str, table: str, fields: dict[str, Any]) -> None:
    response = client.post(f"/t/{tenant}/api/tables/{table}/records", json=fields)
    assert response.status_code == 201, response.text


def everything(client: httpx.Client, tenant: str) -> dict[str, list[dict[str, Any]]]:
    """Every record of every table, as the HTTP API shows them."""
    tables = client.get(f"/t/{tenant}/api/tables").json()["tables"]
    out = {}
    for table in tables:
        response = client.get(f"/t/{tenant}/api/tables/{table['name']}/records?limit=1000")
        assert response.status_code == 200, response.text
        out[table["name"]] = response.json()["records"]
    return out


@pytest.mark.slow
def test_snapshot_verify_exits_1_on_a_damaged_file_and_0_on_a_good_one(
    make_router: Callable[..., Router],
) -> None:
    router = make_router().start()
    router.create("acme")
    with router.client() as client:
        for i in range(20):
            add(client, "acme", "people", {"n": i, "name": f"person {i}"})
    assert router.cli("checkpoint", "acme").stdout.strip() == "1"
    path = router.data_dir / "tenants" / "acme" / "snapshots" / f"{1:012d}.snap"
    for target in (str(path), "acme"):
        good = router.cli("snapshot", "verify", target, check=False)
        assert good.returncode == 0, good.stderr
        assert good.stdout.startswith("OK ")
    original = path.read_bytes()
    for offset in (3, 30, len(original) // 2, len(original) - 1):
        damaged = bytearray(original)
        damaged[offset] ^= 0x40
        path.write_bytes(bytes(damaged))
        for target in (str(path), "acme"):
            bad = router.cli("snapshot", "verify", target, check=False)
            assert bad.returncode == 1, (offset, target, bad.stdout)
            assert bad.stdout.startswith("BAD ")
            assert bad.stderr.strip() == "switchboard: error: 1 of 1 snapshot files failed " \
                                         "verification"
    path.write_bytes(original)
    assert router.cli("snapshot", "verify", "acme").returncode == 0


@pytest.mark.slow
def test_export_then_import_reproduces_every_record(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    router = make_router().start()
    router.create("src")
    with router.client() as client:
        for i in range(30):
            add(client, "src", "people", {"name": f"person {i}", "age": i, "tags": ["x", i]})
        assert router.cli("checkpoint", "src").returncode == 0
        for i in range(10):  # after the snapshot: only in the journal
            add(client, "src", "cities", {"name": f"city {i}", "pop": i * 1000})
        patched = client.patch("/t/src/api/tables/people/records/3", json={"age": None})
        assert patched.status_code == 200
        assert client.delete("/t/src/api/tables/people/records/4").status_code == 204
        before = everything(client, "src")
        assert len(before["people"]) == 29 and len(before["cities"]) == 10

        # Exported while the tenant runs: every acknowledged write is in it.
        out = tmp_path / "src.sbexport"
        exported = router.cli("export", "src", "-o", str(out), "--json")
        info = json.loads(exported.stdout)
        assert info["tenant"] == "src" and info["journal_pos"] == 42
        assert info["format"] == "switchboard-export" and out.stat().st_size == info["size"]
        _, data = read_export(out)
        assert data["tables"]["cities"]["next_id"] == 11

        assert router.cli("import", str(out), "--as", "dst").stdout.strip() == "dst"
        assert everything(client, "dst") == before
        assert router.tenant("dst")["state"] == "running"  # it started and restored the import
        # A write to the copy does not touch the original.
        add(client, "dst", "people", {"name": "only in dst"})
        assert everything(client, "src") == before

        # Importing over an existing tenant is refused, and changes nothing.
        again = router.cli("import", str(out), "--as", "dst", check=False)
        assert again.returncode == 1 and "already exists" in again.stderr
        clash = router.cli("import", str(out), check=False)  # the file's own name: src
        assert clash.returncode == 1 and "'src' already exists" in clash.stderr

        # A damaged file never reaches the server.
        damaged = tmp_path / "damaged.sbexport"
        blob = bytearray(out.read_bytes())
        blob[-10] ^= 0xFF
        damaged.write_bytes(bytes(blob))
        bad = router.cli("import", str(damaged), "--as", "other", check=False)
        assert bad.returncode == 1 and "checksum mismatch" in bad.stderr
        assert "other" not in {t["name"] for t in router.ls()}

        # Removed, then imported under its own name: as it was. A stopped tenant exports too.
        router.cli("stop", "src")
        stopped_out = tmp_path / "stopped.sbexport"
        router.cli("export", "src", "-o", str(stopped_out))
        assert read_export(stopped_out)[1] == data
        router.cli("rm", "src")
        assert router.cli("import", str(out)).stdout.strip() == "src"
        assert everything(client, "src") == before


@pytest.mark.slow
def test_export_hooks_give_a_layout_free_file_and_import_rebuilds_the_state(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    router = make_router(app="tests.apps.schema_v3:app").start()
    router.create("a")
    with router.client() as client:
        for i in range(12):
            response = client.post("/t/a/put", json={"name": f"n{i}", "qty": i,
                                                     "tags": [f"t{i % 4}", "all"]})
            assert response.status_code == 201
        before = client.get("/t/a/items").json()["items"]
        out = tmp_path / "a.sbexport"
        router.cli("export", "a", "-o", str(out))
        header, rows = read_export(out)
        assert header.schema_version == 3 and header.app == "tests.apps.schema_v3:app"
        assert rows[0] == {"name": "n0", "qty": 0, "tags": ["all", "t0"]}  # export_data's rows
        router.cli("import", str(out), "--as", "b")
        assert client.get("/t/b/items").json()["items"] == before

        # Data from a newer schema than the app knows is refused, and nothing is created.
        newer = tmp_path / "newer.sbexport"
        newer.write_bytes(encode_export(rows, tenant="a", app="x:app", app_version="9",
                                        schema_version=4, journal_pos=0, generation=None)[1])
        refused = router.cli("import", str(newer), "--as", "c", check=False)
        assert refused.returncode == 1
        assert "schema version 4" in refused.stderr and "newer app version" in refused.stderr
        assert "c" not in {t["name"] for t in router.ls()}
        assert not (router.data_dir / "tenants" / "c").exists()

        missing = router.cli("export", "nobody", "-o", str(tmp_path / "x"), check=False)
        assert missing.returncode == 1 and "no tenant named 'nobody'" in missing.stderr
