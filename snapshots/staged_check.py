"""`python -m snapshots.staged_check FILE --key-file KEY`: verify a snapshot another host sent.

The router runs this in a subprocess when a migration's pre-copy arrives
(switchboard/receiving.py): the router never imports msgpack or the snapshot reader, and a
file from elsewhere is checked before anything here trusts it. It checks what
`switchboard snapshot verify` checks (snapshots.inspect.check: intact, and signed by this
host's snapshot key, or an unsigned msgpack file) and prints one JSON object on stdout:

    {"ok": bool, "status": "signed"|"unsigned"|"not_signed"|"corrupt"|"unreadable",
     "problem": str|null, "tenant": str, "generation": int, "journal_pos": int,
     "epoch": int, "creation_id": str}

(the header fields only when the header could be read). Exit status 0 whatever the verdict
(the caller reads `ok`); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from snapshots.errors import SnapshotError
from snapshots.format import read_header
from snapshots.inspect import check
from snapshots.mac import load_key


def verdict(path: str, key: bytes | None) -> dict[str, Any]:
    result = check(path, key)
    out: dict[str, Any] = {"ok": result.ok, "status": result.status, "problem": result.problem}
    try:
        with open(path, "rb") as f:
            header = read_header(f, source=path)
    except (OSError, SnapshotError):
        return out
    out.update(tenant=header.tenant, generation=header.generation,
               journal_pos=header.journal_pos, epoch=header.epoch,
               creation_id=header.creation_id)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapshots.staged_check")
    parser.add_argument("file")
    parser.add_argument("--key-file", required=True)
    args = parser.parse_args(argv)
    try:
        key: bytes | None = load_key(args.key_file)
    except SnapshotError as exc:
        print(json.dumps({"ok": False, "status": "unreadable", "problem": str(exc)}))
        return 0
    print(json.dumps(verdict(args.file, key)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
