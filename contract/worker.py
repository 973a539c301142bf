"""The router/worker wire contract: how a worker is started and the control channel after.

Both sides import this module; neither imports the other. A worker may run another code
version than its router (a pinned tenant) as long as both speak this protocol version.

Start. The router binds the tenant's listening socket itself (so requests queue in the kernel
while the worker restores) and makes a Unix stream socket pair for control. The worker gets a
`WorkerSpec` as JSON and both file descriptors, either forked by the zygote
(`{"op": "spawn", "spec": WorkerSpec}` over the zygote's channel, fds by SCM_RIGHTS; see
tenant/zygote.py) or on a fresh interpreter's command line:
`python -m tenant SPEC_JSON LISTEN_FD CONTROL_FD`.

Control channel, protocol version 1. Frames are JSON objects, one per line (UTF-8,
`\\n`-terminated, at most MAX_LINE_BYTES a line).

Worker -> router, unsolicited events:
  {"event": "ready", "pid": int, "port": int, "journal_pos": int, "generation": int|null,
   "warnings": [str], "protocol": 1,                   after restore, once accepting requests
   "restore_s": float, "restore_bytes": int}           (restore: load_app excluded; bytes: the
                                                       snapshot file restored from, 0 if none)
  {"event": "boot_failed", "error": str}               restore or import failed; the worker exits
  {"event": "parked", "journal_pos": int,              spec.park only (a migration's target,
   "restore_s": float}                                 switchboard/receiving.py): the snapshot is
                                                       restored; the worker waits for the one
                                                       request {"id": n, "op": "resume"}, then
                                                       replays the journal after journal_pos,
                                                       answers it and goes on to `ready`
  {"event": "checkpointed", "generation": int, "journal_pos": int,  any checkpoint that landed,
   "duration_s": float, "bytes": int}                  the one written at stop included (bytes:
                                                       the snapshot file's size)
  {"event": "checkpoint_failed", "error": str}         the old snapshot and the journal stay
                                                       (a background retry adds "retry_in_s")
  {"event": "writes_unavailable", "error": str}        the journal failed (disk full, quota, I/O
                                                       error): writes get 503 with `error`, e.g.
                                                       "cannot make writes durable: no space left
                                                       on device"; reads are still served and the
                                                       worker keeps running (not a crash, not a
                                                       boot failure); it retries on its own
  {"event": "writes_restored", "unavailable_s": float} a new journal could be written: writes are
                                                       accepted again, after that many seconds
  {"event": "busy", "work": [str]}                    the app's declared work in progress
                                                       (`async with current().busy("import")`)
                                                       changed; [] when none is left. While it is
                                                       not empty the router neither idles the
                                                       worker out nor evicts it (bounded by the
                                                       router's max_busy_s)
  {"event": "activity", "requests": int,             the worker's own count of requests (HTTP
   "in_flight": int, "last_request_at": float}        and WebSocket) since its previous report,
                                                       how many are open now and when the last
                                                       began (Unix seconds). Sent at most once
                                                       per ACTIVITY_INTERVAL_S, and only when
                                                       one of them changed (so one last time
                                                       after a burst ends; at once when the
                                                       last open request ends after a report
                                                       that said some were open, so the router
                                                       never holds a stale in_flight for a
                                                       tick). In direct mode the
                                                       front server reaches the worker without
                                                       the router: this is how the router's
                                                       idle accounting still sees the requests
  {"event": "attached", "sessions": [{"uid": int, "user": str, "pid": int, "since": float,
   "read_only": bool}]}                                the debug console's sessions changed
                                                       (tenant/console.py); while the list is
                                                       not empty the router neither idles the
                                                       worker out nor evicts it
  {"event": "paused", "hold_s": float}                 the worker may block its event loop for
                                                       up to hold_s (a console statement, a
                                                       breakpoint's pdb): the router holds its
                                                       health pings that long; 0 ends the hold
Router -> worker requests, each answered by {"id": same, "ok": true, ...} or
{"id": same, "ok": false, "error": str}:
  {"id": n, "op": "ping"}        -> {"journal_pos", "dirty", "checkpointing", "generation",
                                     "journal_since_snapshot" (records since the snapshot),
                                     "unsaved", "checkpoint_error",
                                     "writes_unavailable": str|null (the reason while writes
                                     are refused, as in the event; null when they are accepted),
                                     "busy": [str] (as in the busy event),
                                     "fsync": {"counts": [int], "sum_s": float} (the journal's
                                     group-commit fsyncs since the previous ping reply: a count
                                     per FSYNC_BOUNDS_S bucket and one for +Inf, and their
                                     total seconds)}
  {"id": n, "op": "checkpoint"}  -> {"changed", "generation", "journal_pos"} (forked child writes)
  {"id": n, "op": "console_open", "path": str, "breakpoint_timeout_s": float}
                                 -> {"socket", "pid", "code_version"}: listen for the debug
                                    console on `path` (contract/console.py)
  {"id": n, "op": "stop"}        -> answered at once; then the worker drains, checkpoints if
                                    dirty (in-process) and exits
  {"id": n, "op": "stop", "checkpoint": false}
                                 -> {"journal_closed": true} once the worker drained and closed
                                    its journal (nothing more can be written; it exits next),
                                    without a final checkpoint: a migration ships the journal
                                    since its staged snapshot instead

End of file on the socket means the router is gone: the worker checkpoints if dirty and exits,
so no worker outlives its router even when the router was killed with SIGKILL.

Exit status: 0 after a stop, BOOT_FAILED_EXIT when it could not restore, DURABILITY_LOST_EXIT
when its journal failed and it could not read its durable state back to go on serving it, or
its last journal fsync at stop failed (the next start restores from disk), FENCED_EXIT when
it was fenced in cluster mode (another host owns the tenant now), anything else (or a
signal) is a crash. A journal failure alone does not end the worker (see writes_unavailable).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass
from typing import Any

PROTOCOL_VERSION = 1
# Upper bounds (seconds) of the ping reply's journal fsync latency buckets ("fsync").
FSYNC_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_LINE_BYTES = 1 << 20

# events, worker -> router
READY = "ready"
BOOT_FAILED = "boot_failed"
CHECKPOINTED = "checkpointed"
CHECKPOINT_FAILED = "checkpoint_failed"
WRITES_UNAVAILABLE = "writes_unavailable"
WRITES_RESTORED = "writes_restored"
BUSY = "busy"
ATTACHED = "attached"
PAUSED = "paused"
ACTIVITY = "activity"
ACTIVITY_INTERVAL_S = 1.0
PARKED = "parked"
# requests, router -> worker
PING = "ping"
CHECKPOINT = "checkpoint"
STOP = "stop"
CONSOLE_OPEN = "console_open"
RESUME = "resume"  # a parked worker's only request (spec.park)

BOOT_FAILED_EXIT = 3
DURABILITY_LOST_EXIT = 75  # EX_TEMPFAIL
# Cluster mode: the tenant's epoch moved on (another host owns it) or this host's lease is not
# live; the worker stopped acknowledging and exited. Not a crash: "not mine any more".
FENCED_EXIT = 76


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to know to serve one tenant, sent as JSON."""

    tenant: str
    port: int  # the TCP port it was handed, 0 for a Unix-socket worker
    data_dir: str  # the router's data dir; snapshots.layout.DataLayout says where files are
    app: str  # MODULE:ATTR of a tenant.TenantApp
    root_path: str = ""
    code_path: str | None = None  # a pinned code directory put first on sys.path
    code_version: str | None = None  # that code's version name (config code_versions)
    journal_fsync: str = "always"
    keep_generations: int = 3
    log_format: str = "json"
    log_level: str = "info"
    epoch: int = 1  # the tenant's fencing token (DESIGN.md "Between hosts")
    creation_id: str = ""  # which tenant of this name: epochs compare only within one
    host_id: str | None = None  # this host's id in cluster mode, else None
    # Cluster mode: the PostgreSQL URL the worker keeps its journal and snapshots at
    # (tenant/pgjournal.py), on its own connection opened after the fork; None: local files.
    cluster_url: str | None = None
    # Limits the worker sets on itself before it restores (0: none). An allocation past the
    # address-space limit raises MemoryError in the worker instead of waking the OOM killer.
    max_address_space_bytes: int = 0
    max_open_files: int = 0
    # The key of snapshot and journal MACs (DESIGN.md "Decisions": keys and files), and whether
    # an unsigned pickle snapshot may be restored (it can run code: only on an operator's word).
    snapshot_key_file: str | None = None
    allow_unsigned: bool = False
    socket_path: str | None = None  # the Unix socket it was handed, for its process title
    # Where the worker writes its logging, stdout and stderr (tenant/output.py), rotated at
    # log_max_bytes with at most log_backups older files; None: they stay on inherited stderr.
    log_file: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    # Restore the snapshot, report `parked`, and replay the journal only at `resume`: a
    # migration's target warms its worker up before the switch (switchboard/receiving.py).
    park: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> WorkerSpec:
        return cls(**fields)


def encode(message: dict[str, Any]) -> bytes:
    """One control frame: compact JSON and a newline."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one frame. Raises ValueError for a frame that is not a JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"control frame is not an object: {line[:200]!r}")
    return message


class FsyncLatency:
    """Runs in the tenant worker: the journal's fsync times, as the ping reply's "fsync"."""

    def __init__(self) -> None:
        self.counts = [0] * (len(FSYNC_BOUNDS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(FSYNC_BOUNDS_S, seconds)] += 1
        self.sum_s += seconds

    def take(self) -> dict[str, Any]:
        """What was observed since the last take, and start again."""
        taken = {"counts": self.counts, "sum_s": self.sum_s}
        self.counts = [0] * (len(FSYNC_BOUNDS_S) + 1)
        self.sum_s = 0.0
        return taken
