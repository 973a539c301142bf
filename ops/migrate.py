"""`switchboard migrate NAME --to ADMIN_URL` (and `--back`), `start NAME --reclaim`,
`rm NAME --moved-copy`: moving tenants between standalone hosts (docs/migration.md).

The command talks to the tenant's current host (`--admin`), which does the move with the
target's admin API itself (switchboard/migration.py) and streams each step back: the steps go
to stderr (a progress bar while bytes move, on a terminal), the outcome to stdout. Exit 0 when
the tenant moved; 1 with the reason, and where the tenant serves now, when it did not.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ops import common
from ops.errors import CommandError
from ops.progress import Progress


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register `migrate` and the moved-copy flags of `start` and `rm` (ops/cli.py calls this
    once, after those two exist)."""
    migrate = commands.add_parser(
        "migrate", parents=[common],
        help="move a tenant to another host (pre-copied; a short pause; then forwarded)")
    migrate.add_argument("name", metavar="NAME")
    where = migrate.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="ADMIN_URL|HOST_ID",
                       help="the target host's admin API, e.g. http://host-b:8001 (both hosts "
                            "share admin.key and snapshot.key); in cluster mode its host id "
                            "(ops/cluster.py)")
    where.add_argument("--back", action="store_true",
                       help="back to the host it came from (its forwarding there ends)")
    migrate.set_defaults(handler=cmd_migrate)

    start = commands.choices["start"]
    start.add_argument("--reclaim", action="store_true",
                       help="serve a moved tenant's copy here again (a new epoch): writes made "
                            "on the host it moved to are NOT in it")
    start.set_defaults(handler=cmd_start, plain_start=start.get_default("handler"))
    rm = commands.choices["rm"]
    rm.add_argument("--moved-copy", action="store_true",
                    help="remove the copy a moved tenant left here (refused unless it moved)")
    rm.set_defaults(handler=cmd_rm, plain_rm=rm.get_default("handler"))


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.to and "://" not in args.to:  # a host id: cluster mode
        from ops.cluster import migrate_to_host
        return migrate_to_host(args)

    outcome: dict[str, Any] | None = None
    bar: Progress | None = None
    with common.admin_client(args) as client:
        for event in client.migrate(args.name, None if args.back else args.to):
            step = event.get("step")
            if step == "bytes":
                if bar is None:
                    bar = Progress(f"{args.name}: copying", int(event.get("total") or 0))
                bar.advance(int(event.get("bytes", 0)) - bar.done)
                continue
            if bar is not None:
                bar.close()
                bar = None
            if step in ("done", "failed"):
                outcome = event
                break
            print(f"{args.name}: {event.get('message')}", file=sys.stderr)
    if bar is not None:
        bar.close()
    if outcome is None:
        raise CommandError(f"the move of {args.name} ended without an outcome; `switchboard "
                           f"status {args.name}` on both hosts says where it serves")
    if outcome.get("step") == "failed":
        if getattr(args, "json", False):
            common.print_json(outcome)
        where = {"source": "it still serves on the source host",
                 "target": "it serves on the target host",
                 "unknown": "it is held until the target answers"}.get(
                     str(outcome.get("serving")), "")
        raise CommandError(f"migrating {args.name} failed: {outcome.get('error')}"
                           + (f" ({where}; safe to run again)" if where else ""))
    return common.show(args, outcome, lambda o: f"{args.name} moved to {o.get('moved_to')} "
                     f"(epoch {o.get('epoch')}; requests held {o.get('pause_ms')} ms)")


def cmd_start(args: argparse.Namespace) -> int:
    if not args.reclaim:
        return int(args.plain_start(args))
    print(f"warning: reclaiming {args.name}: writes made on the host it moved to since then "
          "are not in this copy", file=sys.stderr)
    with common.admin_client(args) as client:
        info = client.reclaim(args.name)
        info = client.start(args.name)
    return common.show(args, info, lambda i: str(i.get("state")))


def cmd_rm(args: argparse.Namespace) -> int:
    if not args.moved_copy:
        return int(args.plain_rm(args))
    with common.admin_client(args) as client:
        client.remove_moved_copy(args.name)
    return common.show(args, {"name": args.name, "removed": True}, lambda _: None)
