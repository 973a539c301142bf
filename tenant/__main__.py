"""`python -m tenant SPEC_JSON LISTEN_FD CONTROL_FD`: a worker in a fresh interpreter.

The router uses this when the zygote is down; the zygote path (tenant/zygote.py) is faster.
"""

from __future__ import annotations

import os
import sys

from contract.worker import WorkerSpec
from tenant.runtime import worker_main

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m tenant SPEC_JSON LISTEN_FD CONTROL_FD")
    spec = WorkerSpec.from_json(sys.argv[1])
    sys.exit(worker_main(spec, int(sys.argv[2]), int(sys.argv[3]), parent=os.getppid()))
