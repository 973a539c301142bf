"""`switchboard serve`: the router process. Wires the table, supervisor, spawner, proxy and
admin API together, and owns the signals.

Signals only set a flag here; the main coroutine acts on it. First SIGTERM or SIGINT: stop
accepting, checkpoint and stop every worker, exit 0. A second one: kill the workers and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from contract import serving
from snapshots.layout import DataLayout
from switchboard import listen, logs, private, runfile
from switchboard.config import Config
from switchboard.errors import ConfigError
from switchboard.migration_api import Moving
from switchboard.proxy import Proxy
from switchboard.service import TenantOperations
from switchboard.spawner import Spawner
from switchboard.supervisor import Supervisor
from switchboard.table import SqliteDirectory
from switchboard.upstream import IDLE_UPSTREAM_S

log = logging.getLogger("switchboard.server")


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.signals: asyncio.Queue[int] = asyncio.Queue()

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
        directory = SqliteDirectory(config.data_dir / "tenants.sqlite")
        spawner = Spawner(use_zygote=config.use_zygote, zygote_wait_s=config.zygote_wait_s)
        supervisor = Supervisor(config, directory, spawner, await directory.list(), layout,
                                worker_gid)
        service = TenantOperations(supervisor, directory, layout)
        proxy = Proxy(config, supervisor, supervisor.counters)
        moving = Moving(config, supervisor, directory, layout, service, proxy)
        loop = asyncio.get_running_loop()
        try:
            front = await loop.create_server(proxy.protocol, config.listen.host, config.listen.port,
                                             backlog=2048, reuse_address=True)
            admin = await self.start_admin(build_admin_app(
                service, Verifier(keys, nonces=nonces), max_import_bytes=config.max_import_bytes,
                staging_dir=layout.ensure_transfers_dir, metrics_token=config.metrics_token,
                extra_routes=moving.routes))
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            directory.close()
            return 1
        bound = publish_addresses(config.data_dir, front, admin)
        moving.started(bound.listen, bound.admin_listen)
        if config.use_zygote:
            spawner.prestart_zygote(config.app)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.signals.put_nowait, signum)
        setproctitle.setproctitle(f"switchboard: router {bound.listen} admin {bound.admin_listen}")
        log.info("switchboard serving %d tenants on http://%s/t/<tenant>/ "
                 "(admin http://%s, data %s)",
                 len(supervisor), bound.listen, bound.admin_listen, config.data_dir)
        reconcile = asyncio.ensure_future(supervisor.run())
        janitor = asyncio.ensure_future(self.close_idle_upstreams(proxy))

        sig = await self.signals.get()
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
        proxy.close()
        admin.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.shutdown(), 5)
        await spawner.close()
        directory.close()
        runfile.remove(config.data_dir, os.getpid())
        log.info("switchboard stopped")
        return 0

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


def run(config: Config) -> int:
    private.restrict_umask()  # before any file, socket or worker exists: all of them private
    logs.configure(config.log_format, config.log_level)
    try:
        import uvloop

        return int(uvloop.run(Router(config).main()))
    except ImportError:
        return asyncio.run(Router(config).main())
