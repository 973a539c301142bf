"""Recovering a tenant's state from its files: newest valid snapshot + journal replay.

Runs in the tenant worker (at boot, before it serves) and in `python -m tenant.export`. It
only reads: a corrupt newest snapshot falls back a generation (reported in `warnings`), a
torn last journal record is dropped (reported), and anything that would lose acknowledged data
(no snapshot verifies, a corrupt record in the middle of the journal, a snapshot newer than the
code) raises RestoreError rather than hand back an empty or partial tenant.

The restore policy (DESIGN.md "Decisions": keys and files; the table is in snapshots/store.py):

    snapshot                                      restore
    signed by this deployment's key               restored
    signed, MAC does not verify                   refused "not signed by this deployment";
                                                  falls back a generation, with a warning
    codec other than the app declares             refused "codec X but the app declares Y";
                                                  falls back a generation, with a warning
    corrupt (CRC, checksum)                       falls back a generation, with a warning
    unsigned, msgpack (format 1, or 2 w/o mac)    restored (msgpack runs no code), with a
                                                  warning; marked rewritten, so the next
                                                  checkpoint (at the latest the one at stop)
                                                  writes it signed
    unsigned, pickle                              refused unless allow_unsigned
    unsigned, newer than one signed by this key   refused as planted (a writer with the key
                                                  never goes back to unsigned)
    every generation refused or corrupt           RestoreError: the worker refuses to start

Journal records replayed after a signed snapshot must be signed (a version 2 segment, MAC
per record); unsigned (version 1) segments are replayed only after an unsigned snapshot (or
none) of a msgpack app, or with allow_unsigned (tenant/journal_format.py). A record at the end
of the journal that is not signed by this deployment is dropped, with a warning; anywhere else
the journal cannot be replayed (RestoreError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.worker import WorkerSpec
from snapshots.codec import get_codec
from snapshots.errors import CodecError, SegmentCorrupt, SnapshotError, UnsafeCodec
from snapshots.mac import WriterIdentity, load_key
from snapshots.segments import SegmentedIndex
from snapshots.store import DATA_CODECS, REFUSED, LoadedState, LocalStore
from tenant import segments
from tenant.app import TenantApp
from tenant.errors import JournalError, RestoreError, TenantError
from tenant.journal_format import JournalSigning, read_records


@dataclass
class RecoveredState:
    state: Any
    journal_pos: int  # seq of the last command included
    generation: int | None  # the snapshot generation it started from
    replayed: int = 0  # journal commands applied on top of the snapshot
    rewritten: bool = False  # upgraded, or recovered from an older generation: checkpoint soon
    snapshot_bytes: int = 0  # the size of the snapshot file it started from
    warnings: list[str] = field(default_factory=list)
    accept_unsigned: bool = True  # whether journal records may come from unsigned segments


def store_for(spec: WorkerSpec) -> LocalStore:
    """The worker's store: signed with the key in `spec.snapshot_key_file` and stamped with
    the tenant's epoch, restoring by the policy above (`spec.allow_unsigned`). Without a key
    file in the spec, nothing is signed and no signed file is trusted. SnapshotKeyError when
    the key file cannot be read: the worker must not start then (it would sign nothing and
    refuse every signed file)."""
    key = None if spec.snapshot_key_file is None else load_key(spec.snapshot_key_file)
    return LocalStore.in_data_dir(spec.data_dir, spec.keep_generations,
                                  identity=WriterIdentity(key=key, epoch=spec.epoch,
                                                            creation_id=spec.creation_id),
                                  allow_unsigned=spec.allow_unsigned)


def journal_signing(store: LocalStore, tenant: str, *, accept_unsigned: bool = True
                    ) -> JournalSigning:
    """How the tenant's journal is signed (by the store's key and identity), and whether a
    reader accepts unsigned segments."""
    return JournalSigning(tenant, store.identity, accept_unsigned)


def recover_state(app: TenantApp, store: LocalStore, tenant: str,
                  through_seq: int | None = None) -> RecoveredState:
    """_recover_state; in a worker (tenant.segments.on_fault set: it moves a damaged segment's
    file aside), a segment found damaged while the journal is replayed makes it start over,
    so the restore falls back to a generation that does not need that file."""
    for _ in range(store.keep_generations + 1):
        try:
            return _recover_state(app, store, tenant, through_seq)
        except SegmentCorrupt:
            if segments.on_fault is None:
                raise
    return _recover_state(app, store, tenant, through_seq)


def _recover_state(app: TenantApp, store: LocalStore, tenant: str,
                   through_seq: int | None = None) -> RecoveredState:
    """The tenant's state from `store`'s data dir: its snapshots, then its journal (up to
    `through_seq` when given: a worker whose journal failed rebuilds its state without the
    records it refused; a snapshot past that position is a RestoreError). The store's key
    and allow_unsigned, and the app's codec, decide what is trusted (the module docstring)."""
    try:
        # Verified and decoded in one step: hashing overlaps decoding (see LocalStore).
        loaded = store.load_newest_valid_state(tenant, get_codec, codec=app.codec)
    except (CodecError, UnsafeCodec) as exc:
        raise RestoreError(f"snapshot of {tenant} does not decode: {exc}") from exc
    except SnapshotError as exc:
        raise RestoreError(f"no valid snapshot for {tenant}: {exc}") from exc
    if loaded is None:
        recovered = RecoveredState(app.initial_state(), 0, None)
    else:
        _refuse_if_fenced(store, tenant, loaded.header.epoch, loaded.header.creation_id)
        recovered = _from_snapshot(app, store, loaded)
    # A segmented app's root is lazy (tenant/segments.py): the replay loads what it touches.
    if (loaded is not None and app.segment_groups is not None
            and not isinstance(loaded.state, SegmentedIndex)):
        recovered.rewritten = True  # the next checkpoint writes it segmented
    recovered.state = segments.adopt(recovered.state, app.segment_groups)
    if through_seq is not None and recovered.journal_pos > through_seq:
        raise RestoreError(f"snapshot generation {recovered.generation} of {tenant} covers seq "
                           f"{recovered.journal_pos}, past the journal's last kept seq "
                           f"{through_seq}")
    # Once signed, always signed: nothing after a signed snapshot may come from an unsigned
    # segment, and pickle apps take unsigned records only on the operator's word.
    recovered.accept_unsigned = ((loaded is None or not loaded.signed)
                                 and (app.codec in DATA_CODECS or store.allow_unsigned))
    replay_journal(app, store, tenant, recovered, through_seq)
    return recovered


