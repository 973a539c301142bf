"""A tenant worker started by hand, as the router's fresh path does: `python -m tenant SPEC_JSON
LISTEN_FD CONTROL_FD` with a listening socket bound here (port 0) and a control socket pair.

The test holds the router's end of the control channel: it reads the worker's events and
sends requests (contract/worker.py). The worker runs in its own session and dies with the test
process (PR_SET_PDEATHSIG); `kill()` ends its whole group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from contract.worker import WorkerSpec, encode
from harness import ROOT, alive, group_pids, kill_group

EVENT_TIMEOUT_S = 30.0


class WorkerProcess:
    """One hand-started worker and the router's end of its control channel."""

    def __init__(self, data_dir: Path, tenant: str, app: str, log_path: Path,
                 **spec_fields: Any) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port: int = listener.getsockname()[1]
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.spec = WorkerSpec(tenant=tenant, port=self.port, data_dir=str(data_dir), app=app,
                               log_format="text", **spec_fields)
        self.log_path = log_path
        fds = (listener.fileno(), theirs.fileno())
        try:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "tenant", self.spec.to_json(), *map(str, fds)],
                    pass_fds=fds, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
                )
        finally:
            listener.close()  # the worker has its own copies now
            theirs.close()
        self.control.settimeout(EVENT_TIMEOUT_S)
        self.lines = self.control.makefile("rb")
        self.events: list[dict[str, Any]] = []  # unsolicited events read so far, in order
        self.next_id = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _read(self) -> dict[str, Any]:
        line = self.lines.readline()
        if not line:
            raise EOFError(f"worker {self.pid} closed its control channel; log:\n{self.log()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def next_event(self) -> dict[str, Any]:
        """The next unsolicited event (one already read first)."""
        if self.events:
            return self.events.pop(0)
        return self._read()

    def wait_ready(self) -> dict[str, Any]:
        event = self.next_event()
        assert event.get("event") == "ready", f"{event}; log:\n{self.log()}"
        return event

    def call(self, op: str) -> dict[str, Any]:
        """Send request `op` and return its answer; events read meanwhile are kept in order."""
        self.next_id += 1
        self.control.sendall(encode({"id": self.next_id, "op": op}))
        while True:
            message = self._read()
            if message.get("id") == self.next_id:
                assert message.get("ok"), message
                return message
            self.events.append(message)

    def drain_events(self) -> list[dict[str, Any]]:
        """Every event the worker sent before now: a ping is the barrier (one channel, in
        order), so an event sent before this call is among them."""
        self.call("ping")
        events, self.events = self.events, []
        return events

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        return self.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int:
        """Ask it to stop (it checkpoints) and wait for its exit status."""
        self.call("stop")
        return self.wait_exit(timeout_s)

    def kill(self) -> None:
        """End the worker's whole session (it and any checkpoint child), and close our end."""
        kill_group(self.proc)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in group_pids(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.lines.close()
        self.control.close()


def vm_size_bytes(pid: int) -> int:
    """A process's address-space size (VmSize), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmSize for pid {pid}")
