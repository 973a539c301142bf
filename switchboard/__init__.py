"""Switchboard's front daemon: routing, the tenant table, the supervisor, the proxy and the
admin API."""

__version__ = "0.1.0"
