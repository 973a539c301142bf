"""The `switchboard` command: its parser, `serve`, and the admin API client commands; the
commands of ops/files.py, ops/migrate.py, ops/attach.py, ops/cluster.py and
ops/deploy_config.py register themselves here.

Exit status (the Contract): 0 success; 1 failure, with one line `switchboard: error: <reason>`
on stderr; 2 usage error (argparse). Human-readable output by default, `--json` for scripts.

The admin options (`--admin`, `--key-file`, `--data-dir`, `--json`) are accepted both before
and after the subcommand name: they are defined on the top parser and on every subparser with
`default=SUPPRESS`, so a parser that did not see an option leaves the attribute unset instead
of overwriting the value another parser read, and ops/common.py's `admin_url()` and friends
apply the environment and the defaults afterwards.

Start-up stays fast: httpx (via ops.client), switchboard.server and the snapshot modules are
imported inside the handlers that need them; `ops.errors` lets `main()` recognise their
failures without importing them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ops import attach, cluster, deploy_config, files, migrate
from ops.common import (
    DEFAULT_ADMIN_URL,
    admin_client,
    admin_url,
    print_json,
    show,
    wants_json,
)
from ops.errors import AdminError, CommandError
from switchboard import __version__
from switchboard.config import DEFAULT_DATA_DIR, Config, HostPort
from switchboard.errors import ConfigError, SwitchboardError

if TYPE_CHECKING:
    from ops.client import AdminClient

PROG = "switchboard"

Handler = Callable[[argparse.Namespace], int]


# --- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0) end here without a traceback
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`switchboard ls | head`). Point stdout at /dev/null so the
        # interpreter's final flush does not fail a second time.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        message = _failure_message(exc)
        if message is None:
            raise  # a bug, not an operational failure: keep the traceback
        print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
        return 1


def _failure_message(exc: Exception) -> str | None:
    if isinstance(exc, AdminError):
        return str(exc) + _hint(exc.status, str(exc))
    if isinstance(exc, CommandError | SwitchboardError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return where + (exc.strerror or str(exc))
    return None


def _hint(status: int | None, message: str) -> str:
    if status != 401:
        return ""
    if message.startswith("bad signature"):
        return " (does --key-file hold the server's admin.key?)"
    if message.startswith("stale timestamp"):
        return " (are this host's and the server's clocks in sync?)"
    return ""


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _admin_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run and operate Switchboard, a per-tenant process supervisor.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the router, the supervisor and the admin API")
    serve_options(serve)
    serve.set_defaults(handler=cmd_serve)

    # `config show` takes serve's flags and shows the Config serve would run with here.
    config = commands.add_parser("config", help="show the effective configuration",
                                 parents=[common])
    config_actions = config.add_subparsers(dest="config_command", required=True,
                                           metavar="ACTION")
    show = config_actions.add_parser(
        "show", help="every setting serve would run with here (it takes serve's options), "
                     "and where it came from (default, file, env, flag)")
    serve_options(show)
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print JSON for scripts")
    show.set_defaults(handler=cmd_config_show)

    for name, help_text, handler, positional in [
        ("create", "create tenants", cmd_create, "names"),
        ("ls", "list tenants", cmd_ls, None),
        ("status", "show one tenant", cmd_status, "name"),
        ("start", "start a tenant's worker", cmd_start, "name"),
        ("checkpoint", "write a snapshot now if anything changed", cmd_checkpoint, "name"),
        ("stop", "checkpoint and stop a tenant's worker", cmd_stop, "name"),
        ("rm", "remove a tenant", cmd_rm, "name"),
        ("dashboard", "print a one-time login URL for the web dashboard", cmd_dashboard, None),
    ]:
        sub = commands.add_parser(name, help=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        if positional == "names":
            sub.add_argument("names", nargs="+", metavar="NAME")
        elif positional == "name":
            sub.add_argument("name", metavar="NAME")

    _ls_options(commands.choices["ls"])

    logs = commands.add_parser("logs", parents=[common],
                               help="print a tenant's log (its worker's logging and output)")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-n", "--lines", type=_whole_number, default=100, metavar="N",
                      help="how many of the last lines (default 100)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="then print new lines as they are written, until Ctrl-C")
    logs.set_defaults(handler=cmd_logs)

    # Commands in modules of their own: a parser with parents=[common] and their handlers.
    deploy_config.add_commands(commands, common)
    migrate.add_commands(commands, common)
    attach.add_commands(commands, common)  # attach, pin, unpin, upgrade
    cluster.add_commands(commands, common)  # hosts, failover, db upgrade

    files.add_commands(commands, common)  # export, import, snapshot inspect|verify
    return parser


def _admin_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("admin options (before or after the command)")
    group.add_argument(
        "--admin", metavar="URL", default=argparse.SUPPRESS,
        help=f"admin API URL (env SWITCHBOARD_ADMIN, default {DEFAULT_ADMIN_URL})",
    )
    group.add_argument(
        "--key-file", metavar="PATH", default=argparse.SUPPRESS,
        help="admin key (env SWITCHBOARD_KEY_FILE, default DATA_DIR/admin.key)",
    )
    group.add_argument(
        "--data-dir", metavar="DIR", default=argparse.SUPPRESS,
        help=f"data directory (env SWITCHBOARD_DATA_DIR, default {DEFAULT_DATA_DIR})",
    )
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print JSON for scripts")
    return common


def serve_options(parser: argparse.ArgumentParser) -> None:
    """serve's options, which `config show` takes too."""
    parser.add_argument("--config", metavar="FILE", help="switchboard.toml to read")
    parser.add_argument(
        "--data-dir", metavar="DIR", default=argparse.SUPPRESS,
        help=f"where tenants and admin.key live (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", type=_host_port,
                        help="router address (default 127.0.0.1:8000)")
    parser.add_argument("--admin-listen", metavar="HOST:PORT", type=_host_port,
                        help="admin API address (default 127.0.0.1:8001)")
    parser.add_argument("--app", metavar="MODULE:ATTR", type=_app_ref,
                        help="the tenants' ASGI app (default examples.dabble:app)")
    parser.add_argument("--idle-timeout", metavar="SECONDS", type=_seconds,
                        help="swap a tenant out after this long without requests (default 120)")
    parser.add_argument("--max-resident", metavar="N", type=_positive_int,
                        help="at most this many workers at once (default 32)")
    parser.add_argument("--snapshot-key-file", metavar="FILE",
                        help="the key of snapshot and journal MACs (default <data-dir>/"
                             "snapshot.key; hosts that migrate to each other share it)")
    parser.add_argument("--allow-unsigned", action="store_true", default=None,
                        help="also restore unsigned pickle snapshots (they can run code)")
    parser.add_argument("--advertise-url", metavar="URL",
                        help="this router as other hosts reach it (forwarding, moved_to; "
                             "default http://<listen>)")
    parser.add_argument("--advertise-admin-url", metavar="URL",
                        help="this admin API as other hosts reach it (default "
                             "http://<admin-listen>)")
    parser.add_argument("--cluster", metavar="postgresql://USER@HOST:PORT/DB",
                        help="cluster mode: directory, journals and snapshots in PostgreSQL "
                             "(docs/cluster.md; SWITCHBOARD_CLUSTER_URL)")
    parser.add_argument("--host-id", metavar="ID", help="this host's id in the cluster "
                                                        "(default: the hostname)")
    parser.add_argument("--lease-ttl", metavar="SECONDS", type=_seconds,
                        help="cluster host lease, renewed every third of it (default 10)")


