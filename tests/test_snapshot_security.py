"""Issue 17, "a snapshot file can run code": the attacks, for real, and what they get now.

The attacker can write files in the data dir (as the service user, or through a restored
backup) but does not have `<data-dir>/snapshot.key`. Every attack below plants real files in a
real data dir; the router tests run a real `switchboard serve` and real workers, and check what
an operator sees (the request's answer, the router's log, `switchboard snapshot verify`) and
that no planted code ran (its marker file is absent).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ops.cli import main as cli_main
from snapshots.codec import MsgpackCodec, PickleCodec
from snapshots.errors import NoValidSnapshot, SnapshotNotSigned
from snapshots.exportfile import encode_export, raw_limit
from snapshots.format import MAGIC, authenticate, encode, make_header, read_header
from snapshots.inspect import check
from snapshots.mac import RECORD_MAC_BYTES, WriterIdentity, load_key
from snapshots.store import LocalStore
from tenant.app import TenantApp
from tenant.errors import JournalCorrupt
from tenant.journal_format import (
    JournalSigning,
    create_segment,
    frame_record,
    new_segment,
    prepare_record,
    read_records,
)
from tenant.recovery import recover_state
from tests.conftest import COUNTER, ROOT, Router, wait_until

KEY = b"this-deployment's-snapshot-key"
OTHER_KEY = b"another-deployment's-key"
OURS = WriterIdentity(key=KEY)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "snapshots"
CODEC = MsgpackCodec()


class RunsCode:
    """Unpickling this runs `touch MARKER` through os.system: the attacker's payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(RunsCode(marker), protocol=5)


def planted(path: Path, payload: bytes, *, tenant: str = "acme", generation: int = 99,
            codec: str = "pickle", journal_pos: int = 0,
            identity: WriterIdentity | None = None) -> Path:
    """Write a snapshot file as an attacker would: our own writer, their key (or none)."""
    header = make_header(tenant, generation, codec, "1", 1, journal_pos, payload,
                         identity=identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(header, payload))
    return path


def v1_file(tenant: str, generation: int, codec: str, payload: bytes,
            journal_pos: int = 0) -> bytes:
    """A format 1 file, built by hand from snapshots/format.py's documented layout (this
    code writes format 2 only): what an existing data dir holds."""
    fields = {"tenant": tenant, "generation": generation, "codec": codec, "app_version": "0",
              "schema_version": 1, "journal_pos": journal_pos, "payload_length": len(payload),
              "checksum": "blake2b-256:" + hashlib.blake2b(
                  payload, digest_size=32).hexdigest(),
              "created_at": 1.7e9, "index": None}
    packed = msgpack.packb(fields, use_bin_type=True)
    head = MAGIC + struct.pack(">HI", 1, len(packed)) + packed
    return head + struct.pack(">I", zlib.crc32(head)) + payload


# --- the MAC: what it covers ------------------------------------------------------------------


def reseal(blob: bytes, change: Callable[[dict[str, Any]], None], payload: bytes | None = None
           ) -> bytes:
    """The file with its header fields changed and its CRC recomputed (and the payload
    swapped, checksum updated): everything an attacker can redo without the key."""
    length = struct.unpack(">I", blob[10:14])[0]
    fields = msgpack.unpackb(blob[14:14 + length], raw=False)
    body = blob[18 + length:] if payload is None else payload
    if payload is not None:
        fields["payload_length"] = len(payload)
        fields["checksum"] = "blake2b-256:" + hashlib.blake2b(
            payload, digest_size=32).hexdigest()
    change(fields)  # in place: a changed value keeps its key's place (the mac stays last)
    packed = msgpack.packb(fields, use_bin_type=True)
    head = blob[:10] + struct.pack(">I", len(packed)) + packed
    return head + struct.pack(">I", zlib.crc32(head)) + body


