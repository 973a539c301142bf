"""Requests for a tenant that lives on another host: where they go (the proxy relays them).

Any "this tenant lives elsewhere" case uses this: a standalone tenant that moved away
(`moved_to`, switchboard/migration.py), and in cluster mode a tenant owned by another live
host. `Forwarding.remote(name)` answers the other host's router as a `RemoteTenant`, which the
proxy relays to like a worker (switchboard/proxy.py `Proxy.forward`): the request target is
sent unchanged (`/t/<tenant>/...`: the other router routes it itself), the client's Host is
kept, and X-Forwarded-For/-Proto/-Host are appended to and kept as for any trusted front
server. The receiving host trusts its forwarders' addresses (`trust_peer`, which
switchboard/migration.py calls for every host it exchanges tenants with). With
`forward_mode = "redirect"` the proxy answers 307 with the other host's URL instead.

The URLs are a host's advertised router URL (`advertise_url`): `http://HOST:PORT` with an
optional path prefix (a front server in front of the other router); only plain HTTP is
relayed by the router itself (an https URL is always answered with a redirect).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from switchboard.errors import ConfigError

log = logging.getLogger("switchboard.forwarding")

FORWARD_MODES = ("proxy", "redirect")


@dataclass(frozen=True, slots=True)
class RemoteTenant:
    """A tenant served by another host's router, as the proxy sees it (its `Tenant`)."""

    name: str
    url: str  # that router's base URL, no trailing slash
    address: tuple[str, int]  # where to connect
    redirect: bool  # answer 307 instead of relaying

    worker: None = None  # no worker here: nothing to recover, compared by identity only
    serving: bool = True

    def location(self, target: bytes) -> bytes:
        """The URL of `target` (a request target on this router) on the other host."""
        return self.url.encode() + target


def parse_router_url(url: str) -> tuple[str, tuple[str, int]]:
    """A router URL's canonical form (no trailing slash) and its (host, port). ConfigError
    for anything but http(s)://HOST[:PORT][/prefix]."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(f"not a router URL (http://HOST:PORT): {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"bad port in {url!r}") from exc
    canonical = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return canonical, (parts.hostname, port)


class Forwarding:
    """Looks up where a tenant that is not served here lives. `moved_to(name)` is the
    directory's answer (None: not moved); `mode` is `forward_mode`."""

    def __init__(self, moved_to: Callable[[str], str | None], mode: str) -> None:
        if mode not in FORWARD_MODES:
            raise ConfigError(f"forward_mode must be one of {FORWARD_MODES}, not {mode!r}")
        self.moved_to = moved_to
        self.mode = mode
        self._parsed: dict[str, RemoteTenant] = {}
        # Addresses of hosts that forward to this one: trusted as front servers are (added to
        # the proxy's TrustedProxies again when a reload replaces it).
        self.peer_addresses: set[str] = set()

    def remote(self, name: str) -> RemoteTenant | None:
        url = self.moved_to(name)
        if not url:
            return None
        cached = self._parsed.get(name)
        if cached is not None and cached.url == url.rstrip("/"):
            return cached
        try:
            canonical, address = parse_router_url(url)
        except ConfigError as exc:
            log.error("tenant %s moved to %s, which cannot be forwarded to: %s", name, url, exc,
                      extra={"tenant": name})
            return None
        remote = RemoteTenant(name, canonical, address,
                              redirect=self.mode == "redirect" or canonical.startswith("https:"))
        self._parsed[name] = remote
        return remote


def peer_networks(url: str) -> list[str]:
    """The addresses a host with router URL `url` forwards from, for `trusted_proxies`: its
    IP, or what its name resolves to (empty when it does not resolve now)."""
    try:
        _, (host, _port) = parse_router_url(url)
    except ConfigError:
        return []
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})
