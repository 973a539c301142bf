"""Export a tenant's data to a "switchboard-export" file, and import one as a new tenant.

Runs where the app code is: the router starts it as a subprocess,

    python -m tenant.export export --data-dir DIR --tenant NAME --app MODULE:ATTR -o FILE
    python -m tenant.export import --data-dir DIR --tenant NAME --app MODULE:ATTR FILE

(`--tenants-dir DIR/tenants` is still accepted in place of `--data-dir DIR`.)

The snapshot key (snapshots.mac) is `--snapshot-key-file FILE`, else the file named by
SWITCHBOARD_SNAPSHOT_KEY_FILE, else `<data-dir>/snapshot.key` when it exists: export trusts
what a worker of this deployment would restore (tenant/recovery.py's policy; `--allow-unsigned`
or SWITCHBOARD_ALLOW_UNSIGNED=1 as for `serve`), and import signs the snapshot it writes.
The export file itself stays unsigned msgpack, importable anywhere.

each printing one JSON object on stdout (the export's header; the imported tenant's snapshot)
and exiting 0, or printing one line on stderr and exiting 1. A subprocess, not a control op of
the worker, so that export works whether or not the tenant is running, never waits behind the
tenant's requests, and loads the app's code (needed for its `export_data` / `import_data`
hooks and upgrades) without the router importing any tenant code.

Export reads the tenant's files read-only, with the same rules as a worker's restore: the
newest valid snapshot (falling back past damaged ones) plus the journal after it, a torn last
record dropped. It never writes there, so it is safe next to a running worker: it sees every
command acknowledged before it started (acknowledged means fsynced into the journal), and
perhaps a few later ones; the header's journal_pos says exactly up to where.

Import builds the state from the file (the app's `import_data`, then its upgrade functions
from the file's schema version) and writes it as the new tenant's generation 1 snapshot at
journal position 0, so the tenant's first start restores it. It refuses a tenant folder that
already holds snapshots or journal segments. File format: snapshots/exportfile.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from snapshots.codec import get_codec
from snapshots.errors import SegmentCorrupt, SnapshotError
from snapshots.exportfile import encode_export, read_export, write_export
from snapshots.layout import DataLayout
from snapshots.mac import WriterIdentity, find_key_file, load_key_if_present
from snapshots.store import LocalStore
from tenant.app import TenantApp
from tenant.errors import RestoreError, TenantError, UpgradeError
from tenant.journal_format import read_records
from tenant.recovery import RecoveredState, journal_signing, recover_state
from tenant.segments import plain

# A checkpoint may prune the files being read; a read that loses that race starts over.
_READ_ATTEMPTS = 3


def load_state(app: TenantApp, layout: DataLayout, tenant: str, *,
               store: LocalStore | None = None) -> RecoveredState:
    """The tenant's state as a restore would build it, without writing anything. `store`
    carries the key and policy (default: no key, unsigned files only).

    RestoreError when it cannot be built (no valid snapshot over existing files, a corrupt
    journal record, a snapshot newer than the code).
    """
    for attempt in range(_READ_ATTEMPTS):
        try:
            recovered = recover_state(app, store or LocalStore(layout), tenant)
            # Every segment of a segmented state, now: a checkpoint may prune its files later.
            recovered.state = plain(recovered.state)
            return recovered
        except (FileNotFoundError, SegmentCorrupt) as exc:
            if attempt == _READ_ATTEMPTS - 1:
                raise RestoreError(
                    f"the files of {tenant} kept changing while being read ({exc}); try again"
                ) from None
    raise AssertionError("unreachable")


def export_tenant(app: TenantApp, app_spec: str, layout: DataLayout, tenant: str, *,
                  store: LocalStore | None = None) -> bytes:
    """The export file of the tenant's current durable state, as bytes."""
    loaded = load_state(app, layout, tenant, store=store)
    data = app.export_data(loaded.state) if app.export_data is not None else loaded.state
    try:
        _, blob = encode_export(
            data, tenant=tenant, app=app_spec, app_version=app.app_version,
            schema_version=app.schema_version, journal_pos=loaded.journal_pos,
            generation=loaded.generation,
        )
    except SnapshotError as exc:
        hint = "" if app.export_data is not None else " (give the app an export_data hook)"
        raise TenantError(f"the data of {tenant} cannot be exported: {exc}{hint}") from exc
    return blob


@dataclass(frozen=True)
class Imported:
    tenant: str
    generation: int
    snapshot: str
    from_tenant: str
    schema_version: int
    journal_pos: int


