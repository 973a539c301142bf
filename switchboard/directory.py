"""The tenant directory: which tenants exist, who owns each and where it listens.

A `TenantRecord` is what is persisted about a tenant; everything that changes per request
(state, pid, in-flight counts) lives in memory on `switchboard.process.TenantProcess`.
`Directory` is the interface the router is written against. `switchboard.table.SqliteDirectory`
is the embedded implementation (one SQLite file in the data dir); cluster mode adds a PostgreSQL
one behind the same interface, so nothing here names a SQLite type.

Identity and fencing. A tenant is identified by its name plus its `creation_id`: `rm` then
`create` of the same name is a new tenant with a new creation id, and epochs compare only
within one creation id. The `epoch` is the fencing token: it starts at 1 and increases by one
on every change of owner, through `set_placement(..., expect_epoch=N)`, a compare-and-set that
fails with `EpochConflict` when another change got there first.

Durability: every method has committed its change when it returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from switchboard.errors import SwitchboardError


class EpochConflict(SwitchboardError):
    """A placement change expected an epoch that has moved on (someone else changed owner)."""

    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(f"tenant {name!r} is at epoch {actual}, not {expected}: "
                         "another change of owner got there first")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: int  # short and stable on this directory: it names the worker's socket file
    name: str
    creation_id: str  # a fresh id per create/import: a re-created name is a new tenant
    epoch: int  # fencing token, +1 on every change of owner
    created_at: float  # Unix seconds
    port: int | None = None  # a TCP worker's stable loopback port, given at its first start
    app: str | None = None  # pinned app (MODULE:ATTR), else the router's default
    code_path: str | None = None  # pinned code directory, put first on sys.path
    owner: str | None = None  # the owning host's id in cluster mode, else None
    moved_to: str | None = None  # where the tenant lives now, once it has moved away
    code_version: str | None = None  # pinned code version's name (switchboard/versions.py)


def new_creation_id() -> str:
    return uuid.uuid4().hex


class Directory(Protocol):
    """Persisted tenant records. Raises switchboard.errors types: TenantExists on a create of
    a name that exists, UnknownTenant for a name that does not, EpochConflict from
    set_placement."""

    async def create(self, name: str, *, app: str | None = None,
                     code_path: str | None = None) -> TenantRecord: ...

    async def create_many(self, names: Sequence[str]) -> list[TenantRecord]:
        """Create every name in one transaction, or none (TenantExists names one that
        exists or repeats)."""
        ...

    async def get(self, name: str) -> TenantRecord: ...

    async def list(self) -> list[TenantRecord]: ...

    async def update(self, name: str, *, port: int | None = None, app: str | None = None,
                     code_path: str | None = None) -> TenantRecord:
        """Change where a tenant listens or which code it runs; None leaves a field as is."""
        ...

    async def set_code_version(self, name: str, version: str | None) -> TenantRecord:
        """Pin the tenant to code version `version` (None: unpin)."""
        ...

    async def set_placement(self, name: str, *, owner: str | None, moved_to: str | None,
                            expect_epoch: int) -> TenantRecord:
        """Change owner and forwarding address, epoch + 1, if the epoch is still
        `expect_epoch`; else EpochConflict and nothing changes."""
        ...

    async def receive(self, name: str, *, creation_id: str, epoch: int) -> TenantRecord:
        """A tenant arriving from another host (switchboard/receiving.py): create its record
        with this creation id and epoch, or, for a record of the same creation id at an older
        epoch (a moved copy here), set its epoch and clear owner and moved_to. EpochConflict
        when this directory has seen `epoch` or a newer one; TenantExists when the name
        belongs to another tenant (another creation id)."""
        ...

    async def remove(self, name: str) -> None: ...

    def close(self) -> None: ...
