"""Errors of the test and bench harness.

    HarnessError        the base: something the harness started or waited for went wrong
      WaitTimeout       a condition polled by `wait_until` did not hold by its deadline
      RouterExited      a router process ended while the harness waited for it
      AdminCallFailed   a signed admin API call answered an error status
"""

from __future__ import annotations


class HarnessError(Exception):
    """Something the harness started or waited for went wrong."""


class WaitTimeout(HarnessError):
    """A condition did not hold by its deadline."""


class RouterExited(HarnessError):
    """A router process ended while the harness waited for it; the message has its log tail."""


class AdminCallFailed(HarnessError):
    """A signed admin API call answered `status` (4xx or 5xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
