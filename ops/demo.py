"""`make run`: start Switchboard with the demo app and three demo tenants, print where to look.

Runs `switchboard serve` in the foreground (Ctrl-C stops it cleanly: every tenant is
checkpointed), creates the tenants acme, globex and initech if they do not exist yet, and
gives each a few records through the router, the way a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

DEMO: dict[str, list[tuple[str, dict[str, object]]]] = {
    "acme": [("customers", {"name": "Wile E. Coyote", "plan": "gold"}),
             ("orders", {"item": "rocket skates", "qty": 2})],
    "globex": [("projects", {"name": "Doomsday device", "status": "planning"})],
    "initech": [("reports", {"title": "TPS", "cover_sheet": True}),
                ("staff", {"name": "Milton", "stapler": "red"})],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="./switchboard-data")
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--admin-listen", default="127.0.0.1:8001")
    parser.add_argument("--idle-timeout", default="30")
    parser.add_argument("--cluster", type=int, metavar="N",
                        help="cluster mode instead: a PostgreSQL and N hosts (ops/democluster.py)")
    args = parser.parse_args(argv)
    if args.cluster is not None:
        from ops import democluster
        return democluster.run(args.cluster, args.data_dir, DEMO)
    exe = os.path.join(os.path.dirname(sys.executable), "switchboard")
    env = dict(os.environ, SWITCHBOARD_ADMIN=f"http://{args.admin_listen}",
               SWITCHBOARD_DATA_DIR=args.data_dir, SWITCHBOARD_LOG_FORMAT="text")
    server = subprocess.Popen([exe, "serve", "--data-dir", args.data_dir, "--listen", args.listen,
                               "--admin-listen", args.admin_listen,
                               "--idle-timeout", args.idle_timeout], env=env)
    # Ctrl-C reaches the router too (one process group): it checkpoints and stops by itself,
    # and a SIGTERM from us on top would count as its impatient second signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
    try:
        if not wait_for(f"http://{args.listen}/healthz", server):
            return server.wait() or 1
        existing = {t["name"] for t in json.loads(subprocess.run(
            [exe, "ls", "--json"], env=env, capture_output=True, text=True, check=True).stdout)}
        for name, records in DEMO.items():
            if name in existing:
                continue
            subprocess.run([exe, "create", name], env=env, check=True, capture_output=True)
            for table, fields in records:
                post(f"http://{args.listen}/t/{name}/api/tables/{table}/records", fields)
        print("\nSwitchboard is up with the demo app. Open:")
        for name in DEMO:
            print(f"  http://{args.listen}/t/{name}/")
        print(f"\nTenants idle for {args.idle_timeout}s are checkpointed and swapped out; the next "
              "request brings them back.\nIn another shell:  . .venv/bin/activate && "
              f"SWITCHBOARD_DATA_DIR={args.data_dir} switchboard ls\nCtrl-C stops everything "
              "(each tenant is checkpointed first).\n", flush=True)
        return server.wait()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)


def wait_for(url: str, server: subprocess.Popen[bytes], deadline_s: float = 30) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def post(url: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as exc:
        print(f"seeding {url} failed: {exc.code}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
