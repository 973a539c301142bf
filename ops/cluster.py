"""Cluster commands (docs/cluster.md), through any host's admin API: `switchboard hosts
[--json]`, `failover --from HOST_ID` and `migrate NAME --to HOST_ID` (ops/migrate.py's
command sends a target that is not a URL to `migrate_to_host`); and `db upgrade`, straight to
PostgreSQL (create or migrate the schema before the first host starts, or after an upgrade of
Switchboard; `serve --cluster` does it at start too)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ops import common
from ops.errors import CommandError

HOST_COLUMNS = ("ID", "ALIVE", "LEASE", "RESIDENT", "ROUTER", "ADMIN")


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register `hosts`, `failover` and `db` (ops/cli.py calls this once)."""
    hosts = commands.add_parser("hosts", parents=[common],
                                help="the hosts of this cluster and their leases")
    hosts.set_defaults(handler=cmd_hosts)
    failover = commands.add_parser(
        "failover", parents=[common],
        help="declare a cluster host dead now: its tenants move to live hosts on their "
             "next request")
    failover.add_argument("--from", dest="host", metavar="HOST_ID", required=True)
    failover.set_defaults(handler=cmd_failover)
    db = commands.add_parser("db", parents=[common], help="the cluster database")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", parents=[common],
                                 help="create or migrate the cluster schema in PostgreSQL")
    upgrade.add_argument("--cluster", metavar="postgresql://USER@HOST:PORT/DB",
                         help="the database (default SWITCHBOARD_CLUSTER_URL)")
    upgrade.set_defaults(handler=cmd_db_upgrade)


def cmd_hosts(args: argparse.Namespace) -> int:
    from ops.output import table

    with common.admin_client(args) as client:
        hosts = client.cluster_hosts()
    if common.wants_json(args):
        common.print_json(hosts)
        return 0
    rows = [(h["id"], "yes" if h["alive"] else "no", f"{h['lease_expires_in_s']:.1f}s",
             f"{h['resident']}/{h['max_resident']}", h["router_url"], h["admin_url"])
            for h in hosts]
    print(table(HOST_COLUMNS, rows))
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    with common.admin_client(args) as client:
        client.failover(args.host)
    print(f"host {args.host} declared dead: its tenants are taken over by live hosts on "
          "their next request", file=sys.stderr)
    return 0


def migrate_to_host(args: argparse.Namespace) -> int:
    """`migrate NAME --to HOST_ID` (ops/migrate.py sends a target that is not a URL here)."""
    with common.admin_client(args) as client:
        moved = client.cluster_migrate(args.name, args.to)
    if common.wants_json(args):
        common.print_json(moved)
    elif moved.get("unchanged"):
        print(f"{args.name} is on host {args.to} already")
    else:
        print(f"{args.name} moved to host {moved['host']} at epoch {moved['epoch']} "
              f"(requests held {moved['pause_ms']:.0f} ms)")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    import psycopg

    from switchboard.cluster.schema import SchemaTooNew, upgrade

    url = args.cluster or os.environ.get("SWITCHBOARD_CLUSTER_URL")
    if not url:
        raise CommandError("no database: pass --cluster postgresql://USER@HOST:PORT/DB or set "
                           "SWITCHBOARD_CLUSTER_URL")
    try:
        before, after = upgrade(url)
    except (psycopg.Error, SchemaTooNew) as exc:
        raise CommandError(f"cannot upgrade the cluster database: {exc}") from exc
    print(f"schema version {after}" + ("" if before == after else f" (was {before})"))
    return 0
