"""A throwaway PostgreSQL for tests, benchmarks and the cluster demo (docs/cluster.md).

`LocalPostgres().start()` runs initdb and pg_ctl from Debian's package
(/usr/lib/postgresql/<version>/bin) into `<base_dir>/pgdata` (default: a new folder in /tmp),
on a free loopback port, with fsync on and a small max_connections. PostgreSQL refuses to
run as root: as root every command runs as the `postgres` user (runuser), and `base_dir`
is handed to that user. A missing installation is a PostgresMissing error, never a skip
(`make system-deps` installs it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.errors import HarnessError
from harness.net import free_port

START_TIMEOUT_S = 60


class PostgresMissing(HarnessError):
    """No PostgreSQL server binaries here."""


def server_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/*/bin that has pg_ctl."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise PostgresMissing("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/pg_ctl): "
                              "run `make system-deps` (apt-get install postgresql)")
    return Path(found[-1]).parent


class LocalPostgres:
    """One PostgreSQL server of our own; `url` reaches database `switchboard` as `postgres`."""

    def __init__(self, base_dir: Path | None = None, *, max_connections: int = 120,
                 port: int | None = None) -> None:
        # The postgres user must reach its folder: by default a fresh one directly in /tmp
        # (a pytest tmp_path sits under root's 0700 folders).
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
        self.data_dir = self.base_dir / "pgdata"
        self.max_connections = max_connections
        self.port = port or free_port()
        self.bin_dir = server_bin_dir()
        self.log_file = self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/switchboard"

    def _run(self, *argv: str, timeout_s: float = START_TIMEOUT_S) -> None:
        command = list(argv)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                cwd="/")
        if result.returncode != 0:
            raise HarnessError(f"{' '.join(argv[:2])} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}")

    def start(self) -> LocalPostgres:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.base_dir, user.pw_uid, user.pw_gid)
            os.chmod(self.base_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                      "--auth=trust", "--no-sync", "-E", "UTF8")
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                           f"max_connections = {self.max_connections}\nfsync = on\n"
                           "unix_socket_directories = ''\nshared_buffers = 32MB\n")
        self._pg_ctl("start", "-w")
        self._create_database()
        return self

    def _create_database(self) -> None:
        command = [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", "postgres", "switchboard"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd="/")
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise HarnessError(f"createdb failed: {result.stderr.strip()}")

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
                  str(self.log_file), "-t", str(START_TIMEOUT_S), *args)

    def restart(self, *, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-w", "-m", mode)

    def stop(self, *, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-w", "-m", mode)

    def start_again(self) -> None:
        self._pg_ctl("start", "-w")

    def destroy(self) -> None:
        """Stop it (immediately) and remove its files; quiet if it is not running."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(HarnessError, subprocess.TimeoutExpired):
                self.stop(mode="immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)
