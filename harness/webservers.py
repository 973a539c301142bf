"""Real nginx and Apache httpd for tests and benchmarks, each in its own directory.

One server process serves many sites: `add_site(text)` drops a site file (what
`switchboard deploy-config` prints, plus the Listen line Apache needs) into the server's
`sites/`, checks the whole configuration with the server's own test (`nginx -t`,
`apachectl -t`), reloads, and waits until the site's port answers. A test removes its site
when done (`remove_site`). Nothing is read from or written to /etc: nginx runs with `-p DIR
-c DIR/nginx.conf`, Apache with `-d DIR -f DIR/apache.conf` and the modules it needs loaded
from Debian's module directory. Both stop by their process group (`stop`), never by name.

`reload_command()` is the line a router's direct_reload_command runs for this server.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.net import connectable, free_port
from harness.procs import group_pids, kill_group, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
APACHECTL = shutil.which("apachectl") or "/usr/sbin/apachectl"
APACHE_MODULES_DIR = Path("/usr/lib/apache2/modules")
APACHE_MODULES = (
    "mpm_event", "authz_core", "headers", "rewrite", "proxy", "proxy_http",
    "proxy_wstunnel", "proxy_balancer", "lbmethod_byrequests", "slotmem_shm",
)
START_TIMEOUT_S = 20.0


class WebServer:
    """What nginx and Apache share: a directory, a process group, sites."""

    name = "web server"

    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir
        self.sites = work_dir / "sites"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / "server.log"

    # subclasses: the config, the commands
    def main_config(self) -> str:
        raise NotImplementedError

    def start_command(self) -> list[str]:
        raise NotImplementedError

    def test_command(self) -> list[str]:
        raise NotImplementedError

    def reload_command(self) -> list[str]:
        raise NotImplementedError

    def conf_path(self) -> Path:
        raise NotImplementedError

    def site_text(self, text: str, port: int) -> str:
        return text

    # shared
    def start(self) -> WebServer:
        self.sites.mkdir(parents=True, exist_ok=True)
        self.conf_path().write_text(self.main_config())
        self.check()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.start_command(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_until(self._running_and_listening, START_TIMEOUT_S, f"{self.name} listening")
        return self

    def _running_and_listening(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise HarnessError(f"{self.name} exited: {self.log()[-1500:]}")
        return connectable(self.base_port)

    base_port = 0

    def check(self) -> str:
        """The server's own configuration test; HarnessError with its output if it fails."""
        result = subprocess.run(self.test_command(), capture_output=True, timeout=30)
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0:
            raise HarnessError(f"{shlex.join(self.test_command())} failed:\n{output}")
        return output

    def reload(self) -> None:
        result = subprocess.run(self.reload_command(), capture_output=True, timeout=30)
        if result.returncode != 0:
            raise HarnessError(f"{self.name} reload failed: {result.stderr.decode()[-800:]}")

    def add_site(self, name: str, text: str, port: int | None = None) -> int:
        """Install a site listening on `port` (a free one by default); returns the port once
        the reloaded server answers on it."""
        port = port or free_port()
        path = self.sites / f"{name}.conf"
        path.write_text(self.site_text(text, port))
        try:
            self.check()
        except HarnessError:
            path.unlink()
            raise
        self.reload()
        wait_until(lambda: self._running_and_listening() and connectable(port),
                   START_TIMEOUT_S, f"{self.name} serving site {name} on {port}")
        return port

    def remove_site(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.sites / f"{name}.conf").unlink()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(HarnessError, subprocess.TimeoutExpired):
                self.reload()

    def pids(self) -> list[int]:
        return [] if self.proc is None else group_pids(self.proc.pid)

    def log(self) -> str:
        texts = [p.read_text(errors="replace") for p in (self.log_path, self.dir / "error.log")
                 if p.exists()]
        return "\n".join(texts)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None


class Nginx(WebServer):
    name = "nginx"

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir)
        self.base_port = free_port()

    def conf_path(self) -> Path:
        return self.dir / "nginx.conf"

    def main_config(self) -> str:
        d = self.dir
        return textwrap.dedent(f"""\
            daemon off;
            master_process on;
            worker_processes 1;
            error_log {d}/error.log warn;
            pid {d}/nginx.pid;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                fastcgi_temp_path {d}/fastcgi;
                uwsgi_temp_path {d}/uwsgi;
                scgi_temp_path {d}/scgi;
                server {{
                    listen 127.0.0.1:{self.base_port};
                    location / {{ return 204; }}
                }}
                include {d}/sites/*.conf;
            }}
            """)

    def _args(self) -> list[str]:
        return ["-p", str(self.dir), "-c", str(self.conf_path())]

    def start_command(self) -> list[str]:
        return [NGINX, *self._args()]

    def test_command(self) -> list[str]:
        return [NGINX, "-t", "-q", *self._args()]

    def reload_command(self) -> list[str]:
        return [NGINX, *self._args(), "-s", "reload"]

    def site_text(self, text: str, port: int) -> str:
        # The generated site listens on --listen PORT; tests bind loopback only.
        return text.replace(f"    listen {port};", f"    listen 127.0.0.1:{port};")


class Apache(WebServer):
    name = "apache"

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir)
        self.base_port = free_port()

    def conf_path(self) -> Path:
        return self.dir / "apache.conf"

    def main_config(self) -> str:
        d = self.dir
        modules = "\n".join(f"LoadModule {m}_module {APACHE_MODULES_DIR}/mod_{m}.so"
                            for m in APACHE_MODULES)
        return textwrap.dedent(f"""\
            ServerRoot {d}
            ServerName localhost
            PidFile {d}/apache.pid
            DefaultRuntimeDir {d}
            Mutex file:{d} default
            ErrorLog {d}/error.log
            LogLevel warn
            User nobody
            Group nogroup
            StartServers 1
            ServerLimit 2
            ThreadsPerChild 32
            MaxRequestWorkers 64
            GracefulShutdownTimeout 5
            """) + modules + textwrap.dedent(f"""
            Listen 127.0.0.1:{self.base_port}
            IncludeOptional {d}/sites/*.conf
            """)

    def _args(self) -> list[str]:
        return ["-d", str(self.dir), "-f", str(self.conf_path())]

    def start_command(self) -> list[str]:
        return [APACHE, *self._args(), "-DFOREGROUND"]

    def test_command(self) -> list[str]:
        return [APACHECTL, *self._args(), "-t"]

    def reload_command(self) -> list[str]:
        return [APACHE, *self._args(), "-k", "graceful"]

    def site_text(self, text: str, port: int) -> str:
        return f"Listen 127.0.0.1:{port}\n" + text


def wait_for_file_text(path: Path, needle: str, timeout_s: float) -> None:
    """Until `path` holds `needle` (a router's direct map, say)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.02)
    raise HarnessError(f"{path} never held {needle!r}")
