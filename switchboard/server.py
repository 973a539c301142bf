"""`switchboard serve`: the router process. Wires the table, supervisor, spawner, proxy and
admin API together, and owns the signals.

Signals only set a flag here; the main coroutine acts on it. First SIGTERM or SIGINT: stop
accepting, checkpoint and stop every worker, exit 0. A second one: kill the workers and exit.
SIGHUP: re-read the settings and apply those that can change while running
(switchboard/reload.py). Under systemd's Type=notify each step is reported to
$NOTIFY_SOCKET (switchboard/notify.py): READY=1 once listening, RELOADING=1 then READY=1
around a reload, STOPPING=1 at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from contract import serving
from snapshots.layout import DataLayout
from switchboard import listen, logs, private, reload, runfile
from switchboard.cluster.api import ClusterApi
from switchboard.config import Config
from switchboard.debugapi import debug_routes
from switchboard.debugging import DebugOperations
from switchboard.direct import DirectMap
from switchboard.directory import Directory
from switchboard.edge import TrustedProxies
from switchboard.errors import ConfigError
from switchboard.migration_api import Moving
from switchboard.notify import Notifier
from switchboard.proxy import Proxy
from switchboard.service import TenantOperations
from switchboard.spawner import Spawner
from switchboard.supervisor import Supervisor
from switchboard.table import SqliteDirectory
from switchboard.upstream import IDLE_UPSTREAM_S

if TYPE_CHECKING:
    from switchboard.cluster.pgdirectory import PgDirectory

log = logging.getLogger("switchboard.server")


class Router:
    def __init__(self, config: Config, load_config: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.load_config = load_config  # what SIGHUP reloads from; None: reload changes nothing
        self.signals: asyncio.Queue[int] = asyncio.Queue()
        self.notifier = Notifier()

    async def main(self) -> int:
        import setproctitle

        from switchboard.admin import build_admin_app
        from switchboard.nonces import SeenNonces
        from switchboard.signing import AdminKeys, Verifier, ensure_key

        config = self.config
        try:
            private.secure_data_dir(config.data_dir)
            for key_file in (config.key_file, config.snapshot_key_path):
                private.check_key_file(key_file)
            ensure_key(config.key_file)
            keys = AdminKeys(config.key_file)  # and admin.key.next while rotating
            ensure_key(config.snapshot_key_path)  # the workers' MAC key; they read it themselves
            nonces = SeenNonces.open(config.nonce_file)  # replays stay refused across restarts
            layout = DataLayout(config.data_dir)
            worker_gid = listen.worker_group_id(config.worker_group)
            if config.worker_transport == "unix":
                listen.prepare_run_dir(layout.run_dir, worker_gid)
        except (ConfigError, OSError) as exc:
            log.error("cannot start: %s", exc)
            return 1
        if config.cluster_url:  # cluster mode: the directory is in PostgreSQL (docs/cluster.md)
            from switchboard.cluster import node as cluster
            os.environ["SWITCHBOARD_CLUSTER_URL"] = config.cluster_url  # the zygote preloads
            try:
                directory: Directory = await cluster.open_directory(config)
            except ConfigError as exc:
                log.error("cannot start: %s", exc)
                return 1
        else:
            directory = SqliteDirectory(config.data_dir / "tenants.sqlite")
        spawner = Spawner(use_zygote=config.use_zygote, zygote_wait_s=config.zygote_wait_s)
        supervisor = Supervisor(config, directory, spawner, await directory.list(), layout,
                                worker_gid)
        service = TenantOperations(supervisor, directory, layout)
        proxy = Proxy(config, supervisor, supervisor.counters)
        moving = Moving(config, supervisor, directory, layout, service, proxy)
        cluster_api = ClusterApi()  # /v1/cluster/*: answers 409 unless in cluster mode
        loop = asyncio.get_running_loop()
        try:
            front = await loop.create_server(proxy.protocol, config.listen.host, config.listen.port,
                                             backlog=2048, reuse_address=True)
            admin = await self.start_admin(build_admin_app(
                service, Verifier(keys, nonces=nonces), max_import_bytes=config.max_import_bytes,
                staging_dir=layout.ensure_transfers_dir, metrics_token=config.metrics_token,
                extra_routes=[*moving.routes, *cluster_api.routes(), *debug_routes(
                    DebugOperations(supervisor, directory, layout))]))
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            directory.close()
            return 1
        if config.direct_mode:  # before any tenant starts; with the port really bound
            supervisor.env.direct = direct_map(config, runfile.bound_address(front.sockets))
            try:
                await supervisor.env.direct.start()
            except OSError as exc:
                log.error("cannot start: direct mode: %s", exc)
                front.close()
                directory.close()
                return 1
        bound = publish_addresses(config.data_dir, front, admin)
        moving.started(bound.listen, bound.admin_listen)
        node = None
        if config.cluster_url:
            try:
                node = await cluster.join(config, cast("PgDirectory", directory), supervisor,
                                          router_url=moving.peers.router_url,
                                          admin_url=moving.peers.admin_url)
                cluster_api.directory, cluster_api.migrator = node.directory, node.migrator
                cluster_api.routing, cluster_api.node = node.routing, node
            except ConfigError as exc:
                log.error("cannot start: %s", exc)
                front.close()
                directory.close()
                return 1
        if config.use_zygote:
            # The default code version's (switchboard/versions.py); others start on first use.
            spawner.prestart_zygote(config.app,
                                    config.code_versions.get(config.default_code_version))
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.signals.put_nowait, signum)
        setproctitle.setproctitle(f"switchboard: router {bound.listen} admin {bound.admin_listen}")
        log.info("switchboard serving %d tenants on http://%s/t/<tenant>/ "
                 "(admin http://%s, data %s)",
                 len(supervisor), bound.listen, bound.admin_listen, config.data_dir)
        reconcile = asyncio.ensure_future(supervisor.run())
        janitor = asyncio.ensure_future(self.close_idle_upstreams(proxy))
        self.notifier.ready(f"serving on {bound.listen}, admin {bound.admin_listen}")

        while (sig := await self.signals.get()) == signal.SIGHUP:
            self.handle_sighup(supervisor, proxy)
        self.notifier.stopping(f"checkpointing and stopping {supervisor.resident_count()} "
                               "workers")
        log.info("got %s: checkpointing and stopping %d workers", signal.Signals(sig).name,
                 supervisor.resident_count())
        front.close()
        graceful = asyncio.ensure_future(supervisor.shutdown())
        second = asyncio.ensure_future(self.signals.get())
        await asyncio.wait({graceful, second}, return_when=asyncio.FIRST_COMPLETED)
        if not graceful.done():
            log.warning("second signal: killing workers without waiting")
            supervisor.kill_all()
            graceful.cancel()
        second.cancel()
        for task in (reconcile, janitor):
            task.cancel()
        if node is not None:  # the workers stored their last snapshots: hand over at once
            await node.leave()
        if supervisor.env.direct is not None:
            supervisor.env.direct.close()
        proxy.close()
        admin.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.shutdown(), 5)
        await spawner.close()
        directory.close()
        runfile.remove(config.data_dir, os.getpid())
        log.info("switchboard stopped")
        return 0

    def handle_sighup(self, supervisor: Supervisor, proxy: Proxy) -> None:
        """Reload the settings (switchboard/reload.py) and hand the new Config to every part
        that reads it per request or per decision."""
        self.notifier.reloading()
        if self.load_config is None:
            log.warning("SIGHUP: no configuration source to reload from; nothing changed")
        else:
            config, changed = reload.reloaded(self.config, self.load_config)
            if changed:
                self.config = config
                supervisor.config = supervisor.env.config = proxy.config = config
                proxy.trusted = TrustedProxies(config.trusted_proxies)
                for peer in proxy.forwarding.peer_addresses if proxy.forwarding else ():
                    proxy.trusted.add(peer)  # hosts tenants moved to or from (peers.py)
                proxy.limits = dataclasses.replace(proxy.limits,
                                                   max_body_bytes=config.max_body_bytes)
                logging.getLogger().setLevel(config.log_level.upper())
                direct = supervisor.env.direct
                if direct is not None:
                    direct.reload_command = shlex.split(config.direct_reload_command)
                    direct.reload_delay_s = config.direct_reload_delay_s
                    direct.drain_s = config.direct_drain_s
        self.notifier.ready("configuration reloaded")

    async def start_admin(self, app: Any) -> serving.Server:
        server = serving.Server(app, host=self.config.admin_listen.host,
                                port=self.config.admin_listen.port, lifespan="off",
                                log_config=None, access_log=False, timeout_graceful_shutdown=2)
        try:
            await server.start()
        except serving.ServerStartError as exc:
            raise OSError(f"cannot listen on {self.config.admin_listen}") from exc
        return server

    async def close_idle_upstreams(self, proxy: Proxy) -> None:
        while True:
            await asyncio.sleep(IDLE_UPSTREAM_S / 4)
            proxy.pool.close_idle_older_than(IDLE_UPSTREAM_S)


def publish_addresses(data_dir: Path, front: asyncio.Server,
                      admin: serving.Server) -> runfile.RouterAddresses:
    """Write `<data-dir>/router.json` (switchboard.runfile) with the addresses really bound,
    so whoever started this router with port 0 learns its ports from the router itself."""
    bound = runfile.RouterAddresses(
        pid=os.getpid(),
        listen=runfile.bound_address(front.sockets),
        admin_listen=runfile.bound_address(admin.sockets),
    )
    try:
        runfile.write(data_dir, bound)
    except OSError as exc:  # the router still serves on the ports it was given
        log.warning("cannot write %s: %s", runfile.path_in(data_dir), exc)
    return bound


def direct_map(config: Config, bound: str) -> DirectMap:
    """The front server's map of resident workers (switchboard/direct.py); `bound` is the
    router's listen address as bound (HOST:PORT)."""
    if config.worker_transport == "unix" and not config.worker_group:
        log.warning("direct mode with worker_transport = \"unix\" and no worker_group: the "
                    "web server cannot open the workers' sockets and sends every request to "
                    "the router; set worker_transport = \"tcp\"")
    host, _, port = bound.rpartition(":")
    host = host.strip("[]")
    router_host = "127.0.0.1" if host in ("", "0.0.0.0") else (
        "[::1]" if host == "::" else f"[{host}]" if ":" in host else host)
    return DirectMap(
        config.direct_mode, config.data_dir / "direct", f"{router_host}:{port}",
        base_domain=config.base_domain if config.routing == "host" else "",
        reload_command=config.direct_reload_command,
        reload_delay_s=config.direct_reload_delay_s, drain_s=config.direct_drain_s)


def run(config: Config, load_config: Callable[[], Config] | None = None) -> int:
    """Serve until stopped. `load_config` loads the settings again (from the same file,
    environment and flags) when SIGHUP asks for a reload."""
    private.restrict_umask()  # before any file, socket or worker exists: all of them private
    logs.configure(config.log_format, config.log_level)
    router = Router(config, load_config)
    try:
        import uvloop

        return int(uvloop.run(router.main()))
    except ImportError:
        return asyncio.run(router.main())
