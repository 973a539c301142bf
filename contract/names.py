"""The tenant-name rule: `[a-z0-9][a-z0-9-]{0,62}`, matched whole.

Checked on raw bytes by the router (before any percent-decoding, so `..`, `%2e%2e`, upper
case, NUL and over-long names never reach the filesystem) and on strings everywhere else:
the admin API, the CLI, the snapshot header, the export file.
"""

from __future__ import annotations

import re

PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
NAME_RE = re.compile(PATTERN)
NAME_BYTES_RE = re.compile(PATTERN.encode("ascii"))
RULE = "names are 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"


def is_valid_name(name: object) -> bool:
    """True when `name` is a str matching the rule in full (fullmatch, not `$`, which would
    also accept a trailing newline)."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def is_valid_name_bytes(raw: bytes) -> bool:
    return NAME_BYTES_RE.fullmatch(raw) is not None
