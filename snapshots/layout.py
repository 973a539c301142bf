"""The on-disk layout of a data dir: the one place that turns a tenant name into a path.

    <data-dir>/
        admin.key                    admin API key, 0600 (switchboard/signing.py)
        snapshot.key                 snapshot and journal MAC key, 0600 (DESIGN.md
                                     "Decisions"; snapshots/mac.py)
        tenants.sqlite               the embedded tenant table (switchboard/table.py)
        tenants/                     one folder per tenant
            <name>/                  0700; everything of one tenant, and nothing else
                snapshots/           0700; snapshot generations (snapshots/store.py)
                    <generation:012d>.snap       one generation, complete (renamed into place)
                    <generation:012d>.snap.tmp   a save in progress, or left by a crash
                    <hex64>.seg                  one segment of segmented generations, named
                                                 by its checksum; next to the generations
                                                 that name it (snapshots/segment_files.py;
                                                 .seg.tmp, .seg.corrupt: written, moved aside)
                journal/             command journal segments (tenant/journal_format.py)
                    <first_seq:020d>.journal     one segment; .journal.tmp while created
                worker.lock          0600; flock(2)ed by the tenant's live worker, which wrote
                                     its pid in it (tenant/lock.py); holds no tenant data
            .trash-<name>-<hex>/     a tenant being deleted (delete_tenant); one left by a
                                     crash is removed by sweep_trash or the next delete
        transfers/                   0700; export files waiting to be streamed in or out
        migrations/                  0700; tenants moving between hosts (switchboard/migration.py)
            <name>.outgoing.json     this host is switching <name> to another one: ask it first
            incoming/<name>/         a migration staged here, not yet owned (receiving.py)
            peers.json               router URLs of hosts tenants moved to or from (trusted)
        logs/                        0700; what each tenant's worker writes (tenant/output.py)
            <name>.log               0600; its logging, stdout and stderr, newest lines
            <name>.log.<n>           0600; older ones, rotated by size, .1 the newest
        run/                         0700 (0750, group worker_group, when that is set: the one
                                     folder a web server may be let into for direct mode)
            <id>.sock                a Unix-socket worker's listening socket, by the tenant's
                                     short numeric id (paths stay under the 108-byte limit)
            in-<token>.sock          a migration's parked worker, until the switch renames it
        console/                     0700, always (never group-accessible, unlike run/)
            <id>.sock                0600; a worker's debug console while an attach is asked
                                     for (contract/console.py), by the tenant's numeric id
            <id>.shadow.sock         0600; a shadow worker's socket during `upgrade`

`<name>` is checked against the tenant-name rule (contract/names.py) before any path is
built: every method that takes a name raises InvalidTenantName (a ValueError) for a bad one,
so `..`, `/`, NUL, upper case and over-long names never reach the filesystem. A name never
starts with a dot, so nothing hidden in tenants/ is ever a tenant.

What lives inside snapshots/ and journal/ (the byte formats) belongs to the modules named
above; this module owns the names of folders and snapshot files, listing and deletion.
Standard library and `contract` only: cheap to import in the router, the worker and the CLI.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from pathlib import Path

from contract.names import is_valid_name
from snapshots.durable import fsync_dir, make_dirs
from snapshots.errors import InvalidTenantName

__all__ = ["LOCK_FILE", "SNAPSHOT_SUFFIX", "TEMP_SUFFIX", "TRASH_PREFIX", "DataLayout",
           "validate_tenant_name"]

SNAPSHOT_SUFFIX = ".snap"
LOCK_FILE = "worker.lock"
TEMP_SUFFIX = ".tmp"  # appended to a file's final name while it is being written
TRASH_PREFIX = ".trash-"
MAX_GENERATION = 10**12 - 1  # twelve digits in the file name
_SNAPSHOT_NAME = re.compile(r"(\d{12})\.snap")


def validate_tenant_name(name: object) -> str:
    """Return `name` if it is a valid tenant name, else raise InvalidTenantName."""
    if not is_valid_name(name):
        raise InvalidTenantName(name)
    assert isinstance(name, str)
    return name


class DataLayout:
    """Paths of one data dir, plus listing and deletion; see the module docstring.

    Building a DataLayout touches nothing on disk; only create_tenant, delete_tenant,
    sweep_trash, ensure_console_dir and ensure_transfers_dir write.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.tenants_dir = self.data_dir / "tenants"
        self.transfers_dir = self.data_dir / "transfers"
        self.run_dir = self.data_dir / "run"
        self.logs_dir = self.data_dir / "logs"
        self.console_dir = self.data_dir / "console"
        self.migrations_dir = self.data_dir / "migrations"

    def __repr__(self) -> str:
        return f"DataLayout({str(self.data_dir)!r})"

    # -- paths (no I/O)

    def socket_path(self, tenant_id: int) -> Path:
        """Where a Unix-socket worker listens: run/<id>.sock."""
        return self.run_dir / f"{int(tenant_id)}.sock"

    def console_socket_path(self, tenant_id: int) -> Path:
        """Where a worker listens for `switchboard attach`: console/<id>.sock."""
        return self.console_dir / f"{int(tenant_id)}.sock"

    def shadow_socket_path(self, tenant_id: int) -> Path:
        """Where a shadow worker of `upgrade` listens: console/<id>.shadow.sock."""
        return self.console_dir / f"{int(tenant_id)}.shadow.sock"

    def tenant_dir(self, name: str) -> Path:
        return self.tenants_dir / validate_tenant_name(name)

    def snapshot_dir(self, name: str) -> Path:
        return self.tenant_dir(name) / "snapshots"

    def journal_dir(self, name: str) -> Path:
        return self.tenant_dir(name) / "journal"

    def lock_path(self, name: str) -> Path:
        """The file the tenant's live worker holds locked (tenant/lock.py)."""
        return self.tenant_dir(name) / LOCK_FILE

    def log_path(self, name: str) -> Path:
        """The tenant worker's log file, logs/<name>.log; rotated ones add .1, .2, ..."""
        return self.logs_dir / f"{validate_tenant_name(name)}.log"

    def snapshot_path(self, name: str, generation: int) -> Path:
        if isinstance(generation, bool) or not isinstance(generation, int) or not (
            1 <= generation <= MAX_GENERATION
        ):
            raise ValueError(f"a generation is an int from 1 to {MAX_GENERATION}, "
                             f"not {generation!r}")
        return self.snapshot_dir(name) / f"{generation:012d}{SNAPSHOT_SUFFIX}"

    # -- listing

    def generations(self, name: str) -> list[int]:
        """The generations that have a complete snapshot file, ascending; [] when none.

        Complete means renamed into place: a `.snap.tmp` of a save in progress is not one.
        Whether a file verifies is the store's question (snapshots/store.py). Raises
        OSError when the folder exists but cannot be read.
        """
        found: list[int] = []
        try:
            with os.scandir(self.snapshot_dir(name)) as entries:
                for entry in entries:
                    match = _SNAPSHOT_NAME.fullmatch(entry.name)
                    if match:
                        found.append(int(match.group(1)))
        except FileNotFoundError:
            return []
        found.sort()
        return found

    def snapshot_files(self, name: str) -> list[Path]:
        """The complete snapshot files, ascending by generation."""
        return [self.snapshot_path(name, g) for g in self.generations(name)]

    def has_files(self, name: str) -> bool:
        """Whether anything of the tenant is on disk: any file under its folder (a snapshot,
        a journal segment, a temp file left by a crash). Empty folders do not count, nor does
        the worker's lock file (it holds no data). Raises OSError when part of the folder
        cannot be read, rather than answer False."""
        def fail(exc: OSError) -> None:
            raise exc

        top = self.tenant_dir(name)
        try:
            for folder, _subfolders, files in os.walk(top, onerror=fail):
                if folder == str(top):
                    files = [f for f in files if f != LOCK_FILE]
                if files:
                    return True
        except FileNotFoundError:
            return False
        return False

    # -- changes

    def create_tenant(self, name: str) -> None:
        """Make the tenant's folder (0700), and tenants/ if needed; an existing one is kept.

        When this returns, the folder and its entry in tenants/ are on stable storage.
        """
        make_dirs(self.tenant_dir(name), mode=0o700)

    def create_tenants(self, names: list[str]) -> None:
        """create_tenant for many names with one fsync of tenants/ (a batch create).

        Each name's folder must be new or empty of files (an earlier tenant's leftovers are
        the caller's to delete first). When this returns, every folder and its entry in
        tenants/ are on stable storage.
        """
        make_dirs(self.tenants_dir, mode=0o700)
        for name in names:
            try:
                self.tenant_dir(name).mkdir(mode=0o700)
            except FileExistsError:
                if not self.tenant_dir(name).is_dir():
                    raise
        fsync_dir(self.tenants_dir)

    def delete_tenant(self, name: str) -> None:
        """Delete every file of the tenant. Not while its worker runs: the caller stops it.

        The tenant's folder is renamed to a hidden trash name in tenants/, tenants/ is
        fsynced, then the trash is removed. When this returns, the tenant has no files: a
        crash at any point leaves either the whole tenant or nothing under its name (at
        most a trash folder, which sweep_trash removes at the next start or delete). A
        tenant with no folder is not an error. Raises OSError when the rename or the fsync
        fails (the tenant may then still be there after a crash); a failure to remove the
        trash itself is left to the next sweep. Its log files go first (delete_logs).
        """
        self.delete_logs(name)
        source = self.tenant_dir(name)
        trash = self.tenants_dir / f"{TRASH_PREFIX}{name}-{os.urandom(6).hex()}"
        try:
            os.rename(source, trash)
        except FileNotFoundError:
            return  # nothing to delete (the common case at create): no scan of tenants/
        self.sweep_trash()
        fsync_dir(self.tenants_dir)
        # The name is gone for good now; the bytes go next. A trash folder that comes back
        # after a crash is swept, so this needs no fsync of its own.
        shutil.rmtree(trash, ignore_errors=True)

    def delete_logs(self, name: str) -> None:
        """Delete the tenant's log file and its rotated ones (.1, .2, ... with no gap: the
        rotation renames them in order), so a new tenant of the name starts with no old lines.
        Not while its worker runs. Not durable: a log left by a crash is only old lines."""
        current = self.log_path(name)
        with contextlib.suppress(FileNotFoundError):
            current.unlink()
        backup = 1
        while True:
            try:
                current.with_name(f"{current.name}.{backup}").unlink()
            except FileNotFoundError:
                return
            backup += 1

    def sweep_trash(self) -> list[Path]:
        """Remove the trash folders that deletes left behind (a crash mid-delete); returns
        what it removed. Call at startup; a delete that removed a folder calls it too.

        Safe next to a running delete: removing a folder already half removed is not an
        error, and a trash folder that cannot be removed now is tried again next time.
        """
        try:
            with os.scandir(self.tenants_dir) as entries:
                leftovers = [Path(e.path) for e in entries if e.name.startswith(TRASH_PREFIX)]
        except FileNotFoundError:
            return []
        for trash in leftovers:
            shutil.rmtree(trash, ignore_errors=True)
        return [trash for trash in leftovers if not trash.exists()]

    def outgoing_path(self, name: str) -> Path:
        """Where a migration's switch of `name` to another host is recorded until it is done."""
        return self.migrations_dir / f"{validate_tenant_name(name)}.outgoing.json"

    def incoming_dir(self, name: str) -> Path:
        """Where a migration of `name` to this host is staged (snapshot, then journal tail)."""
        return self.migrations_dir / "incoming" / validate_tenant_name(name)

    def incoming_socket_path(self, token: str) -> Path:
        """Where a migration's parked worker listens until the switch (then renamed to its
        socket_path): run/in-<token>.sock, short like the others."""
        if not token.isalnum():
            raise ValueError(f"a socket token is letters and digits, not {token!r}")
        return self.run_dir / f"in-{token}.sock"

    def ensure_migrations_dir(self) -> Path:
        """migrations/ and migrations/incoming/, created if missing (0700)."""
        make_dirs(self.migrations_dir / "incoming", mode=0o700)
        return self.migrations_dir

    def ensure_console_dir(self) -> Path:
        """console/, created if missing; always 0700 (a console runs code in a tenant)."""
        make_dirs(self.console_dir, mode=0o700)
        mode = stat.S_IMODE(os.stat(self.console_dir).st_mode)
        if mode != 0o700:
            os.chmod(self.console_dir, 0o700)
        return self.console_dir

    def ensure_transfers_dir(self) -> Path:
        """transfers/, created if missing; always 0700 (export files hold tenant data)."""
        make_dirs(self.transfers_dir, mode=0o700)
        mode = stat.S_IMODE(os.stat(self.transfers_dir).st_mode)
        if mode != 0o700:
            os.chmod(self.transfers_dir, 0o700)
        return self.transfers_dir
