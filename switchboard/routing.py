"""Which tenant a request is for.

Path mode (default): `/t/<tenant>/<rest>` reaches `/<rest>` of the tenant's app with root path
`/t/<tenant>`. Host mode: `<tenant>.<base_domain>` reaches the same path on the tenant's app.
The name is checked on the raw bytes of the request target, before any percent-decoding, with
the one tenant-name rule (`contract.names`), so `..`, `%2e%2e`, upper case, NUL and over-long
names never reach the filesystem.

`/_switchboard/` is the router's own space in both modes, outside every tenant: in host mode
a tenant's app never sees a path under it. `GET /_switchboard/health` is answered there.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.names import RULE, is_valid_name_bytes

PATH_PREFIX = b"/t/"
ROUTER_PREFIX = b"/_switchboard/"
HEALTH_PATH = b"/_switchboard/health"


class NotRouted(Exception):
    """The request is not for any tenant (e.g. `/` of the router, or `/_switchboard/...`)."""


class BadName(Exception):
    def __init__(self, raw: bytes) -> None:
        super().__init__(f"bad tenant name {raw[:80].decode('latin-1')!r}: {RULE}")
        self.raw = raw


@dataclass(frozen=True, slots=True)
class Route:
    tenant: str
    target: bytes  # what the tenant's app sees: /<rest>[?query]
    root_path: str  # /t/<tenant> in path mode, "" in host mode


def route_path(target: bytes) -> Route:
    """Route a request target in path mode. Raises NotRouted or BadName."""
    if not target.startswith(PATH_PREFIX):
        raise NotRouted()
    end = len(target)
    for stop in (b"/", b"?"):
        found = target.find(stop, 3)
        if found != -1 and found < end:
            end = found
    raw_name = target[3:end]
    if not is_valid_name_bytes(raw_name):
        raise BadName(raw_name)
    rest = target[end:]
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    name = raw_name.decode("ascii")
    return Route(name, rest, "/t/" + name)


def route_host(host: bytes, target: bytes, base_domain: str) -> Route:
    """Route by Host header in host mode. Raises NotRouted or BadName."""
    if target.startswith(ROUTER_PREFIX):
        raise NotRouted()
    hostname = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
    suffix = b"." + base_domain.encode("ascii").lower()
    hostname = hostname.lower()
    if not hostname.endswith(suffix):
        raise NotRouted()
    raw_name = hostname[: -len(suffix)]
    if not is_valid_name_bytes(raw_name):
        raise BadName(raw_name)
    return Route(raw_name.decode("ascii"), target or b"/", "")


def is_health_check(target: bytes) -> bool:
    """`target` asks for the router's health (any query string is ignored)."""
    return target.partition(b"?")[0] == HEALTH_PATH
