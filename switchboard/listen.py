"""The sockets the router binds for its workers, before it starts them.

The router binds, then hands the bound socket to the worker, so requests queue in the kernel
while the worker restores and a taken address is noticed before anything starts.

- Unix sockets (the default): `<data-dir>/run/<id>.sock`. run/ is 0700, so only this user can
  connect; with `worker_group` it is 0750 and each socket 0660, both of that group, so a web
  server in the group can talk to resident workers directly. A socket file left by an earlier
  worker of the tenant is replaced (the tenant's one live worker is gone by then: the router
  starts a worker only after the last one exited, and the worker's own lock makes sure).
- TCP: a stable loopback port, for front servers that cannot reach a Unix socket; any local
  user can connect to it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
from pathlib import Path

from switchboard.errors import ConfigError

BACKLOG = 1024
MAX_UNIX_PATH_BYTES = 107  # sun_path is 108 bytes with its NUL


def worker_group_id(name: str) -> int | None:
    """The gid of `worker_group`, None when it is not set."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"worker_group {name!r} is not a group on this host") from None


def prepare_run_dir(run_dir: Path, gid: int | None) -> None:
    """Create run/ with the mode the transport needs (and fix it if it drifted)."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if len(os.fsencode(run_dir / "9999999999.sock")) > MAX_UNIX_PATH_BYTES:
        raise ConfigError(
            f"the data dir's path is too long for worker sockets ({run_dir}); use a shorter "
            "--data-dir or worker_transport = \"tcp\"")
    if gid is not None:
        os.chown(run_dir, -1, gid)
    want = 0o750 if gid is not None else 0o700
    if stat.S_IMODE(run_dir.stat().st_mode) != want:
        os.chmod(run_dir, want)


def bind_unix(path: Path, gid: int | None) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, 0o660 if gid is not None else 0o600)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def bind_tcp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