def _ls_options(ls: argparse.ArgumentParser) -> None:
    from ops.output import SORT_KEYS

    ls.add_argument("--sort", choices=SORT_KEYS, default="name",
                    help="order: name and state A-Z; last_request, rss, restarts highest first")
    ls.add_argument("--state", metavar="STATE[,STATE...]", type=_states,
                    help="only tenants in these states (e.g. running,failed)")
    ls.add_argument("--watch", action="store_true",
                    help="refresh every --interval seconds until Ctrl-C (in place on a "
                         "terminal; piped, each listing follows the last, one JSON array a "
                         "line with --json)")
    ls.add_argument("--interval", metavar="SECONDS", type=_interval, default=2.0,
                    help="seconds between --watch refreshes (default 2)")


def _states(text: str) -> frozenset[str]:
    from switchboard.states import TenantState

    known = {s.value for s in TenantState}
    wanted = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(wanted - known)
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown state {', '.join(unknown) or repr(text)} "
            f"(states: {', '.join(s.value for s in TenantState)})")
    return wanted


def _interval(text: str) -> float:
    value = _seconds(text)
    if value < 0.1:
        raise argparse.ArgumentTypeError(f"expected at least 0.1 seconds, got {text!r}")
    return value


def _host_port(text: str) -> str:
    try:
        HostPort.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _app_ref(text: str) -> str:
    module, sep, attr = text.partition(":")
    if not (module and sep and attr):
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTR, got {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text!r}")
    return value


def _whole_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


# --- serve -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    from switchboard.server import run  # heavy: the router, uvicorn, the supervisor

    return int(run(config, lambda: serve_config(args)))  # SIGHUP loads it again


def serve_config(args: argparse.Namespace) -> Config:
    """The Config `serve` runs with: the config file < SWITCHBOARD_* < these flags."""
    return serve_config_with_sources(args)[0]


def cmd_config_show(args: argparse.Namespace) -> int:
    from ops.output import config_rows, config_table

    config, sources = serve_config_with_sources(args)
    rows = config_rows(config, sources)
    return show(args, rows, config_table)


