"""The bounds of the router's front edge: what one client, or many, may cost it.

Every client connection (switchboard.downstream) lives within one `EdgeLimits`:

- Size, counted while the head is parsed (httptools callbacks), never after buffering it: the
  request line (over `max_request_line_bytes`: 414), one header line (over `max_header_bytes`:
  431), all header lines together (over `max_headers_total_bytes`: 431) and their number (over
  `max_header_count`: 431). Bytes read while a head is still open count against the total as
  they arrive, so an unterminated 100 MB header costs the router one read buffer, not 100 MB.
- Time: the whole head must arrive within `header_timeout_s` of its first byte (of the
  connection, for its first request), else 408 (a silent close when not one byte came, as a
  browser's unused pre-connection deserves); a request body that sends nothing for
  `body_timeout_s` while the router reads it gets 408; a keep-alive connection idle for
  `keepalive_timeout_s` between requests is closed. A request being answered (its tenant
  starting, its worker working, its answer streaming) is not idle, time during which the router
  itself holds the client's reading (backpressure) is not counted against the client, and a
  WebSocket tunnel has no deadline.
- Count: at most `max_client_connections` at once, and never more than the open-files limit
  allows at two descriptors a connection (the client's and a worker's) after `FD_RESERVE` for
  everything else; one over that gets a 503 with `Connection: close`. `raise_open_files_limit`
  lifts the router's soft RLIMIT_NOFILE to the hard limit first.

Deadlines are checked by one `Sweeper` every `sweep_interval_s` (a quarter of the shortest
timeout, between 0.05 and 1 s), not by a timer per read. The hot path reads no clock: it
resets a connection's stamps to 0.0 when a head begins or a request ends, and the sweep stamps
them with its own clock (a deadline may pass up to one interval late); a body's progress is its
size, compared from one sweep to the next. Measured here (uvloop): a `call_later` and its
`cancel` cost ~2.4 us, about 5% of a proxied request's CPU, while a sweep costs ~0.5 us per
connection per interval (4 ms a second for 9,000 connections).

`TrustedProxies` holds `trusted_proxies` (addresses and networks): only a peer in it may send
forwarding headers (X-Forwarded-*, Forwarded, X-Real-IP) and X-Switchboard-* through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from switchboard.config import Config

log = logging.getLogger("switchboard.proxy")

FD_RESERVE = 256  # descriptors kept for the listeners, the table, logs, spawning
FD_PER_RESIDENT = 4  # control channel, pipes and the like, per resident worker


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_request_line_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024  # one header line, name and value
    max_headers_total_bytes: int = 64 * 1024
    max_header_count: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    max_client_connections: int = 10_000

    @classmethod
    def from_config(cls, config: Config, open_files: int | None = None) -> EdgeLimits:
        """The limits `config` sets; with `open_files` (the soft RLIMIT_NOFILE), the connection
        cap is lowered to what that many descriptors can carry."""
        cap = config.max_client_connections
        if open_files is not None:
            reserve = FD_RESERVE + FD_PER_RESIDENT * config.max_resident
            fits = max(1, (open_files - reserve) // 2)
            if fits < cap:
                log.warning("at most %d client connections: the open-files limit is %d "
                            "(max_client_connections is %d)", fits, open_files, cap)
                cap = fits
        return cls(
            max_request_line_bytes=config.max_request_line_bytes,
            max_header_bytes=config.max_header_bytes,
            max_headers_total_bytes=config.max_headers_total_bytes,
            max_header_count=config.max_header_count,
            max_body_bytes=config.max_body_bytes,
            header_timeout_s=config.header_timeout_s,
            body_timeout_s=config.body_timeout_s,
            keepalive_timeout_s=config.keepalive_timeout_s,
            max_client_connections=cap,
        )

    @property
    def sweep_interval_s(self) -> float:
        shortest = min(self.header_timeout_s, self.body_timeout_s, self.keepalive_timeout_s)
        return min(1.0, max(0.05, shortest / 4))


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (or the kernel's cap when the hard limit
    is unlimited); return the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return int(soft)


class TrustedProxies:
    """The peers whose forwarding headers are believed (`trusted_proxies`: IPs and CIDRs).
    Raises ValueError for an entry that is neither."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def add(self, entry: str) -> None:
        """Trust one more peer from now on (a host that forwards to this one: migration)."""
        network = ipaddress.ip_network(entry.strip(), strict=False)
        if network not in self.networks:
            self.networks = (*self.networks, network)

    def trusts(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False  # a Unix socket peer has no address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


class Expiring(Protocol):
    def expire(self, now: float) -> None:
        """Act on whatever deadline of this connection has passed at `now` (time.monotonic)."""


class Sweeper:
    """Every `interval_s`, lets each connection act on its passed deadlines."""

    def __init__(self, connections: Collection[Expiring], interval_s: float) -> None:
        self.connections = connections
        self.interval_s = interval_s
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)
        now = time.monotonic()
        for conn in list(self.connections):
            try:
                conn.expire(now)
            except Exception:  # one connection's bug must not stop the sweep for the rest
                log.exception("checking a client connection's deadlines failed")
