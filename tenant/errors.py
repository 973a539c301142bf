"""Errors of the tenant runtime (runs in the tenant worker).

TenantError
  CommandRejected     a command refused its arguments; nothing changed, nothing journaled
    NotFound          the command refers to something that does not exist (HTTP 404)
  UpgradeError        the snapshot's schema cannot be brought to this code's version
  RestoreError        the tenant's state cannot be restored (no valid snapshot over existing
                      data, a corrupt journal record in the middle): the worker refuses to start
  JournalError        see tenant/journal.py
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
