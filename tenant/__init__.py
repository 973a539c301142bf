"""The tenant worker runtime: restore, serve the tenant's ASGI app, journal, checkpoint.

What an app needs: `TenantApp` to declare commands and schema, `current()` to reach the
running tenant's state and `execute` its commands, `CommandRejected` / `NotFound` to refuse.
"""

from tenant.app import TenantApp
from tenant.context import TenantContext, activate, current
from tenant.errors import CommandRejected, NotFound

__all__ = ["CommandRejected", "NotFound", "TenantApp", "TenantContext", "activate", "current"]
