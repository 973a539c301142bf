"""The commands that read or write files on this host: `export NAME -o FILE` and `import FILE
[--as NAME]` (through the admin API, the file on this side), and `snapshot inspect|verify`
(snapshot files read here, no server needed).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from contract.names import is_valid_name
from ops.common import admin_client, data_dir, print_json, show, wants_json
from ops.errors import CommandError


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export", parents=[common],
        help="write a tenant's data to a self-describing export file (running or not)",
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="where to write it (default NAME.sbexport)")
    export.set_defaults(handler=cmd_export)
    import_ = commands.add_parser(
        "import", parents=[common], help="create a tenant from an export file",
    )
    import_.add_argument("file", metavar="FILE")
    import_.add_argument("--as", dest="as_name", metavar="NAME",
                         help="the new tenant's name (default: the name in the file)")
    import_.set_defaults(handler=cmd_import)

    snapshot = commands.add_parser("snapshot", help="inspect or verify snapshot files",
                                   parents=[common])
    actions = snapshot.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    inspect = actions.add_parser("inspect", help="print a snapshot file's header",
                                 parents=[common])
    inspect.add_argument("path", metavar="PATH")
    inspect.set_defaults(handler=cmd_snapshot_inspect)
    verify = actions.add_parser(
        "verify", parents=[common],
        help="verify a snapshot file, a directory of them, or every generation of a tenant: "
             "intact, and signed by this deployment's snapshot key",
    )
    verify.add_argument("target", metavar="PATH|TENANT")
    verify.set_defaults(handler=cmd_snapshot_verify)
    for action in (inspect, verify):
        action.add_argument(
            "--snapshot-key-file", metavar="FILE",
            help="the key snapshots are signed with (env SWITCHBOARD_SNAPSHOT_KEY_FILE, "
                 "default DATA_DIR/snapshot.key)")


def cmd_export(args: argparse.Namespace) -> int:
    from ops.client import check_tenant_name

    name = check_tenant_name(args.name)
    destination = Path(args.output or f"{name}.sbexport")
    with admin_client(args) as client:
        size = client.export(name, destination)
    header = _export_header(destination)
    return show(args, {"path": str(destination), "size": size, **header},
                 lambda _: f"exported {name} up to journal position {header.get('journal_pos')} "
                           f"({size} bytes) to {destination}")


def cmd_import(args: argparse.Namespace) -> int:
    from ops.client import check_tenant_name

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"{path}: no such export file") from None
    header = _check_export(data, str(path))
    name = check_tenant_name(args.as_name or header["tenant"])
    with admin_client(args) as client:
        info = client.import_file(name, data)
    return show(args, info, lambda _: name)


def _export_header(path: Path) -> dict[str, Any]:
    from snapshots.errors import SnapshotError
    from snapshots.exportfile import read_export_header

    try:
        with open(path, "rb") as f:
            return read_export_header(f, source=str(path)).to_json()
    except SnapshotError as exc:
        raise CommandError(str(exc)) from exc


def _check_export(data: bytes, source: str) -> dict[str, Any]:
    """Verify the whole file here, before sending it: a damaged file is a local error."""
    from snapshots.errors import SnapshotError
    from snapshots.exportfile import read_export

    try:
        header, _ = read_export(data, source=source)
    except SnapshotError as exc:
        raise CommandError(str(exc)) from exc
    return header.to_json()


# --- snapshot inspect|verify -----------------------------------------------------------------


def cmd_snapshot_inspect(args: argparse.Namespace) -> int:
    from snapshots.errors import SnapshotError
    from snapshots.inspect import describe

    path = Path(args.path)
    if not path.is_file():
        raise CommandError(f"{path}: no such snapshot file")
    key = _snapshot_key(args)
    try:
        description = describe(path, key)
    except SnapshotError as exc:
        raise CommandError(str(exc)) from exc
    from ops.output import key_values

    return show(args, description, key_values)


def cmd_snapshot_verify(args: argparse.Namespace) -> int:
    """One line a file: `OK (signed) PATH`, `OK (unsigned) PATH`, or `BAD PATH: not signed by
    this deployment: ...` / `BAD PATH: corrupt: ...` (snapshots.inspect.check; a tenant's
    generations are judged together, check_generations); exit 1 unless every file is OK."""
    from snapshots.inspect import check, check_generations

    files: list[str | os.PathLike[str]] = list(_snapshot_files(args.target, data_dir(args)))
    key = _snapshot_key(args)
    tenant = not Path(args.target).exists()  # as _snapshot_files decided
    verdicts = check_generations(files, key) if tenant else [check(f, key) for f in files]
    results: list[dict[str, Any]] = []
    for path, verdict in zip(files, verdicts, strict=True):
        results.append({"path": str(path), "ok": verdict.ok, "status": verdict.status,
                        "signed": verdict.signed,
                        "error": None if verdict.ok else verdict.summary})
        if not wants_json(args):
            line = f"{verdict.summary} {path}" if verdict.ok else f"BAD {path}: {verdict.summary}"
            print(line, flush=True)
    if wants_json(args):
        print_json(results)
    bad = sum(1 for r in results if not r["ok"])
    if bad:
        raise CommandError(f"{bad} of {len(results)} snapshot files failed verification")
    return 0


def _snapshot_key(args: argparse.Namespace) -> bytes | None:
    """The deployment's snapshot key: --snapshot-key-file, SWITCHBOARD_SNAPSHOT_KEY_FILE, or
    DATA_DIR/snapshot.key. A file named by the flag or env must exist; without the default
    one, signed files cannot be checked (verify says so for each)."""
    from snapshots.errors import SnapshotKeyError
    from snapshots.mac import find_key_file, load_key_if_present

    path, named = find_key_file(getattr(args, "snapshot_key_file", None), data_dir(args))
    try:
        return load_key_if_present(path, required=named)
    except SnapshotKeyError as exc:
        raise CommandError(str(exc)) from exc


def _snapshot_files(target: str, data_dir: Path) -> list[Path]:
    """An existing path wins over a tenant of the same name; a directory means its *.snap
    files (any names: copies, other hosts'); a tenant name means its generations, oldest
    first, from where the store keeps them (snapshots.layout)."""
    from snapshots.layout import SNAPSHOT_SUFFIX, DataLayout

    path = Path(target)
    if path.is_dir():
        files = sorted(path.glob(f"*{SNAPSHOT_SUFFIX}"), key=_natural_key)
        if not files:
            raise CommandError(f"{path}: no *{SNAPSHOT_SUFFIX} files in this directory")
        return files
    if path.exists():
        return [path]
    if not is_valid_name(target):
        raise CommandError(f"{target}: no such file, and not a tenant name")
    layout = DataLayout(data_dir)
    directory = layout.snapshot_dir(target)
    try:
        files = layout.snapshot_files(target)
    except OSError as exc:
        raise CommandError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    if not files:
        raise CommandError(f"no snapshots of tenant {target!r} in {directory}")
    return files


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    # gen-9 before gen-10, whether or not the store pads generation numbers.
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", path.name) if part]