def replay_journal(app: TenantApp, store: LocalStore, tenant: str, recovered: RecoveredState,
                   through_seq: int | None = None) -> None:
    """Apply the journal's records after `recovered.journal_pos` to its state (recover_state
    does; a parked worker does it again once a migration's journal tail is in place)."""
    try:
        replay = read_records(store.layout.journal_dir(tenant), after_seq=recovered.journal_pos,
                              through_seq=through_seq,
                              signing=journal_signing(store, tenant,
                                                      accept_unsigned=recovered.accept_unsigned))
        for record in replay.records:
            app.apply(recovered.state, record.name, record.args, record.now)
            recovered.journal_pos = record.seq
            recovered.replayed += 1
    except JournalError as exc:
        raise RestoreError(f"journal of {tenant} cannot be replayed: {exc}") from exc
    except TenantError as exc:
        raise RestoreError(f"replaying the journal of {tenant} failed: {exc}") from exc
    if replay.torn_tail is not None:
        torn_path, offset = replay.torn_tail
        if replay.torn_tail_forged:
            recovered.warnings.append(
                f"dropped a journal record at the end of {torn_path} (offset {offset}) that is "
                "not signed by this deployment: it was not written by this deployment (planted?) "
                "and is not replayed")
        else:
            recovered.warnings.append(
                f"dropped a torn record at the end of {torn_path} (offset {offset})")


def _refuse_if_fenced(store: LocalStore, tenant: str, epoch: int, creation_id: str) -> None:
    """DESIGN.md "Between hosts": a worker never starts for a tenant whose files were written
    at a newer epoch than its own (the same creation id): another host owns it now, and this
    host's record of it is older than what it has seen (an old tenant table put back?)."""
    identity = store.identity
    if creation_id and creation_id == identity.creation_id and epoch > identity.epoch:
        raise RestoreError(
            f"{tenant}'s snapshot was written at epoch {epoch}, newer than this host's epoch "
            f"{identity.epoch} for it: a newer owner has had it; not starting an older one")


def _from_snapshot(app: TenantApp, store: LocalStore, loaded: LoadedState) -> RecoveredState:
    header = loaded.header
    state = loaded.state
    upgraded = header.schema_version != app.schema_version
    if upgraded:
        state = app.upgrade_state(segments.plain(state), header.schema_version)
    # An unsigned file this deployment could sign: the next checkpoint rewrites it signed.
    resign = not loaded.signed and store.key is not None
    recovered = RecoveredState(state, header.journal_pos, header.generation,
                               rewritten=upgraded or bool(loaded.skipped) or resign,
                               snapshot_bytes=header.header_bytes + header.payload_length)
    for path, reason in loaded.skipped:
        if reason.startswith(REFUSED):
            recovered.warnings.append(
                f"snapshot {path} {reason}; restored the older generation {header.generation}")
        else:
            recovered.warnings.append(
                f"snapshot {path} is damaged ({reason}); restored an older generation "
                f"({header.generation})")
    if resign:
        recovered.warnings.append(
            f"snapshot {loaded.path} is not signed (format {header.format_version}, codec "
            f"{header.codec}): restored it, and the next checkpoint writes it signed")
    return recovered