@pytest.mark.parametrize(("field", "value"), [
    ("tenant", "other"), ("generation", 100), ("codec", "pickle"), ("app_version", "9"),
    ("schema_version", 2), ("journal_pos", 0), ("created_at", 1.0), ("epoch", 2),
    ("creation_id", "x"), ("index", []),
])
def test_the_mac_covers_every_header_field(tmp_path: Path, field: str, value: Any) -> None:
    payload = CODEC.dumps({"n": 1})
    header = make_header("acme", 3, "msgpack", "1", 1, 5, payload, identity=OURS)
    good = encode(header, payload)
    path = tmp_path / "a.snap"
    path.write_bytes(good)
    assert check(path, KEY).summary == "OK (signed)"
    if field == "index":
        value = [{"name": "x", "offset": 0, "length": 1, "checksum": header.checksum,
                  "codec": "msgpack"}]
    path.write_bytes(reseal(good, lambda f: f.__setitem__(field, value)))
    with open(path, "rb") as f:
        changed = read_header(f, source=str(path))  # the CRC holds: not "corrupt"
    with pytest.raises(SnapshotNotSigned, match="not signed by this deployment"):
        authenticate(changed, KEY, str(path))
    assert check(path, KEY).status == "not_signed"


def test_the_mac_covers_the_payload_through_its_checksum(tmp_path: Path) -> None:
    payload = CODEC.dumps({"n": 1})
    good = encode(make_header("acme", 3, "msgpack", "1", 1, 5, payload, identity=OURS), payload)
    path = tmp_path / "a.snap"
    path.write_bytes(reseal(good, lambda f: None, payload=CODEC.dumps({"n": 2})))
    assert check(path, KEY).status == "not_signed"  # a new checksum needs a new MAC
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert check(path, KEY).status == "corrupt"  # the old checksum no longer matches


def test_a_mac_that_is_not_the_last_entry_or_is_dropped(tmp_path: Path) -> None:
    payload = CODEC.dumps({"n": 1})
    good = encode(make_header("acme", 3, "msgpack", "1", 1, 5, payload, identity=OURS), payload)
    path = tmp_path / "a.snap"

    def mac_first(fields: dict[str, Any]) -> None:
        rest = {k: v for k, v in fields.items() if k != "mac"}
        mac = fields["mac"]
        fields.clear()
        fields.update({"mac": mac, **rest})

    path.write_bytes(reseal(good, mac_first))
    assert check(path, KEY).status == "corrupt"
    # Dropping the MAC makes the file unsigned: fine for msgpack, which runs no code...
    path.write_bytes(reseal(good, lambda f: f.pop("mac")))
    assert check(path, KEY).summary == "OK (unsigned)"
    # ...but a store that has signed generations refuses it as planted (below).


# --- the restore policy, row by row (snapshots/store.py) ---------------------------------------


def store(tmp_path: Path, **kw: Any) -> LocalStore:
    return LocalStore.in_data_dir(tmp_path / "data", identity=kw.pop("identity", OURS), **kw)


def save(s: LocalStore, state: Any, codec: str = "msgpack") -> Path:
    payload = (PickleCodec() if codec == "pickle" else CODEC).dumps(state)
    return s.save("acme", payload, codec=codec, app_version="1", schema_version=1,
                  journal_pos=0).path


def test_policy_signed_files_load_and_foreign_ones_fall_back(tmp_path: Path) -> None:
    ours = store(tmp_path)
    save(ours, {"n": 1})
    loaded = ours.load_newest_valid_state("acme", codec="msgpack")
    assert loaded is not None and loaded.signed and loaded.state == {"n": 1}
    planted(ours.path_for("acme", 2), CODEC.dumps({"n": "theirs"}), codec="msgpack",
            identity=WriterIdentity(key=OTHER_KEY))
    loaded = ours.load_newest_valid_state("acme", codec="msgpack")
    assert loaded is not None and loaded.state == {"n": 1}
    assert "refused: not signed by this deployment: its MAC does not verify" in \
        loaded.skipped[0][1]
    # A store without the key trusts no signed file at all: it never serves empty over them.
    with pytest.raises(NoValidSnapshot, match="no snapshot key to check it with"):
        store(tmp_path, identity=WriterIdentity()).load_newest_valid_state("acme")


