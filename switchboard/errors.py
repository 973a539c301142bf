"""Errors raised by the front daemon.

SwitchboardError
  BadTenantName        the name breaks the rule in contract/names.py (HTTP 400)
  UnknownTenant        no such tenant in the table (HTTP 404)
  TenantExists         create of a name already in the table (HTTP 409)
  TenantUnavailable    the tenant cannot serve now: starting too long, backing off after
                       failures, or failed for good (HTTP 503 with Retry-After when it may recover)
  TenantBusy           an operation conflicts with the tenant's current state (HTTP 409)
  ConfigError          a bad value in switchboard.toml, SWITCHBOARD_* or a flag
  WorkerError          the worker broke the control protocol or died while answering
  StorageFailed        the router could not write its own records or a tenant's folder: a full
                       disk, a read-only file system (HTTP 507); nothing was created
  TransferFailed       an export or import could not be done: a damaged export file, data the
                       app cannot export or import, a tenant whose files do not restore (HTTP 422)
"""

from __future__ import annotations

from contract.names import RULE


class SwitchboardError(Exception):
    """Base class for every error the front daemon raises on purpose."""


class BadTenantName(SwitchboardError):
    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        super().__init__(
            f"bad tenant name {shown!r}: {RULE}")


class UnknownTenant(SwitchboardError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no tenant named {name!r}")
        self.name = name


class TenantExists(SwitchboardError):
    def __init__(self, name: str) -> None:
        super().__init__(f"tenant {name!r} already exists")
        self.name = name


class TenantUnavailable(SwitchboardError):
    """The tenant cannot serve right now. `retry_after_s` is None when only an operator can help.
    `kind` names the reason from a small fixed set (switchboard.metrics.UNAVAILABLE_REASONS),
    for the 503s-by-reason metric."""

    def __init__(self, reason: str, retry_after_s: float | None = None, *,
                 kind: str = "other") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.kind = kind


class TenantBusy(SwitchboardError):
    pass


class ConfigError(SwitchboardError):
    pass


class WorkerError(SwitchboardError):
    pass


class TransferFailed(SwitchboardError):
    pass


class StorageFailed(SwitchboardError):
    pass


class BadRequest(SwitchboardError):
    """A request whose body or parameters are not what the route takes (400)."""


class MigrationRefused(SwitchboardError):
    """A migration this host will not take or make (epoch not newer, another tenant of the
    name, nothing staged, already moved): nothing changed (409)."""


class TargetRefused(SwitchboardError):
    """A migration's target answered and said no: nothing changed there
    (switchboard/handover.py)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TargetUnreachable(SwitchboardError):
    """No answer from a migration's target (refused, timed out, cut off, or a 5xx): whether a
    commit landed is not known; asking it to resolve tells."""


class UnknownCodeVersion(SwitchboardError):
    """A code version that is not in the config's code_versions (switchboard/versions.py)."""

    def __init__(self, version: str, known: list[str]) -> None:
        super().__init__(f"unknown code version {version!r}; configured: "
                         f"{', '.join(known) or 'none (set [code_versions] in the config)'}")


class UpgradeFailed(SwitchboardError):
    """`upgrade` did not switch: the tenant stays on its version. `details` is the shadow
    worker's traceback (or what else went wrong), for the operator to read."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
