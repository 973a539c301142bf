"""Keeping tenant data away from other local users.

The data dir holds every tenant's state, journals included (card numbers, passwords...).
`serve` sets its umask to 077, so every file the router or a worker creates is 0600 and every
folder 0700, and it refuses to start on a data dir or key file that another user owns or that
group or others may open: it says how to fix it instead of serving data anyone can read.
(run/ may be opened by `worker_group`: switchboard/listen.py sets that one folder's mode.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from switchboard.errors import ConfigError

UMASK = 0o077


def restrict_umask() -> None:
    os.umask(UMASK)


def secure_data_dir(data_dir: Path) -> None:
    """Create the data dir 0700, or check that an existing one is ours and private."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(data_dir, "data dir", fix=f"chmod 700 {data_dir}")


def check_key_file(path: Path) -> None:
    """A key file that exists must be ours and 0600 (or stricter)."""
    if path.exists():
        _check_private(path, "key file", fix=f"chmod 600 {path}")


def _check_private(path: Path, what: str, *, fix: str) -> None:
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{what} {path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): "
            f"run switchboard as its owner, or `chown -R {os.geteuid()} {path}`")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path} is mode {mode:04o}: other local users could read tenant data or "
            f"keys; run `{fix}`")