def import_tenant(app: TenantApp, layout: DataLayout, tenant: str, blob: bytes,
                  *, source: str = "<export>", store: LocalStore | None = None) -> Imported:
    """Write `blob` (an export file) as the generation 1 snapshot of the new tenant `tenant`,
    re-encoded with the app's codec, signed with `store`'s key (default: no key, unsigned).

    When this returns, the snapshot is durable and the tenant's first start restores it.
    """
    header, data = read_export(blob, source=source)
    if header.schema_version > app.schema_version:
        raise UpgradeError(
            f"{source} holds schema version {header.schema_version} but this app "
            f"({app.name} {app.app_version}) knows only up to {app.schema_version}: "
            "import it with a newer app version"
        )
    state = app.import_data(data) if app.import_data is not None else data
    state = app.upgrade_state(state, header.schema_version)
    store = store or LocalStore(layout)
    if store.generations(tenant):
        raise TenantError(f"tenant {tenant} already has snapshots: import only makes new tenants")
    if read_records(layout.journal_dir(tenant), after_seq=0,
                    signing=journal_signing(store, tenant)).last_seq:
        raise TenantError(f"tenant {tenant} already has a journal: import only makes new tenants")
    codec = get_codec(app.codec)
    info = store.save(tenant, codec.dumps(state), codec=codec.name, app_version=app.app_version,
                      schema_version=app.schema_version, journal_pos=0)
    return Imported(tenant, info.generation, str(info.path), header.tenant,
                    app.schema_version, 0)


# ---- the subprocess entry point ----


def _load_app(spec: str) -> TenantApp:
    module_name, _, attr = spec.partition(":")
    app = getattr(importlib.import_module(module_name), attr or "app")
    if not isinstance(app, TenantApp):
        raise TypeError(f"{spec} is a {type(app).__name__}, not a tenant.TenantApp")
    return app


def _store(layout: DataLayout, key_file: str | None, allow_unsigned: bool) -> LocalStore:
    """The tenant's store as its worker would have it: the deployment's key (see the module
    docstring) and policy. SnapshotKeyError when a named key file cannot be read."""
    path, named = find_key_file(key_file, layout.data_dir)
    key = load_key_if_present(path, required=named)
    env_allows = os.environ.get("SWITCHBOARD_ALLOW_UNSIGNED", "").strip().lower() in {
        "1", "true", "yes", "on"}
    return LocalStore(layout, identity=WriterIdentity(key=key),
                      allow_unsigned=allow_unsigned or env_allows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenant.export")
    parser.add_argument("action", choices=["export", "import"])
    parser.add_argument("file", nargs="?", help="the export file to import")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path)
    where.add_argument("--tenants-dir", type=Path, help="DATA_DIR/tenants (older spelling)")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--app", required=True, metavar="MODULE:ATTR")
    parser.add_argument("--code-path", help="put this directory first on sys.path")
    parser.add_argument("-o", "--output", type=Path, help="where export writes the file")
    parser.add_argument("--snapshot-key-file", metavar="FILE",
                        help="the snapshot key (default: $SWITCHBOARD_SNAPSHOT_KEY_FILE, else "
                             "DATA_DIR/snapshot.key if it exists)")
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="trust unsigned pickle snapshots, as `serve --allow-unsigned`")
    args = parser.parse_args(argv)
    if args.code_path:
        sys.path.insert(0, args.code_path)
    if args.data_dir is not None:
        layout = DataLayout(args.data_dir)
    else:
        layout = DataLayout(args.tenants_dir.parent)
        if layout.tenants_dir != args.tenants_dir:
            parser.error(f"--tenants-dir must be DATA_DIR/tenants, not {args.tenants_dir}; "
                         "pass --data-dir DATA_DIR")
    try:
        store = _store(layout, args.snapshot_key_file, args.allow_unsigned)
        app = _load_app(args.app)
        if args.action == "export":
            if args.output is None:
                parser.error("export needs -o FILE")
            blob = export_tenant(app, args.app, layout, args.tenant, store=store)
            write_export(args.output, blob)
            header, _ = read_export(blob, source=str(args.output))
            print(json.dumps({**header.to_json(), "size": len(blob)}))
        else:
            if args.file is None:
                parser.error("import needs FILE")
            blob = Path(args.file).read_bytes()
            imported = import_tenant(app, layout, args.tenant, blob, source=args.file,
                                     store=store)
            print(json.dumps(imported.__dict__))
    except (TenantError, SnapshotError, OSError, ImportError, TypeError, ValueError) as exc:
        print(" ".join(f"{type(exc).__name__}: {exc}".split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
