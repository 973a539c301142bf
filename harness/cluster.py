"""Several `switchboard serve --cluster` hosts on one PostgreSQL, for tests, benchmarks and
`python -m ops.demo --cluster N`: the first host creates the admin and snapshot keys, the
others get copies (a cluster shares both files; DESIGN.md "Decisions")."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from harness.router import RouterProcess

SHARED_KEYS = ("admin.key", "snapshot.key")


def start_hosts(url: str, base_dir: Path, host_ids: Sequence[str], *, lease_ttl_s: float = 10,
                extra_args: Sequence[str] = (), max_resident: int = 32,
                timeout_s: float = 60) -> list[RouterProcess]:
    """Start one host per id, data dirs `base_dir/<id>`. On failure the hosts started so far
    are killed before the error propagates."""
    hosts: list[RouterProcess] = []
    try:
        for host_id in host_ids:
            hosts.append(start_host(url, base_dir, host_id, lease_ttl_s=lease_ttl_s,
                                    extra_args=extra_args, max_resident=max_resident,
                                    keys_from=hosts[0].data_dir if hosts else None,
                                    timeout_s=timeout_s))
    except BaseException:
        for host in hosts:
            host.kill_group()
        raise
    return hosts


def start_host(url: str, base_dir: Path, host_id: str, *, lease_ttl_s: float = 10,
               extra_args: Sequence[str] = (), max_resident: int = 32,
               keys_from: Path | None = None, timeout_s: float = 60) -> RouterProcess:
    data_dir = base_dir / host_id
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if keys_from is not None:
        for name in SHARED_KEYS:
            shutil.copyfile(keys_from / name, data_dir / name)
            (data_dir / name).chmod(0o600)
    host = RouterProcess(data_dir, max_resident=max_resident, extra_args=[
        "--cluster", url, "--host-id", host_id, "--lease-ttl", f"{lease_ttl_s:g}",
        *extra_args])
    return host.start(timeout_s)
