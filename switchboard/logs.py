"""Logging for the router: one JSON object a line when not on a terminal, readable text on one.

The JSON line is contract.logs.JsonFormatter, shared with the tenant workers.
"""

from __future__ import annotations

import logging
import sys

from contract.logs import JsonFormatter

__all__ = ["JsonFormatter", "configure"]


def configure(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
