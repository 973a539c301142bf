"""`python -m bench [--quick] [--json] [--only CASE,...]`: run the benchmarks.

Without --json: progress on stderr, then a table on stdout. With --json: one JSON object of
named figures on stdout and nothing else. Either way the results (with a description of the
machine) are written to bench/results/<timestamp>.json, and every process started is killed
(by process group) before exit, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from bench import harness
from bench.cases import Case, Context, Sizes
from bench.cases.bigstate import bigstate
from bench.cases.churn import eviction_churn
from bench.cases.cluster import cluster
from bench.cases.coldstart import cold_start
from bench.cases.create import batch_create
from bench.cases.deploy import deploy
from bench.cases.journal import journal
from bench.cases.memory import idle_worker, mapped, resident
from bench.cases.migrate import migrate
from bench.cases.proxy import proxy
from bench.cases.segments import segments
from bench.cases.soak import soak
from bench.report import Figure, document, save, table

CASES: dict[str, Case] = {
    "cold_start": cold_start,
    "proxy": proxy,
    "deploy": deploy,
    "idle_worker": idle_worker,
    "resident": resident,
    "mapped": mapped,
    "batch_create": batch_create,
    "churn": eviction_churn,
    "journal": journal,
    "bigstate": bigstate,
    "migrate": migrate,
    "cluster": cluster,
    "segments": segments,
    "soak": soak,
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally below, which cleans up


def work_dir() -> Path:
    # On the disk, not tmpfs: the journal and checkpoint figures need real fsyncs.
    base = "/var/tmp" if Path("/var/tmp").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="switchboard-bench-", dir=base))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--only", help=f"comma-separated cases: {','.join(CASES)}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-work", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--label", help="a note saved with the results (what this run tries)")
    args = parser.parse_args(argv)
    selected = list(CASES) if not args.only else [c.strip() for c in args.only.split(",")]
    unknown = [c for c in selected if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")

    signal.signal(signal.SIGTERM, _terminate)
    harness.become_subreaper()
    procs = harness.Processes()
    work = work_dir()
    ctx = Context(procs, work, Sizes.quick() if args.quick else Sizes(), args.quick)
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    started = time.monotonic()
    try:
        for name in selected:
            ctx.log(f"case {name}")
            case_started = time.monotonic()
            try:
                figures += CASES[name](ctx)
            except Exception as exc:  # one broken case must not hide the others' figures
                errors[name] = f"{type(exc).__name__}: {exc}"
                ctx.log(f"case {name} failed:\n{traceback.format_exc()}")
            ctx.log(f"case {name} took {time.monotonic() - case_started:.1f}s")
    except KeyboardInterrupt:
        ctx.log("interrupted: stopping every process the bench started")
        return 130
    finally:
        if ctx._main is not None:
            ctx._main.stop()
        procs.cleanup()
        if args.keep_work:
            ctx.log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc = document(figures, errors, harness.machine(), args.quick, time.monotonic() - started)
    doc["load_tool"] = ctx.shared.get("proxy_tool")
    doc["cold_start_samples_ms"] = ctx.shared.get("cold_start_samples_ms")
    doc["label"] = args.label
    path = save(doc, args.results_dir)
    if args.json:
        json.dump(doc, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        m = doc["machine"]
        print(f"Switchboard bench{' (quick)' if args.quick else ''}: {m['nproc']} cores "
              f"{m['cpu_model']}, {m['mem_total_mb']} MiB, Python {m['python']}, "
              f"kernel {m['kernel']}; load: {doc['load_tool']}; {doc['elapsed_s']}s\n")
        print(table(figures, errors))
        print(f"\nsaved to {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
