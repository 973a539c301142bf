r"""Direct mode: the files that tell the front server where each resident tenant's worker
listens, so it sends their requests straight to the worker, and the router only those of
tenants that are not running (it starts them). Runs in the router.

With `direct_mode = "nginx"` the router keeps one file, `<data-dir>/direct/nginx.conf`,
included at http level by the site `switchboard deploy-config nginx --direct` prints:

    upstream switchboard_t_acme {             one per resident tenant, connections kept alive
        server 127.0.0.1:20001 max_fails=0;   or `server unix:<data-dir>/run/7.sock ...`
        keepalive 32;
    }
    map $switchboard_tenant $switchboard_worker {
        default "";                           not resident: the site sends it to the router
        acme switchboard_t_acme;
    }

With `direct_mode = "apache"`, `<data-dir>/direct/apache.conf`, included inside the site's
VirtualHost (so the file is read by the server as it starts, as root, like the nginx one: the
data dir stays private): a balancer per resident tenant whose first member is the worker and
whose hot standby is the router (with the path prefix the router would take off), and the
rewrite rule that sends the tenant's requests to it:

    <Proxy "balancer://switchboard-acme">
        BalancerMember "http://127.0.0.1:20001" retry=1 upgrade=websocket
        BalancerMember "http://127.0.0.1:8000/t/acme" status=+H retry=0 upgrade=websocket
    </Proxy>
    RewriteRule "^/t/acme(/.*)$" "balancer://switchboard-acme$1" [P,L]       path mode
    RewriteCond "%{HTTP_HOST}" "^acme\.example\.com(:[0-9]+)?$" [NC]          host mode
    RewriteRule "^(/.*)$" "balancer://switchboard-acme$1" [P,L]

Tenant names are `[a-z0-9][a-z0-9-]{0,62}` (contract.names), safe as they stand in both
syntaxes. Files are replaced whole (temp file, rename), never edited in place, and rewritten
from the empty state when the router starts.

When. A tenant is published once its worker is ready (it may be used at once: a request the
server sends before the reload simply goes through the router). Before a worker is stopped
(idle, evicted, operator, shutdown) its tenant is withdrawn first: the file is rewritten, the
server reloaded, and the stop waits `direct_drain_s` more while the server's old processes
finish with the worker; requests that arrive in the meantime go through the router, which
still forwards them to the running worker (and keeps it, if they make it busy again). Changes
within `direct_reload_delay_s` share one write and one run of `direct_reload_command`.

What still reaches a gone worker (a crash) is refused at connect, and the site sends it to
the router: Apache by the balancer's standby member (the worker member is then left out for
its `retry=1` second, else Apache would try it again instead of the standby); nginx by
error_page, for an idempotent request without a body (nginx cannot send a streamed body a
second time: such a request gets 503 with Retry-After, not applied, and the client sends it
again). A request the dying worker had already read gets 502, as from the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import time
from pathlib import Path

log = logging.getLogger("switchboard.direct")

RELOAD_TIMEOUT_S = 30.0
NGINX_KEEPALIVE = 32  # idle connections each nginx worker keeps to one tenant's worker, at most

Address = str | int  # a Unix socket path, or a loopback port


class DirectMap:
    """Which resident tenant listens where, as the front server reads it."""

    def __init__(self, server: str, directory: Path, router: str, *, base_domain: str = "",
                 reload_command: str = "", reload_delay_s: float = 0.2,
                 drain_s: float = 1.0) -> None:
        if server not in ("nginx", "apache"):
            raise ValueError(f"direct mode for {server!r}: nginx or apache")
        self.server = server
        self.directory = directory
        self.router = router  # HOST:PORT as the front server reaches the router
        self.base_domain = base_domain  # host mode when set, else path mode
        self.reload_command = shlex.split(reload_command)
        self.reload_delay_s = reload_delay_s
        self.drain_s = drain_s
        self.entries: dict[str, Address] = {}
        self.reloads = 0  # reload commands run (for tests and logs)
        self._pending: asyncio.Future[None] | None = None  # the next flush, once scheduled
        self._flushing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- what the supervisor calls ----

    async def start(self) -> None:
        """Write the empty files (a tenant of an earlier run is not resident) and reload."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.write()
        await self.reload()

    def publish(self, name: str, address: Address | None) -> None:
        """`name`'s worker is ready at `address`."""
        if address is None or self.entries.get(name) == address:
            return
        self.entries[name] = address
        self._changed()

    def discard(self, name: str) -> None:
        """`name`'s worker is gone (or going) without waiting for the reload."""
        if self.entries.pop(name, None) is not None:
            self._changed()

    async def withdraw(self, name: str) -> None:
        """Take `name` out before its worker stops: returns once the server was reloaded
        without it and `drain_s` has passed."""
        if name not in self.entries:
            return
        done = self._changed()
        self.entries.pop(name)
        await asyncio.shield(done)
        await asyncio.sleep(self.drain_s)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # ---- batching ----

    def _changed(self) -> asyncio.Future[None]:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._flush_later(self._pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self._pending

    async def _flush_later(self, done: asyncio.Future[None]) -> None:
        try:
            await asyncio.sleep(self.reload_delay_s)
            async with self._flushing:  # one reload at a time, in order
                self._pending = None  # changes from here on wait for the next flush
                try:
                    self.write()
                except OSError as exc:
                    log.error("direct mode: cannot write %s: %s", self.directory, exc)
                await self.reload()
        finally:
            if not done.done():
                done.set_result(None)

    # ---- the files ----

    def write(self) -> None:
        if self.server == "nginx":
            _replace(self.directory / "nginx.conf", self.nginx_text())
        else:
            _replace(self.directory / "apache.conf", self.apache_text())

    def header(self) -> str:
        return (f"# Written by the switchboard router (switchboard/direct.py) at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {len(self.entries)} resident "
                f"tenants. Do not edit; it is rewritten as tenants start and stop.\n")

    def nginx_text(self) -> str:
        lines = [self.header()]
        for name, address in sorted(self.entries.items()):
            server = f"unix:{address}" if isinstance(address, str) else f"127.0.0.1:{address}"
            lines.append(f"upstream switchboard_t_{name} {{\n    server {server} max_fails=0;\n"
                         f"    keepalive {NGINX_KEEPALIVE};\n}}\n")
        lines.append('map $switchboard_tenant $switchboard_worker {\n    default "";\n')
        lines += [f"    {name} switchboard_t_{name};\n" for name in sorted(self.entries)]
        lines.append("}\n")
        return "".join(lines)

    def apache_text(self) -> str:
        lines = [self.header()]
        host = self.base_domain.replace(".", "\\.")
        for name, address in sorted(self.entries.items()):
            worker = (f"unix:{address}|http://localhost" if isinstance(address, str)
                      else f"http://127.0.0.1:{address}")
            balancer = f"balancer://switchboard-{name}"
            prefix = "" if self.base_domain else f"/t/{name}"
            lines.append(
                f'<Proxy "{balancer}">\n'
                f'    BalancerMember "{worker}" retry=1 upgrade=websocket\n'
                f'    BalancerMember "http://{self.router}{prefix}" status=+H retry=0 '
                f"upgrade=websocket\n</Proxy>\n")
            if self.base_domain:
                lines.append(f'RewriteCond "%{{HTTP_HOST}}" "^{name}\\.{host}(:[0-9]+)?$" [NC]\n'
                             f'RewriteRule "^(/.*)$" "{balancer}$1" [P,L]\n')
            else:
                lines.append(f'RewriteRule "^/t/{name}(/.*)$" "{balancer}$1" [P,L]\n')
        return "".join(lines)

    # ---- the reload ----

    async def reload(self) -> None:
        """Run direct_reload_command (if any), bounded by RELOAD_TIMEOUT_S; a failure is
        logged (requests keep working through the router)."""
        if not self.reload_command:
            return
        self.reloads += 1
        try:
            process = await asyncio.create_subprocess_exec(
                *self.reload_command, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            log.error("direct mode: cannot run %s: %s", shlex.join(self.reload_command), exc)
            return
        try:
            output, _ = await asyncio.wait_for(process.communicate(), RELOAD_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            log.error("direct mode: %s took over %gs; killed", shlex.join(self.reload_command),
                      RELOAD_TIMEOUT_S)
            return
        if process.returncode != 0:
            log.error("direct mode: %s failed (exit %s): %s", shlex.join(self.reload_command),
                      process.returncode, output.decode(errors="replace").strip()[-500:])


def _replace(path: Path, text: str) -> None:
    """Replace `path` whole: a reader sees the old file or the new one, never half of one."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    os.replace(temp, path)
