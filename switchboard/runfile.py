"""`<data-dir>/router.json`: where a running router really listens.

A router may be told to listen on port 0 (tests and the bench do, so no two routers can race
for a port); this file is how it says which ports it got. Format, one JSON object in UTF-8:

    {"pid": 4242, "listen": "127.0.0.1:41537", "admin_listen": "127.0.0.1:41539"}

    pid            the router process
    listen         HOST:PORT of the tenant listener, as bound (an IPv6 host in brackets)
    admin_listen   HOST:PORT of the admin API, as bound

Written once both listeners are bound, to a temporary file in the same directory and renamed
over `router.json`, so a reader sees the old file, no file, or the whole new one, never a
partial one. Not fsynced: it describes a running process, and a crash makes it stale anyway.
Removed on a clean exit. A router killed with SIGKILL leaves it behind, naming a pid that is
gone or reused, so a reader that started a router compares `pid` with the process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "router.json"


@dataclass(frozen=True)
class RouterAddresses:
    pid: int
    listen: str
    admin_listen: str

    @classmethod
    def from_json(cls, data: object) -> RouterAddresses | None:
        if not isinstance(data, dict):
            return None
        pid, listen, admin_listen = data.get("pid"), data.get("listen"), data.get("admin_listen")
        if not (isinstance(pid, int) and isinstance(listen, str) and isinstance(admin_listen, str)):
            return None
        return cls(pid, listen, admin_listen)


def path_in(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def bound_address(sockets: Iterable[socket.socket]) -> str:
    """HOST:PORT of the first listening socket (the one a port 0 request ended up on)."""
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    raise ValueError("no listening socket")


def write(data_dir: Path, addresses: RouterAddresses) -> Path:
    """Replace `router.json` atomically. On return the new file is in place (not durable)."""
    target = path_in(data_dir)
    tmp = target.with_name(f".{FILE_NAME}.{addresses.pid}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(addresses)) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def remove(data_dir: Path, pid: int) -> None:
    """Remove `router.json` if it is this router's (another router's file stays)."""
    current = read(data_dir)
    if current is not None and current.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path_in(data_dir).unlink()


def read(data_dir: Path) -> RouterAddresses | None:
    """The addresses in `router.json`, or None when there is no such file or it is not one."""
    try:
        text = path_in(data_dir).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return RouterAddresses.from_json(json.loads(text))
    except ValueError:
        return None