def test_policy_only_the_declared_codec(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    ours = store(tmp_path)
    save(ours, {"n": 1})
    # Even signed by this very key (a pickle app's file copied in, say): a msgpack app
    # never unpickles.
    planted(ours.path_for("acme", 2), evil_pickle(marker), identity=OURS)
    loaded = ours.load_newest_valid_state("acme", codec="msgpack")
    assert loaded is not None and loaded.state == {"n": 1}
    assert loaded.skipped[0][1] == "refused: codec pickle but the app declares msgpack"
    assert not marker.exists()


def test_policy_unsigned_msgpack_loads_unsigned_pickle_needs_allow_unsigned(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "code-ran"
    ours = store(tmp_path)
    ours.snapshot_dir("acme").mkdir(parents=True)
    ours.path_for("acme", 1).write_bytes(v1_file("acme", 1, "msgpack", CODEC.dumps({"n": 1})))
    loaded = ours.load_newest_valid_state("acme", codec="msgpack")
    assert loaded is not None and not loaded.signed and loaded.state == {"n": 1}

    pickled = store(tmp_path / "p")
    pickled.snapshot_dir("acme").mkdir(parents=True)
    pickled.path_for("acme", 1).write_bytes(v1_file("acme", 1, "pickle", evil_pickle(marker)))
    with pytest.raises(NoValidSnapshot, match="an unsigned pickle snapshot would run code"):
        pickled.load_newest_valid_state("acme", codec="pickle")
    assert not marker.exists()
    # The operator's explicit word (--allow-unsigned) and only that loads it, code and all.
    trusting = store(tmp_path / "p", allow_unsigned=True)
    trusting.load_newest_valid_state("acme", codec="pickle")
    assert marker.exists()


def test_policy_an_unsigned_file_newer_than_a_signed_one_is_planted(tmp_path: Path) -> None:
    ours = store(tmp_path)
    save(ours, {"n": 1})
    # Valid msgpack, no code: a data injection. A keyed writer never goes back to unsigned.
    planted(ours.path_for("acme", 2), CODEC.dumps({"n": "injected"}), codec="msgpack")
    ours.path_for("acme", 3).write_bytes(v1_file("acme", 3, "msgpack", b"\xc1"))  # and a DoS
    loaded = ours.load_newest_valid_state("acme", codec="msgpack")
    assert loaded is not None and loaded.state == {"n": 1}
    assert [reason.split(":")[0:2] for _, reason in loaded.skipped] == \
        [["refused", " not signed by this deployment"]] * 2
    assert "older generation 1 is signed" in loaded.skipped[0][1]


def test_policy_every_generation_refused_is_no_valid_snapshot(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    ours = store(tmp_path)
    planted(ours.path_for("acme", 1), evil_pickle(marker), identity=WriterIdentity(key=OTHER_KEY))
    planted(ours.path_for("acme", 2), evil_pickle(marker))
    with pytest.raises(NoValidSnapshot, match="2 snapshot file"):
        ours.load_newest_valid_state("acme", codec="pickle")
    assert not marker.exists()


def test_an_unsigned_v1_fixture_restores_and_is_marked_for_a_signed_rewrite(
    tmp_path: Path,
) -> None:
    ours = LocalStore.in_data_dir(tmp_path, identity=OURS)
    ours.snapshot_dir("compat-fixture").mkdir(parents=True)
    (ours.snapshot_dir("compat-fixture") / f"{1:012d}.snap").write_bytes(
        (FIXTURES / "v1-msgpack.snap").read_bytes())
    app = TenantApp(name="any", initial_state=dict)
    recovered = recover_state(app, ours, "compat-fixture")
    assert recovered.state["format"] == "switchboard snapshot compatibility fixture"
    assert recovered.rewritten and recovered.journal_pos == 42
    assert any("is not signed" in w and "writes it signed" in w for w in recovered.warnings)


# --- journals ---------------------------------------------------------------------------------


SIGNING = JournalSigning("acme", OURS)


def signed_journal(directory: Path, count: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    start = new_segment(1, SIGNING)
    fd, path = create_segment(directory, 1, start=start)
    try:
        for seq in range(1, count + 1):
            os.write(fd, frame_record(seq, prepare_record("put", {"n": seq}, 1.0), start.signer))
    finally:
        os.close(fd)
    return path


def forged_record(seq: int, name: str, args: dict[str, Any]) -> bytes:
    """A version 2 record frame with a valid CRC and a MAC made up without the key."""
    payload = msgpack.packb([seq, 1.7e9, name, args], use_bin_type=True)
    mac = os.urandom(RECORD_MAC_BYTES)
    return struct.pack(">II", len(payload), zlib.crc32(payload, zlib.crc32(mac))) + mac + payload


def test_a_planted_record_at_the_end_is_dropped_and_reported(tmp_path: Path) -> None:
    path = signed_journal(tmp_path / "j", 3)
    with open(path, "ab") as f:
        f.write(forged_record(4, "put", {"n": "planted"}))
    replay = read_records(tmp_path / "j", 0, signing=SIGNING)
    assert [r.args["n"] for r in replay.records] == [1, 2, 3]
    assert replay.torn_tail is not None and replay.torn_tail_forged


def test_a_planted_record_in_the_middle_stops_the_replay(tmp_path: Path) -> None:
    path = signed_journal(tmp_path / "j", 3)
    data = path.read_bytes()
    # Replace record 2 by a forged one of the same seq: what follows is real, so this is not
    # a torn tail but tampering.
    first_end = len(new_segment(1, SIGNING).data)  # same header length
    frame = struct.Struct(f">II{RECORD_MAC_BYTES}s")
    one = frame.size + struct.unpack_from(">I", data, first_end)[0]
    two = frame.size + struct.unpack_from(">I", data, first_end + one)[0]
    tampered = (data[:first_end + one] + forged_record(2, "put", {"n": "x"})
                + data[first_end + one + two:])
    path.write_bytes(tampered)
    with pytest.raises(JournalCorrupt, match="not signed by this deployment record at offset"):
        read_records(tmp_path / "j", 0, signing=SIGNING)


def test_a_planted_unsigned_segment_is_refused(tmp_path: Path) -> None:
    signed_journal(tmp_path / "j", 3)
    fd, _ = create_segment(tmp_path / "j", 4)  # version 1: no key
    os.write(fd, frame_record(4, prepare_record("put", {"n": "planted"}, 1.0)))
    os.close(fd)
    with pytest.raises(JournalCorrupt, match=r"unsigned .* after the signed segment"):
        read_records(tmp_path / "j", 0, signing=SIGNING)
    # Alone (the signed ones pruned) it still is refused after a signed snapshot.
    (tmp_path / "j" / f"{1:020d}.journal").unlink()
    strict = dataclasses.replace(SIGNING, accept_unsigned=False)
    with pytest.raises(JournalCorrupt, match="unsigned"):
        read_records(tmp_path / "j", 3, signing=strict)


# --- export files: bounded input ---------------------------------------------------------------

IMPORT_WITH_RSS = textwrap.dedent("""
    import resource, sys
    from tenant.export import main
    code = main(sys.argv[1:])
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
    sys.exit(code)
""")


def run_import(tmp_path: Path, export: Path) -> tuple[int, str, int]:
    """`python -m tenant.export import` as the router runs it: exit status, last error line,
    and the process's peak RSS in KiB."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_WITH_RSS, "import", str(export), "--data-dir",
         str(tmp_path / "data"), "--tenant", "victim", "--app", "examples.dabble:app"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = done.stderr.strip().splitlines()
    peak = int(next(line.split()[1] for line in lines if line.startswith("MAXRSS_KB")))
    errors = [line for line in lines if not line.startswith("MAXRSS_KB")]
    return done.returncode, errors[-1] if errors else "", peak


def export_file(path: Path, packed: bytes, raw_length: int) -> Path:
    """An export whose data is `packed`, its header claiming `raw_length`, checksums right."""
    header, _ = encode_export({}, tenant="acme", app="examples.dabble:app", app_version="1",
                              schema_version=1, journal_pos=0, generation=None)
    fields = header.to_json() | {"data_length": len(packed), "raw_length": raw_length,
                                 "data_sha256": hashlib.sha256(packed).hexdigest()}
    text = json.dumps(fields).encode()
    head = b"SBEXPT\r\n" + struct.pack(">I", len(text)) + text
    path.write_bytes(head + struct.pack(">I", zlib.crc32(head)) + packed)
    return path


@pytest.fixture(scope="module")
def zlib_bomb() -> tuple[bytes, int]:
    """~1 MB of zlib that inflates to 1 GiB of zeros, made without holding the 1 GiB."""
    compressor = zlib.compressobj(9)
    chunk = bytes(16 * 1024 * 1024)
    packed = b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()
    return packed, 64 * len(chunk)


@pytest.mark.parametrize("claims", ["the truth", "a small size"])
def test_a_zlib_bomb_import_fails_fast_in_bounded_memory(
    tmp_path: Path, zlib_bomb: tuple[bytes, int], claims: str,
) -> None:
    packed, inflated = zlib_bomb
    assert len(packed) < 1.1 * 1024 * 1024 and inflated == 1024**3
    raw_length = inflated if claims == "the truth" else 1000
    bomb = export_file(tmp_path / "bomb.sbexport", packed, raw_length)
    _, tiny = encode_export({"tables": {}}, tenant="acme", app="examples.dabble:app",
                            app_version="1", schema_version=1, journal_pos=0, generation=None)
    (tmp_path / "tiny.sbexport").write_bytes(tiny)
    code, error, baseline = run_import(tmp_path / "baseline", tmp_path / "tiny.sbexport")
    assert code == 0, error
    code, error, peak = run_import(tmp_path, bomb)
    assert code == 1
    if claims == "the truth":  # refused from the header, before any byte is inflated
        assert "zlib bomb" in error and str(raw_limit(len(packed))) in error
    else:  # the header lies: inflating stops just past what it claimed
        assert "inflates past the 1000 bytes its header says" in error
    # Before: the import grew to 2.1 GB. Now at most the compressed file (read whole) over
    # what importing a one-byte export costs.
    assert peak - baseline < 16 * 1024, (peak, baseline)
    assert not (tmp_path / "data" / "tenants" / "victim" / "snapshots").exists()


def test_deeply_nested_tuples_fail_import_cleanly(tmp_path: Path) -> None:
    raw = b"\x90"
    for _ in range(5000):  # used to segfault the CLI import
        raw = msgpack.packb([msgpack.ExtType(9, raw)])
    deep = export_file(tmp_path / "deep.sbexport", zlib.compress(raw), len(raw))
    code, error, _ = run_import(tmp_path, deep)
    assert code == 1 and "nested more than 32 deep" in error
    cli = subprocess.run([str(ROOT / ".venv" / "bin" / "switchboard"), "import", str(deep)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert cli.returncode == 1 and "nested more than 32 deep" in cli.stderr  # not -11


# --- snapshot verify: one status a file --------------------------------------------------------


def test_snapshot_verify_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "snapshot.key"
    key_file.write_bytes(b"  " + KEY + b"\n")  # stripped, as the admin key is
    assert load_key(key_file) == KEY
    folder = tmp_path / "files"
    payload = CODEC.dumps({"n": 1})
    planted(folder / "a-signed.snap", payload, codec="msgpack", identity=OURS)
    (folder / "b-unsigned.snap").write_bytes(v1_file("acme", 1, "msgpack", payload))
    planted(folder / "c-foreign.snap", payload, codec="msgpack",
            identity=WriterIdentity(key=OTHER_KEY))
    planted(folder / "d-pickle.snap", evil_pickle(tmp_path / "never"))
    damaged = bytearray(encode(make_header("acme", 1, "msgpack", "1", 1, 0, payload,
                                           identity=OURS), payload))
    damaged[-1] ^= 0xFF
    (folder / "e-damaged.snap").write_bytes(bytes(damaged))

    code = cli_main(["snapshot", "verify", str(folder), "--snapshot-key-file", str(key_file)])
    out = capsys.readouterr()
    assert code == 1 and "3 of 5 snapshot files failed verification" in out.err
    a, b, c, d, e = out.out.splitlines()
    assert a == f"OK (signed) {folder / 'a-signed.snap'}"
    assert b == f"OK (unsigned) {folder / 'b-unsigned.snap'}"
    assert c == (f"BAD {folder / 'c-foreign.snap'}: not signed by this deployment: its MAC "
                 "does not verify under this deployment's snapshot key")
    assert d.startswith(f"BAD {folder / 'd-pickle.snap'}: not signed by this deployment: an "
                        "unsigned pickle snapshot")
    assert e.startswith(f"BAD {folder / 'e-damaged.snap'}: corrupt: payload checksum mismatch")
    assert not (tmp_path / "never").exists()

    # The key from the environment, and only OK files: exit 0.
    for bad in ("c-foreign", "d-pickle", "e-damaged"):
        (folder / f"{bad}.snap").unlink()
    os.environ["SWITCHBOARD_SNAPSHOT_KEY_FILE"] = str(key_file)
    try:
        assert cli_main(["snapshot", "verify", str(folder)]) == 0
    finally:
        del os.environ["SWITCHBOARD_SNAPSHOT_KEY_FILE"]
    assert capsys.readouterr().out.splitlines() == [
        f"OK (signed) {folder / 'a-signed.snap'}", f"OK (unsigned) {folder / 'b-unsigned.snap'}"]
    # A key file named but missing is an error, not "unsigned".
    assert cli_main(["snapshot", "verify", str(folder), "--snapshot-key-file",
                     str(tmp_path / "nope.key")]) == 1
    assert "no snapshot key at" in capsys.readouterr().err


# --- against a real router --------------------------------------------------------------------


def records_of(client: Any, tenant: str) -> list[dict[str, Any]]:
    response = client.get(f"/t/{tenant}/api/tables/people/records?limit=100")
    assert response.status_code == 200, response.text
    return [r["fields"] for r in response.json()["records"]]


def newest_journal_pos(data_dir: Path, tenant: str) -> int:
    newest = LocalStore.in_data_dir(data_dir).generations(tenant)[0]
    assert newest.header is not None
    return newest.header.journal_pos


@pytest.mark.slow
def test_planted_pickle_snapshot_in_a_msgpack_app_runs_no_code(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    """The finding as reported: a generation-99 pickle snapshot planted in tenants/acme/
    snapshots/ ran os.system as the service user on the next request."""
    router = make_router().start()
    router.create("acme")
    with router.client() as client:
        for n in range(3):
            assert client.post("/t/acme/api/tables/people/records",
                               json={"n": n}).status_code == 201
        router.cli("stop", "acme")  # the final checkpoint writes the newest valid generation
        snapshots = router.data_dir / "tenants" / "acme" / "snapshots"
        valid = sorted(snapshots.glob("*.snap"))  # (not the segment files they name)
        marker = tmp_path / "MARKER"
        evil = planted(snapshots / f"{99:012d}.snap", evil_pickle(marker))
        # And an unsigned msgpack one, valid data: an injection that runs no code.
        injected = planted(snapshots / f"{98:012d}.snap", MsgpackCodec().dumps(
            {"tables": {}, "sessions": {}}), codec="msgpack")

        assert records_of(client, "acme") == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert not marker.exists()
    log = router.log()
    assert f"snapshot {evil} refused: codec pickle but the app declares msgpack" in log
    assert f"snapshot {injected} refused: not signed by this deployment" in log
    verify = router.cli("snapshot", "verify", "acme", check=False)
    assert verify.returncode == 1
    assert (f"BAD {evil}: not signed by this deployment: an unsigned pickle snapshot"
            in verify.stdout)
    # Unsigned msgpack, alone, would be OK; among signed generations it is planted.
    assert (f"BAD {injected}: not signed by this deployment: unsigned, yet the older "
            f"{valid[-1]} is signed" in verify.stdout)
    assert f"OK (unsigned) {injected}" in router.cli("snapshot", "verify", str(injected)).stdout
    for path in valid:
        assert f"OK (signed) {path}" in verify.stdout
    assert not marker.exists()


@pytest.mark.slow
def test_pickle_app_refuses_a_snapshot_signed_with_another_key(
    make_router: Callable[..., Router], tmp_path: Path,
) -> None:
    router = make_router(app="tests.apps.pickled:app").start()
    router.create("acme")
    marker = tmp_path / "MARKER"
    with router.client() as client:
        for text in ("one", "two"):
            assert client.post("/t/acme/notes", json={"text": text}).status_code == 201
        router.cli("stop", "acme")
        snapshots = router.data_dir / "tenants" / "acme" / "snapshots"
        evil = planted(snapshots / f"{99:012d}.snap", evil_pickle(marker),
                       identity=WriterIdentity(key=OTHER_KEY))
        # Its own pickle snapshots, signed with this deployment's key, do restore.
        response = client.get("/t/acme/notes")
        assert response.status_code == 200 and response.json()["notes"] == ["one", "two"]
    assert not marker.exists()
    assert (f"snapshot {evil} refused: not signed by this deployment: its MAC does not verify"
            in router.log())
    verify = router.cli("snapshot", "verify", "acme", check=False)
    assert verify.returncode == 1
    assert f"BAD {evil}: not signed by this deployment" in verify.stdout


@pytest.mark.slow
def test_unsigned_v1_snapshot_restores_and_the_next_checkpoint_signs_it(
    make_router: Callable[..., Router],
) -> None:
    router = make_router(app=COUNTER).start()
    router.create("acme")
    snapshots = router.data_dir / "tenants" / "acme" / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    v1 = snapshots / f"{1:012d}.snap"
    v1.write_bytes(v1_file("acme", 1, "msgpack", MsgpackCodec().dumps({"count": 41})))
    with router.client() as client:
        assert client.get("/t/acme/count").json()["count"] == 41
        router.cli("stop", "acme")  # nothing changed, yet it checkpoints: to sign the state
        signed = snapshots / f"{2:012d}.snap"
        assert signed.exists()
        verify = router.cli("snapshot", "verify", "acme")
        assert verify.stdout.splitlines() == [f"OK (unsigned) {v1}", f"OK (signed) {signed}"]
        with open(signed, "rb") as f:
            header = read_header(f, source=str(signed))
        assert header.format_version == 2 and header.signed and header.epoch == 1
        assert authenticate(header, load_key(router.data_dir / "snapshot.key"), str(signed))
        assert client.post("/t/acme/add", json={"amount": 1}).json()["count"] == 42
    assert "is not signed (format 1, codec msgpack): restored it, and the next checkpoint " \
           "writes it signed" in router.log()


@pytest.mark.slow
def test_a_planted_journal_record_is_not_replayed(make_router: Callable[..., Router]) -> None:
    router = make_router().start()
    router.create("acme")
    with router.client() as client:
        assert client.post("/t/acme/api/tables/people/records",
                           json={"name": "real"}).status_code == 201
        router.cli("stop", "acme")
        journal = router.data_dir / "tenants" / "acme" / "journal"
        pos = newest_journal_pos(router.data_dir, "acme")
        segment = journal / f"{pos + 1:020d}.journal"  # the segment the next write goes to
        assert segment.exists()
        with open(segment, "ab") as f:
            f.write(forged_record(pos + 1, "create_record",
                                  {"table": "people", "fields": {"name": "planted"}}))
        assert records_of(client, "acme") == [{"name": "real"}]
        # The next write takes the seq the planted record claimed, and is the one kept.
        assert client.post("/t/acme/api/tables/people/records",
                           json={"name": "after"}).status_code == 201
        router.cli("stop", "acme")
        assert records_of(client, "acme") == [{"name": "real"}, {"name": "after"}]
    wait_until(lambda: "not signed by this deployment" in router.log(), 10,
               "the router's log line about the planted record")
    assert f"dropped a journal record at the end of {segment}" in router.log()
