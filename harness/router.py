"""A real `switchboard serve` for tests and benchmarks, on ports it picks itself.

`RouterProcess.start()` runs the router with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`
in its own session, then waits until (1) `<data-dir>/router.json` (switchboard.runfile) names
this process's pid and the ports it bound, and (2) `GET /_switchboard/health` on that listener
answers 200 with the same pid. A port taken by someone else can neither make the router
look ready nor make it fail to bind, which is the race `free_port()` had.

Admin calls go through `AdminAuth` (ops.client), the same signing the CLI uses.
`kill_group()` kills the router's whole process group; callers run it in a teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from harness.errors import AdminCallFailed, HarnessError, RouterExited
from harness.procs import cmdline, group_pids, kill_group, wait_until
from ops.client import AdminAuth
from switchboard import runfile
from switchboard.signing import load_key

ROOT = Path(__file__).resolve().parent.parent
SWITCHBOARD = Path(sys.executable).parent / "switchboard"
HEALTH_PATH = "/_switchboard/health"


class RouterProcess:
    """One `switchboard serve` process. Addresses (`url`, `port`, `admin_url`, ...) are known
    once `start()` has returned."""

    def __init__(self, data_dir: Path, *, app: str | None = None, idle_timeout_s: float = 120,
                 max_resident: int = 32, env: Mapping[str, str] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.app = app
        self.idle_timeout_s = idle_timeout_s
        self.max_resident = max_resident
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args)
        self.log_path = data_dir / "router.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: runfile.RouterAddresses | None = None
        self._admin_http: httpx.Client | None = None

    # --- addresses ---------------------------------------------------------------------------

    def _started(self) -> runfile.RouterAddresses:
        if self.addresses is None:
            raise HarnessError("the router has not been started")
        return self.addresses

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def url(self) -> str:
        return f"http://{self._started().listen}"

    @property
    def admin_url(self) -> str:
        return f"http://{self._started().admin_listen}"

    @property
    def port(self) -> int:
        return int(self._started().listen.rpartition(":")[2])

    @property
    def admin_port(self) -> int:
        return int(self._started().admin_listen.rpartition(":")[2])

    @property
    def key_file(self) -> Path:
        return self.data_dir / "admin.key"

    # --- starting ----------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """The environment before the router's own settings (subclasses narrow it)."""
        return dict(os.environ, PYTHONPATH=str(ROOT))

    def env(self) -> dict[str, str]:
        """For the router and for `switchboard` client commands aimed at it."""
        env = dict(self.base_env(), SWITCHBOARD_DATA_DIR=str(self.data_dir),
                   SWITCHBOARD_KEY_FILE=str(self.key_file), SWITCHBOARD_LOG_FORMAT="json")
        if self.addresses is not None:
            env["SWITCHBOARD_ADMIN"] = self.admin_url
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        args = [str(SWITCHBOARD), "serve", "--data-dir", str(self.data_dir),
                "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--idle-timeout", str(self.idle_timeout_s),
                "--max-resident", str(self.max_resident), *self.extra_args]
        if self.app:
            args += ["--app", self.app]
        return args

    def spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start the process in its own session, output appended to `log_path`."""
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                    start_new_session=True)

    def start(self, timeout_s: float = 30) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError(f"router {self.proc.pid} is already running")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # serve wants it private
        self.addresses = None
        self.proc = self.spawn(self.command(), self.env())
        wait_until(self.ready, timeout_s, f"switchboard serve (pid {self.proc.pid}) ready",
                   step_s=0.02)
        return self

    def ready(self) -> bool:
        """One look: has this process published its addresses, and does it answer health?"""
        proc = self.proc
        if proc is None:
            raise HarnessError("the router has not been started")
        if proc.poll() is not None:
            raise RouterExited(f"switchboard serve exited {proc.returncode}: "
                               f"{self.log()[-2000:]}")
        addresses = runfile.read(self.data_dir)
        if addresses is None or addresses.pid != proc.pid:
            return False  # not yet written, or left over from an earlier router
        if not _healthy(f"http://{addresses.listen}{HEALTH_PATH}", proc.pid):
            return False
        self.addresses = addresses
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- admin API ---------------------------------------------------------------------------

    def admin_http(self) -> httpx.Client:
        """An httpx client for the admin API, every request signed (kept until stop/kill)."""
        if self._admin_http is None:
            self._admin_http = httpx.Client(base_url=self.admin_url, timeout=120,
                                            auth=AdminAuth(load_key(self.key_file)),
                                            trust_env=False)
        return self._admin_http

    def admin_call(self, method: str, path: str, payload: Any = None) -> Any:
        """A signed admin call: its JSON answer (its text for /metrics); AdminCallFailed on
        an error status."""
        response = self.admin_http().request(method, path, json=payload)
        if response.is_error:
            raise AdminCallFailed(f"admin {method} {path}: {response.status_code} "
                                  f"{response.text[:300]}", response.status_code)
        if path == "/metrics" or not response.content:
            return response.text
        return response.json()

    def tenant_info(self, name: str) -> dict[str, Any]:
        """One tenant's row straight from the admin API (cheaper than the CLI for polling)."""
        info: dict[str, Any] = self.admin_call("GET", f"/v1/tenants/{name}")
        return info

    # --- processes ---------------------------------------------------------------------------

    def group(self) -> list[int]:
        return [] if self.proc is None else group_pids(self.proc.pid)

    def worker_pids(self) -> list[int]:
        """Tenant worker processes of this router (by process group and title)."""
        return [p for p in self.group() if cmdline(p).startswith("switchboard: tenant")]

    def zygote_pid(self) -> int | None:
        return next((p for p in self.group() if cmdline(p).startswith("switchboard: zygote")),
                    None)

    def signal(self, sig: int) -> None:
        if self.proc is None:
            raise HarnessError("the router has not been started")
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then wait: the exit status, or None if it is still running at the deadline."""
        self._close_admin()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        """SIGKILL the router and everything in its process group."""
        self._close_admin()
        if self.proc is not None:
            kill_group(self.proc)

    def _close_admin(self) -> None:
        if self._admin_http is not None:
            self._admin_http.close()
            self._admin_http = None


def _healthy(url: str, pid: int) -> bool:
    """True when `url` answers 200 {"status": "ok", "pid": pid}: this router, not a stranger
    on a reused port."""
    try:
        response = httpx.get(url, timeout=2, trust_env=False)
        body = response.json()
    except (httpx.HTTPError, ValueError):  # no answer yet, or not JSON
        return False
    return (response.status_code == 200 and isinstance(body, dict)
            and body.get("status") == "ok" and body.get("pid") == pid)
