"""The shape the code promises: the router never imports the worker's code, so a worker can run
another code version than its router, and the router stays small in memory."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

WORKER_SIDE = ("tenant", "msgpack")


def modules_after_import(module: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print('\\n'.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return set(out.split())


def test_router_imports_no_worker_code() -> None:
    loaded = modules_after_import("switchboard.server")
    leaked = sorted(m for m in loaded if m.split(".")[0] in WORKER_SIDE)
    assert leaked == []


def test_cli_imports_no_worker_code() -> None:
    loaded = modules_after_import("ops.cli")
    leaked = sorted(m for m in loaded if m.split(".")[0] in WORKER_SIDE)
    assert leaked == []


def test_contract_is_a_leaf() -> None:
    loaded = modules_after_import("contract.names, contract.worker")
    project = {"switchboard", "tenant", "snapshots", "ops", "examples", "bench"}
    assert sorted(m for m in loaded if m.split(".")[0] in project) == []
