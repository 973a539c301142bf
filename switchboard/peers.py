"""This host's advertised URLs and the hosts it has exchanged tenants with.

`<data-dir>/migrations/peers.json` (written whole, atomically):

    {"peers": [ROUTER_URL, ...],          hosts tenants moved to or from: their addresses are
                                          trusted as forwarders (their X-Forwarded-* count)
     "origins": {NAME: ADMIN_URL, ...}}   the host each tenant here came from, told when the
                                          tenant moves on, so its forwarding skips this host

DESIGN.md "Addresses and trust": hosts that forward to each other trust each other's
advertised addresses automatically. `trust` is the proxy's TrustedProxies.add.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapshots.durable import write_atomic
from snapshots.layout import DataLayout
from switchboard.forwarding import peer_networks

log = logging.getLogger("switchboard.peers")


class Peers:
    def __init__(self, layout: DataLayout, router_url: str, admin_url: str,
                 trust: Callable[[str], None]) -> None:
        self.layout = layout
        self.router_url = router_url.rstrip("/")
        self.admin_url = admin_url.rstrip("/")
        self._trust = trust
        self.peers: list[str] = []
        self.origins: dict[str, str] = {}
        self._load()

    @property
    def path(self) -> Path:
        return self.layout.migrations_dir / "peers.json"

    def _load(self) -> None:
        try:
            data: Any = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): hosts that forward here are not trusted until the "
                      "next migration", self.path, exc)
            return
        self.peers = [str(p) for p in data.get("peers", []) if isinstance(p, str)]
        origins = data.get("origins", {})
        if isinstance(origins, dict):
            self.origins = {str(k): str(v) for k, v in origins.items()}
        for peer in self.peers:
            self._trust_addresses(peer)

    def _save(self) -> None:
        self.layout.ensure_migrations_dir()
        write_atomic(self.path, json.dumps({"peers": self.peers, "origins": self.origins},
                                           indent=1).encode())

    def _trust_addresses(self, router_url: str) -> None:
        for address in peer_networks(router_url):
            self._trust(address)

    def add(self, router_url: str) -> None:
        """Trust `router_url`'s host as a forwarder from now on, and remember it."""
        router_url = router_url.rstrip("/")
        self._trust_addresses(router_url)
        if router_url and router_url not in self.peers:
            self.peers.append(router_url)
            self._save()

    def set_origin(self, name: str, admin_url: str | None) -> None:
        if admin_url:
            self.origins[name] = admin_url.rstrip("/")
        else:
            self.origins.pop(name, None)
        self._save()

    def info(self) -> dict[str, Any]:
        return {"router_url": self.router_url, "admin_url": self.admin_url, "host": None}
