"""Recovering a tenant's state from its files: newest valid snapshot + journal replay.

Runs in the tenant worker (at boot, before it serves) and in `python -m tenant.export`. It
only reads: a corrupt newest snapshot falls back a generation (reported in `warnings`), a
torn last journal record is dropped (reported), and anything that would lose acknowledged data
(no snapshot verifies, a corrupt record in the middle of the journal, a snapshot newer than the
code) raises RestoreError rather than hand back an empty or partial tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snapshots.codec import get_codec
from snapshots.errors import CodecError, SnapshotError, UnsafeCodec
from snapshots.store import LocalStore
from tenant.app import TenantApp
from tenant.errors import JournalError, RestoreError, TenantError
from tenant.journal_format import read_records


@dataclass
class RecoveredState:
    state: Any
    journal_pos: int  # seq of the last command included
    generation: int | None  # the snapshot generation it started from
    replayed: int = 0  # journal commands applied on top of the snapshot
    rewritten: bool = False  # upgraded, or recovered from an older generation: checkpoint soon
    warnings: list[str] = field(default_factory=list)


def recover_state(app: TenantApp, store: LocalStore, tenant: str,
                  through_seq: int | None = None) -> RecoveredState:
    """The tenant's state from `store`'s data dir: its snapshots, then its journal (up to
    `through_seq` when given: a worker whose journal failed rebuilds its state without the
    records it refused; a snapshot past that position is a RestoreError)."""
    try:
        # Verified and decoded in one step: hashing overlaps decoding (see LocalStore).
        loaded = store.load_newest_valid_state(tenant, get_codec)
    except (CodecError, UnsafeCodec) as exc:
        raise RestoreError(f"snapshot of {tenant} does not decode: {exc}") from exc
    except SnapshotError as exc:
        raise RestoreError(f"no valid snapshot for {tenant}: {exc}") from exc
    if loaded is None:
        recovered = RecoveredState(app.initial_state(), 0, None)
    else:
        header = loaded.header
        state = loaded.state
        upgraded = header.schema_version != app.schema_version
        if upgraded:
            state = app.upgrade_state(state, header.schema_version)
        recovered = RecoveredState(state, header.journal_pos, header.generation,
                                   rewritten=upgraded or bool(loaded.skipped))
        for path, reason in loaded.skipped:
            recovered.warnings.append(
                f"snapshot {path} is damaged ({reason}); restored an older generation")
    if through_seq is not None and recovered.journal_pos > through_seq:
        raise RestoreError(f"snapshot generation {recovered.generation} of {tenant} covers seq "
                           f"{recovered.journal_pos}, past the journal's last kept seq "
                           f"{through_seq}")
    try:
        replay = read_records(store.layout.journal_dir(tenant), after_seq=recovered.journal_pos,
                              through_seq=through_seq)
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
        recovered.warnings.append(
            f"dropped a torn record at the end of {torn_path} (offset {offset})")
    return recovered
