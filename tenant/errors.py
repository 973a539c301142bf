"""Errors of the tenant runtime (runs in the tenant worker).

TenantError
  CommandRejected     a command refused its arguments; nothing changed, nothing journaled
    NotFound          the command refers to something that does not exist (HTTP 404)
  UpgradeError        the snapshot's schema cannot be brought to this code's version
  RestoreError        the tenant's state cannot be restored (no valid snapshot over existing
                      data, a corrupt journal record in the middle): the worker refuses to start
  JournalError        see tenant/journal.py
    JournalCorrupt    a bad journal record that is not the torn tail, or a gap in the seqs:
                      restore stops rather than skip acknowledged commands
    JournalWriteError a write or fsync of the journal failed; that journal is broken for good
  TenantLocked        another live process holds the tenant's worker lock (tenant/lock.py):
                      the worker refuses to start
  DurabilityLost      raised by `TenantContext.execute` for a command the journal could not make
                      durable, and for every command while writes are unavailable after such a
                      failure: not acknowledged, answered 503 (DurabilityGuard); reads go on
"""

from __future__ import annotations


class TenantError(Exception):
    """Base class for every error the tenant runtime raises on purpose."""


class CommandRejected(TenantError):
    """Raised by a command before it mutates anything. `status` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class NotFound(CommandRejected):
    status = 404


class UpgradeError(TenantError):
    pass


class RestoreError(TenantError):
    pass


class TenantLocked(TenantError):
    """The tenant's lock is held: another worker serves it (or what is left of one is still
    writing). `holder` is the pid the holder wrote into the lock file, None if unknown."""

    def __init__(self, message: str, holder: int | None) -> None:
        super().__init__(message)
        self.holder = holder


class JournalError(TenantError):
    """The journal cannot be read or written as asked (see tenant/journal.py)."""


class JournalCorrupt(JournalError):
    """A journal record other than the last one is damaged, or seqs are missing.

    The message names the file, the byte offset and the seq. Never skipped: the records after
    it may have been acknowledged to clients.
    """


class JournalWriteError(JournalError):
    """A write or fsync of the journal failed. The journal stays broken: every later append
    raises too, because a retried fsync can report success over data the kernel dropped."""


class ClusterWriteRefused(TenantError):
    """Cluster mode (tenant/pgstore.py): PostgreSQL did not commit this command (it cannot be
    reached now). Answered with 503; the worker goes on and retries the commit."""


class Fenced(ClusterWriteRefused):
    """Cluster mode: the tenant's epoch in PostgreSQL moved on (another host owns it now), or
    this host's lease is not live. Nothing this worker holds may be acknowledged any more: it
    answers 503 and exits with FENCED_EXIT (contract/worker.py)."""


class DurabilityLost(TenantError):
    """This command is not durable: the journal failed (a write or fsync), or has not been
    started again since it did. The message is the reason a user reads: "cannot make writes
    durable: no space left on device".

    Never an acknowledgement: the request that sees it answers 503 (DurabilityGuard). The
    command is not in the state the worker serves from then on: the worker rebuilds it from
    the durable files and accepts writes again once a new journal segment could be started
    (tenant/write_recovery.py).
    """

    status = 503
