"""One tenant's worker process as the router sees it (supervisord's `Subprocess` is the model).

`TenantProcess` owns everything about one tenant that changes while the router runs. It is
built in three parts, one idea each:
- switchboard/process_core.py, `TenantCore`: the lifecycle (state and the one function that
  changes it, the lock, start with backoff, stop, exits and crashes, checkpoints);
- switchboard/process_reports.py, `WorkerReports`: what the worker reports (events, health
  pings, memory) and the `TenantInfo` operators see;
- switchboard/process_moves.py, `MovingWorker`: moving to or from another host.
The supervisor (switchboard/supervisor.py) holds one per mapped tenant and decides; these act.
"""

from __future__ import annotations

from switchboard.process_core import ProcessEnv
from switchboard.process_moves import MovingWorker
from switchboard.process_reports import WorkerReports

__all__ = ["ProcessEnv", "TenantProcess"]


class TenantProcess(WorkerReports, MovingWorker):
    __slots__ = ()
