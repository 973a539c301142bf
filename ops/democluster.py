"""`python -m ops.demo --cluster N`: a PostgreSQL of its own and N cluster hosts on this
machine, with the demo tenants spread over them (docs/cluster.md), until Ctrl-C.

The hosts listen on free loopback ports (printed), keep their data dirs under
`<data-dir>-cluster/<host id>` and share one admin key, so `switchboard` commands work
against any of them. The PostgreSQL (initdb + pg_ctl; as the `postgres` user when run as
root) lives in a temporary folder and is removed at the end: the demo's data goes with it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from harness.cluster import start_hosts
from harness.postgres import LocalPostgres
from harness.router import SWITCHBOARD, RouterProcess
from ops.demo import post

HOST_IDS = ("a", "b", "c", "d", "e", "f", "g", "h", "i")


def run(count: int, data_dir: str, demo: dict[str, list[tuple[str, dict[str, object]]]]) -> int:
    if not 1 <= count <= len(HOST_IDS):
        print(f"--cluster takes 1 to {len(HOST_IDS)} hosts", file=sys.stderr)
        return 2
    base = Path(f"{data_dir.rstrip('/')}-cluster").resolve()
    print("starting PostgreSQL ...", flush=True)
    postgres = LocalPostgres(max_connections=100).start()
    hosts: list[RouterProcess] = []
    try:
        print(f"starting {count} hosts ...", flush=True)
        hosts = start_hosts(postgres.url, base, HOST_IDS[:count], lease_ttl_s=5)
        env = hosts[0].env()
        existing = {t["name"] for t in json.loads(subprocess.run(
            [str(SWITCHBOARD), "ls", "--json"], env=env, capture_output=True, text=True,
            check=True).stdout)}
        for i, (name, records) in enumerate(demo.items()):
            if name in existing:
                continue
            subprocess.run([str(SWITCHBOARD), "create", name], env=env, check=True,
                           capture_output=True)
            owner = hosts[i % len(hosts)]  # the first request claims it: one tenant a host
            for table, fields in records:
                post(f"{owner.url}/t/{name}/api/tables/{table}/records", fields)
        print(f"\nSwitchboard cluster mode: {count} hosts on {postgres.url}")
        for host_id, host in zip(HOST_IDS, hosts, strict=False):
            print(f"  host {host_id}: router {host.url}  admin {host.admin_url}  "
                  f"(log {host.log_path})")
        print("\nAny host serves any tenant, e.g.:")
        for name in demo:
            print("  " + "  ".join(f"{h.url}/t/{name}/" for h in hosts))
        print(f"\nIn another shell:  . .venv/bin/activate && export SWITCHBOARD_ADMIN="
              f"{hosts[0].admin_url} SWITCHBOARD_KEY_FILE={hosts[0].key_file}\n"
              "  switchboard hosts; switchboard ls; switchboard migrate acme --to "
              f"{HOST_IDS[min(1, count - 1)]}\nCtrl-C stops everything.\n", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(1):
            if all(h.proc is not None and h.proc.poll() is not None for h in hosts):
                return 1
        return 0
    finally:
        for host in hosts:
            host.stop()  # SIGTERM: each checkpoints its tenants and ends its lease
        postgres.destroy()
