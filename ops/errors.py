"""Errors of the operator CLI. Both end as one line on stderr and exit status 1.

    AdminError     an admin API call failed (`ops.client`); `status` is the HTTP status,
                   or None when the server never answered
    CommandError   anything else a command cannot do (a missing file, a damaged export)

This module imports nothing heavy, so `ops.cli` can recognise an AdminError without importing
httpx for commands that never talk to a server.
"""

from __future__ import annotations


class AdminError(Exception):
    """An admin call failed. `status` is the HTTP status, or None when there was no answer."""

    def __init__(self, message: str, status: int | None = None, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details  # more than one line (a traceback), when the server gave one


class CommandError(Exception):
    """A failure reported as one line on stderr, exit status 1."""
