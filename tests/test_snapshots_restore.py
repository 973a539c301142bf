"""LocalStore.load_newest_valid_state: the mapped, hash-while-decoding restore path.

It must keep every guarantee of load_newest_valid + codec.loads: damage found by the
checksum falls back a generation even when the damaged bytes decoded, a pickle payload is
never unpickled before it verified, and decoding damaged msgpack stays bounded in memory.
"""

from __future__ import annotations

import gc
import pickle
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from snapshots import format as snapshot_format
from snapshots.codec import MSGPACK_UNVERIFIED_OK, MsgpackCodec, PickleCodec, get_codec
from snapshots.errors import CodecError, NoValidSnapshot, SnapshotCorrupt, UnsafeCodec
from snapshots.format import PARALLEL_VERIFY_MIN_BYTES, load_state, open_snapshot
from snapshots.mac import WriterIdentity
from snapshots.store import LocalStore

CODEC = MsgpackCodec()
# Pickle payloads are restored only from files signed by the store's key.
SIGNING = WriterIdentity(key=b"test-snapshot-key")


def big_state(tag: str, records: int = 60_000) -> dict[str, Any]:
    """Packs to well over PARALLEL_VERIFY_MIN_BYTES, so restore hashes in a thread."""
    return {"tag": tag, "records": [{"id": i, "name": f"{tag}-{i:08d}"} for i in range(records)]}


def save(store: LocalStore, payload: bytes, codec: str = "msgpack") -> Path:
    info = store.save("acme", payload, codec=codec, app_version="1", schema_version=1,
                      journal_pos=0)
    return info.path


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(data)


def payload_offset(path: Path) -> int:
    with open_snapshot(path) as snapshot:
        return snapshot.header.header_bytes


@pytest.fixture
def checksum_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the payloads hashed in a thread (the parallel path) during the test."""
    started: list[int] = []
    real = snapshot_format._ChecksumThread

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, view: memoryview) -> None:
            started.append(view.nbytes)
            super().__init__(view)

    monkeypatch.setattr(snapshot_format, "_ChecksumThread", Spy)
    yield started


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Undo the gc.freeze() a big restore does, and the GC state, after the test."""
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    yield
    if frozen == 0:
        gc.unfreeze()
    if enabled:
        gc.enable()


needs_parallel = pytest.mark.skipif(
    not MSGPACK_UNVERIFIED_OK,
    reason="msgpack < 1.2.4 preallocates unbounded lists: msgpack is verified before decoding",
)


def test_the_newest_big_state_loads_verified(
    tmp_path: Path, checksum_threads: list[int], restore_gc: None
) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, CODEC.dumps(big_state("one")))
    payload = CODEC.dumps(big_state("two"))
    assert len(payload) > PARALLEL_VERIFY_MIN_BYTES
    save(store, payload)
    frozen_before = gc.get_freeze_count()
    loaded = store.load_newest_valid_state("acme")
    assert loaded is not None
    assert loaded.header.generation == 2 and loaded.skipped == []
    assert loaded.state == big_state("two")
    assert checksum_threads == ([len(payload)] if MSGPACK_UNVERIFIED_OK else [])
    # Paused while decoding, then frozen and resumed: the next collection skips the state.
    assert gc.isenabled()
    assert gc.get_freeze_count() > frozen_before


@needs_parallel
@pytest.mark.parametrize("where", ["in a string", "in a length"])
def test_a_flipped_payload_byte_falls_back_even_when_decoding_overlaps_the_check(
    tmp_path: Path, checksum_threads: list[int], restore_gc: None, where: str
) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, CODEC.dumps(big_state("old")))
    newest_payload = CODEC.dumps(big_state("new"))
    newest = save(store, newest_payload)
    if where == "in a string":
        # "new-00012345" becomes "new-80012345": it still decodes, to a state with one
        # wrong name, so only the checksum can tell.
        offset, mask = newest_payload.index(b"new-00012345") + 4, 0x08
    else:
        # The array header of "records": decoding now fails part-way.
        offset, mask = newest_payload.index(b"records") + len(b"records") + 2, 0xFF
    flip_byte(newest, payload_offset(newest) + offset, mask)
    frozen_before = gc.get_freeze_count()

    loaded = store.load_newest_valid_state("acme")

    assert loaded is not None
    assert loaded.header.generation == 1
    assert loaded.state == big_state("old")
    assert loaded.skipped == [(str(newest), loaded.skipped[0][1])]
    assert "payload checksum mismatch" in loaded.skipped[0][1]
    assert len(checksum_threads) == 2  # both generations were hashed while decoding
    assert frozen_before <= gc.get_freeze_count() and gc.isenabled()


