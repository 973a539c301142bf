"""Code versions: several versions of the tenant app installed side by side.

A version is a name in the config's `code_versions` table and a directory that the worker puts
first on its sys.path before it imports the app (the same interpreter and runtime; DESIGN.md
"Decisions"). A tenant runs its pinned version (`switchboard pin`, kept in the tenant table's
`code_version` column), else `default_code_version`, else the app as installed (no version
name). Each (app, directory) pair gets its own zygote, started the first time a worker of that
version is spawned (switchboard/spawner.py).

    [code_versions]
    v1 = "/srv/app-v1"
    v2 = "/srv/app-v2"

In the environment: SWITCHBOARD_CODE_VERSIONS="v1=/srv/app-v1,v2=/srv/app-v2".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from switchboard.directory import TenantRecord
from switchboard.errors import ConfigError, UnknownCodeVersion

VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")


def parse_code_versions(raw: Any) -> dict[str, str]:
    """A TOML table, or `name=dir,name=dir` from the environment. Directories are made
    absolute (workers run with another working directory)."""
    if isinstance(raw, Mapping):
        items = [(str(k), str(v)) for k, v in raw.items()]
    else:
        items = []
        for part in str(raw).split(","):
            if part.strip():
                name, sep, path = part.partition("=")
                if not sep:
                    raise ConfigError(f"code_versions: expected NAME=DIR, got {part.strip()!r}")
                items.append((name.strip(), path.strip()))
    versions: dict[str, str] = {}
    for name, path in items:
        if not VERSION_NAME.fullmatch(name):
            raise ConfigError(f"code version name {name!r}: letters, digits, '.', '_', '-' "
                              "(up to 40)")
        if not path:
            raise ConfigError(f"code version {name!r} has no directory")
        versions[name] = os.path.abspath(os.path.expanduser(path))
    return versions


def check_version(versions: Mapping[str, str], version: str) -> str:
    """`version` if configured, else UnknownCodeVersion."""
    if version not in versions:
        raise UnknownCodeVersion(version, sorted(versions))
    return version


def version_of(versions: Mapping[str, str], default: str, record: TenantRecord) -> str | None:
    """The version name the tenant runs (pinned, else the default), None for the app as
    installed. A pin to a version since removed from the config falls back to the default."""
    if record.code_version and record.code_version in versions:
        return record.code_version
    return default or None


def code_path_of(versions: Mapping[str, str], default: str,
                 record: TenantRecord) -> str | None:
    """The directory the tenant's worker puts first on sys.path, None for none."""
    name = version_of(versions, default, record)
    if name is not None:
        return versions[name]
    return record.code_path
