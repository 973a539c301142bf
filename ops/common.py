"""What every `switchboard` command module shares: where the admin API and its key are (flag,
then environment, then default), the signed admin client, and printing for people or, with
`--json`, for scripts. ops/cli.py and the feature modules (ops/migrate.py, ops/attach.py, ...)
all take these from here.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from switchboard.config import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from ops.client import AdminClient

DEFAULT_ADMIN_URL = "http://127.0.0.1:8001"


def option(args: argparse.Namespace, attr: str, env: str) -> str | None:
    value = getattr(args, attr, None) or os.environ.get(env)
    return value or None


def data_dir(args: argparse.Namespace) -> Path:
    return Path(option(args, "data_dir", "SWITCHBOARD_DATA_DIR") or DEFAULT_DATA_DIR)


def key_file(args: argparse.Namespace) -> Path:
    explicit = option(args, "key_file", "SWITCHBOARD_KEY_FILE")
    return Path(explicit) if explicit else data_dir(args) / "admin.key"


def admin_url(args: argparse.Namespace) -> str:
    return option(args, "admin", "SWITCHBOARD_ADMIN") or DEFAULT_ADMIN_URL


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def admin_client(args: argparse.Namespace) -> AdminClient:
    from ops.client import AdminClient
    from switchboard.signing import load_key

    return AdminClient(admin_url(args), load_key(key_file(args)))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def show(args: argparse.Namespace, value: Any, text: Callable[[Any], str | None]) -> int:
    """Print `value` as JSON with --json, else what `text(value)` makes of it for people
    (nothing when that is None). Returns the exit status, 0."""
    if wants_json(args):
        print_json(value)
    else:
        shown = text(value)
        if shown is not None:
            print(shown)
    return 0