def test_every_generation_damaged_is_no_valid_snapshot(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    for tag in ("a", "b"):
        path = save(store, CODEC.dumps(big_state(tag, records=1000)))
        flip_byte(path, path.stat().st_size - 3)
    with pytest.raises(NoValidSnapshot) as caught:
        store.load_newest_valid_state("acme")
    assert len(caught.value.failures) == 2


def test_same_choices_as_load_newest_valid(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    assert store.load_newest_valid_state("acme") is None
    save(store, CODEC.dumps({"n": 1}))
    newest = save(store, CODEC.dumps({"n": 2}))
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size - 1)
    loaded = store.load_newest_valid_state("acme")
    plain = store.load_newest_valid("acme")
    assert loaded is not None and plain is not None
    assert (loaded.header, loaded.path, loaded.skipped) == (plain.header, plain.path,
                                                            plain.skipped)
    assert loaded.state == CODEC.loads(plain.payload) == {"n": 1}


class Marker:
    """Unpickling this creates a file: stands in for any code a pickle could run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("padding", [16, PARALLEL_VERIFY_MIN_BYTES * 2])
def test_pickle_is_never_loaded_before_it_verifies(tmp_path: Path, padding: int) -> None:
    store = LocalStore.in_data_dir(tmp_path / "store", identity=SIGNING)
    save(store, PickleCodec().dumps({"generation": 1}), codec="pickle")
    marker = tmp_path / "code-ran"
    # pickle.loads stops at the STOP opcode and ignores what follows: damage to the padding
    # leaves a payload that would still run its code if it were loaded.
    payload = pickle.dumps(Marker(str(marker)), protocol=5) + b"\0" * padding
    newest = save(store, payload, codec="pickle")
    flip_byte(newest, newest.stat().st_size - 1)

    loaded = store.load_newest_valid_state("acme")

    assert not marker.exists()
    assert loaded is not None and loaded.header.generation == 1
    assert loaded.state == {"generation": 1}
    assert "payload checksum mismatch" in loaded.skipped[0][1]
    # The control: undamaged, the same payload does run its code when loaded.
    save(store, payload, codec="pickle")
    store.load_newest_valid_state("acme")
    assert marker.exists()


def test_a_refused_codec_is_raised_for_a_sound_file_and_skipped_for_a_corrupt_one(
    tmp_path: Path,
) -> None:
    store = LocalStore.in_data_dir(tmp_path, identity=SIGNING)
    save(store, CODEC.dumps({"n": 1}))
    newest = save(store, PickleCodec().dumps({"n": 2}), codec="pickle")

    def no_pickle(name: str) -> Any:
        return get_codec(name, allow_pickle=False)

    with pytest.raises(UnsafeCodec, match=str(newest)):
        store.load_newest_valid_state("acme", no_pickle)
    flip_byte(newest, newest.stat().st_size - 1)
    loaded = store.load_newest_valid_state("acme", no_pickle)
    assert loaded is not None and loaded.state == {"n": 1}


@pytest.mark.parametrize("size", [10, PARALLEL_VERIFY_MIN_BYTES * 2])
def test_a_sound_payload_that_does_not_decode_is_a_codec_error(tmp_path: Path,
                                                               size: int) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, CODEC.dumps({"n": 1}))
    newest = save(store, b"\xc1" * size)  # 0xc1 is never valid msgpack
    with pytest.raises(CodecError, match=str(newest)):
        store.load_newest_valid_state("acme")


def test_the_mapping_is_released(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    path = save(store, CODEC.dumps(big_state("x", records=1000)))
    with open_snapshot(path) as snapshot:
        view = snapshot.payload
        assert load_state(snapshot, CODEC) == big_state("x", records=1000)
    with pytest.raises(ValueError, match="released"):
        bytes(view)


def test_load_state_refuses_a_damaged_small_payload(tmp_path: Path) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    path = save(store, CODEC.dumps({"n": 1}))
    flip_byte(path, path.stat().st_size - 1)
    with open_snapshot(path) as snapshot, pytest.raises(SnapshotCorrupt, match="checksum"):
        load_state(snapshot, CODEC)


@needs_parallel
def test_damaged_msgpack_cannot_allocate_far_beyond_its_size() -> None:
    # Nested array headers, each claiming almost the whole buffer's length in elements:
    # the worst case for preallocation, since no element ever arrives.
    claim = PARALLEL_VERIFY_MIN_BYTES - 1
    data = (b"\xdd" + claim.to_bytes(4, "big")) * 2000
    data += b"\0" * (PARALLEL_VERIFY_MIN_BYTES - len(data))
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            CODEC.loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Unbounded, that is 1,024 levels x 1 M slots x 8 bytes = 8 GiB.
    assert peak < 100 * 1024 * 1024
    assert msgpack.version >= (1, 2, 4)


def test_no_thread_below_the_threshold(tmp_path: Path, checksum_threads: list[int]) -> None:
    store = LocalStore.in_data_dir(tmp_path)
    save(store, CODEC.dumps({"n": 1}))
    loaded = store.load_newest_valid_state("acme")
    assert loaded is not None and loaded.state == {"n": 1}
    assert checksum_threads == []
