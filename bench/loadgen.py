"""A small HTTP/1.1 load generator, run in its own process: `python -m bench.loadgen`.

The fallback when wrk is not installed, and the latency sampler of the checkpoint case, which
needs every request's start time (CLOCK_MONOTONIC is system-wide on Linux, so the parent can
line the samples up with what it did meanwhile). Keep-alive connections, one request in flight
per connection (closed loop, as wrk does, or paced with --rate), fixed-size GETs, responses
framed by Content-Length.

SIGTERM ends the run early (the report still comes). Prints one JSON object (or writes it to
--out FILE): {"requests", "errors", "duration_s", "rps", "p50_ms", "p99_ms",
"samples": [[start_monotonic_s, latency_s], ...] (only with --samples)}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def _connection(port: int, request: bytes, until: list[float],
                      out: list[tuple[float, float]], errors: list[str], interval: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    next_at = time.monotonic()
    try:
        while (start := time.monotonic()) < until[0]:
            if interval:
                if start < next_at:
                    await asyncio.sleep(next_at - start)
                    start = time.monotonic()
                next_at += interval
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            if head[9:10] != b"2":
                errors.append(head[:12].decode(errors="replace"))
            out.append((start, time.monotonic() - start))
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(repr(exc))
    finally:
        writer.close()


async def generate(port: int, path: str, connections: int, duration_s: float,
                   rate: float = 0.0) -> dict[str, Any]:
    """Closed loop (rate 0), or each connection paced at `rate` requests/s."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    samples: list[tuple[float, float]] = []
    errors: list[str] = []
    began = time.monotonic()
    until = [began + duration_s]  # SIGTERM moves it to now: stop early, still report
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, lambda: until.__setitem__(0, time.monotonic()))
    interval = 1 / rate if rate else 0.0
    await asyncio.gather(*(_connection(port, request, until, samples, errors, interval)
                           for _ in range(connections)))
    elapsed = time.monotonic() - began
    latencies = [lat for _, lat in samples]
    return {"requests": len(samples), "errors": len(errors), "first_error": errors[:1],
            "duration_s": elapsed, "rps": len(samples) / elapsed,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "samples": samples}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests/s per connection (default: as fast as answers come)")
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    parser.add_argument("--samples", action="store_true", help="include every request's timing")
    args = parser.parse_args(argv)
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    result = run(generate(args.port, args.path, args.connections, args.duration, args.rate))
    if not args.samples:
        del result["samples"]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)
    else:
        json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