def serve_config_with_sources(args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    """`serve_config`, and where each setting came from (switchboard.config)."""
    from switchboard.config import load_with_sources

    return load_with_sources(
        args.config,
        overrides={
            "data_dir": getattr(args, "data_dir", None),
            "listen": args.listen,
            "admin_listen": args.admin_listen,
            "app": args.app,
            "idle_timeout_s": args.idle_timeout,
            "max_resident": args.max_resident,
            "snapshot_key_file": args.snapshot_key_file,
            "allow_unsigned": args.allow_unsigned,
            "advertise_url": args.advertise_url,
            "advertise_admin_url": args.advertise_admin_url,
            "cluster_url": getattr(args, "cluster", None),
            "host_id": getattr(args, "host_id", None),
            "lease_ttl_s": getattr(args, "lease_ttl", None),
        },
    )


# --- admin API client commands ---------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    from ops.client import check_tenant_name

    names: list[str] = args.names
    for name in names:  # all names checked before any is created
        check_tenant_name(name)
    created: list[dict[str, Any]] = []
    with admin_client(args) as client:
        try:
            # Names go in batches: one transaction each on the server, not one a name.
            for batch in client.create_batches(names):
                created.extend(batch)
                if not wants_json(args):
                    print("\n".join(info["name"] for info in batch), flush=True)
        finally:
            # Scripts learn which names were created even when a later one failed.
            if wants_json(args) and created:
                print_json(created)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from ops.output import select_tenants, tenant_table

    def listing(client: AdminClient) -> list[dict[str, Any]]:
        return select_tenants(client.list_tenants(), args.state, args.sort)

    with admin_client(args) as client:
        if args.watch:
            return _watch(args, lambda: listing(client))
        return show(args, listing(client), tenant_table)


def _watch(args: argparse.Namespace, listing: Callable[[], list[dict[str, Any]]]) -> int:
    """`ls --watch`: list every `args.interval` seconds until Ctrl-C (exit 0). On a terminal
    the table is redrawn in place; otherwise each listing is printed after the last (with
    --json one compact array a line, so a script can read them as they come)."""
    import time

    from ops.output import tenant_table

    redraw = sys.stdout.isatty() and not wants_json(args)
    try:
        while True:
            rows = listing()
            if wants_json(args):
                print(json.dumps(rows, default=str), flush=True)
            elif redraw:
                stamp = time.strftime("%H:%M:%S")
                sys.stdout.write("\x1b[H\x1b[2J" + f"every {args.interval:g}s, {stamp}, "
                                 "Ctrl-C to stop\n\n" + tenant_table(rows) + "\n")
                sys.stdout.flush()
            else:
                print(tenant_table(rows) + "\n", flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ops.output import tenant_status

    with admin_client(args) as client:
        info = client.get(args.name)
    return show(args, info, tenant_status)


def _state_change(operation: str) -> Handler:
    """`start NAME` / `stop NAME`: print the tenant's new state, or its JSON."""

    def handler(args: argparse.Namespace) -> int:
        with admin_client(args) as client:
            info: dict[str, Any] = getattr(client, operation)(args.name)
        return show(args, info, lambda i: str(i.get("state")))

    return handler


cmd_start = _state_change("start")
cmd_stop = _state_change("stop")


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        result = client.checkpoint(args.name)
    return show(args, result, _checkpoint_text)


def _checkpoint_text(result: dict[str, Any]) -> str:
    generation = result.get("generation")
    return str(generation) if result.get("changed") and generation is not None else "unchanged"


def cmd_rm(args: argparse.Namespace) -> int:
    with admin_client(args) as client:
        client.remove(args.name)
    return show(args, {"name": args.name, "removed": True}, lambda _: None)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Print a login URL for the dashboard at `/` of the admin listener: it works once, within
    its expiry, and sets a session cookie in the browser that opens it."""
    with admin_client(args) as client:
        login = client.dashboard_login()
    url = admin_url(args).rstrip("/") + str(login.get("path", ""))
    return show(args, {"url": url, "expires_in_s": login.get("expires_in_s")},
                 lambda shown: shown["url"])


def cmd_logs(args: argparse.Namespace) -> int:
    """The last lines of the tenant's log; with -f, then every new line until Ctrl-C (exit 0)
    or the server ends the stream. --json: {"name", "lines"}, or with -f one {"name", "line"}
    object a line."""
    from ops.client import check_tenant_name

    name = check_tenant_name(args.name)
    with admin_client(args) as client:
        if not args.follow:
            lines = client.logs(name, args.lines).splitlines()
            return show(args, {"name": name, "lines": lines},
                         lambda value: "\n".join(value["lines"]) or None)
        try:
            for line in client.follow_logs(name, args.lines):
                shown = json.dumps({"name": name, "line": line}) if wants_json(args) else line
                print(shown, flush=True)
        except KeyboardInterrupt:
            pass  # the operator is done watching: not a failure
    return 0


# --- export and import -----------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
