"""`switchboard pin NAME VERSION`, `unpin NAME`, `upgrade NAME --to VERSION`,
`upgrade --all --to VERSION`: which code version a tenant runs (switchboard/versions.py).

`upgrade` restores the tenant in a shadow worker of the new version first and switches only
if that worked (switchboard/debugging.py); when it did not, the tenant stays on its version
and the shadow's traceback is printed on stderr (exit 1). `--all` goes tenant by tenant
(those already on the version are skipped) with a progress bar, then prints a summary; it
exits 1 if any tenant failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ops import common
from ops.errors import AdminError
from ops.progress import Progress


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    pin = commands.add_parser("pin", parents=[common],
                              help="run a tenant on a code version from the config "
                                   "(restarted now if running)")
    pin.add_argument("name", metavar="NAME")
    pin.add_argument("version", metavar="VERSION")
    pin.set_defaults(handler=cmd_pin)
    unpin = commands.add_parser("unpin", parents=[common],
                                help="run a tenant on the default code version again")
    unpin.add_argument("name", metavar="NAME")
    unpin.set_defaults(handler=cmd_unpin)
    upgrade = commands.add_parser(
        "upgrade", parents=[common],
        help="move a tenant to a code version after a shadow restore on it succeeded")
    which = upgrade.add_mutually_exclusive_group(required=True)
    which.add_argument("name", metavar="NAME", nargs="?")
    which.add_argument("--all", action="store_true", help="every tenant, one by one")
    upgrade.add_argument("--to", required=True, metavar="VERSION")
    upgrade.set_defaults(handler=cmd_upgrade)


def _version_text(info: dict[str, Any]) -> str:
    return f"{info.get('name')}: {info.get('code_version') or 'the app as installed'} " \
           f"({info.get('state')})"


def cmd_pin(args: argparse.Namespace) -> int:
    with common.admin_client(args) as client:
        info = client.pin(args.name, args.version)
    return common.show(args, info, _version_text)


def cmd_unpin(args: argparse.Namespace) -> int:
    with common.admin_client(args) as client:
        info = client.unpin(args.name)
    return common.show(args, info, _version_text)


def cmd_upgrade(args: argparse.Namespace) -> int:
    with common.admin_client(args) as client:
        if not args.all:
            try:
                result = client.upgrade(args.name, args.to)
            except AdminError as exc:
                if exc.details:
                    sys.stderr.write(exc.details.rstrip("\n") + "\n")
                raise
            return common.show(args, result, lambda r: f"{r['tenant']}: {r['from'] or '-'} -> "
                                                      f"{r['to']}")
        return _upgrade_all(args, client)


def _upgrade_all(args: argparse.Namespace, client: Any) -> int:
    tenants = [t for t in client.list_tenants() if t.get("state") != "moved"]
    todo = [t["name"] for t in tenants if t.get("code_version") != args.to]
    skipped = len(tenants) - len(todo)
    upgraded: list[str] = []
    failed: dict[str, str] = {}
    bar = Progress(f"upgrade to {args.to}", len(todo), unit=str)
    try:
        for name in todo:
            try:
                client.upgrade(name, args.to)
                upgraded.append(name)
            except AdminError as exc:
                if exc.status in {None, 401}:
                    raise  # the server or the key, not this tenant: the rest would fail too
                failed[name] = exc.message
                if exc.details and not common.wants_json(args):
                    sys.stderr.write(f"\n{name}: {exc.message}\n{exc.details.rstrip()}\n")
            bar.advance(1)
    finally:
        bar.close()
    summary = {"to": args.to, "upgraded": upgraded, "failed": failed,
               "already": skipped}
    common.show(args, summary, _summary_text)
    return 1 if failed else 0


def _summary_text(summary: dict[str, Any]) -> str:
    lines = [f"upgraded {len(summary['upgraded'])} to {summary['to']}, "
             f"{len(summary['failed'])} failed, {summary['already']} already on it"]
    lines += [f"  {name}: {reason} (stays on its version)"
              for name, reason in summary["failed"].items()]
    return "\n".join(lines)

