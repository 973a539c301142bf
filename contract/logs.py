"""The structured log line the router and the workers write: one JSON object a line.

    {"ts": 1718000000.123, "level": "info", "logger": "switchboard.server",
     "tenant": "acme", "pid": 4242, "msg": "...", "exc": "Traceback ..."}

ts       Unix seconds, rounded to milliseconds
level    the level name in lower case: debug, info, warning, error, critical
logger   the logger's name
tenant   the tenant a line is about: in a worker's lines the tenant it serves; in the
         router's, set by a record's `tenant` attribute (`extra={"tenant": name}` or a
         LoggerAdapter, as switchboard/process.py does); absent otherwise
pid      the writing process (read per line: a zygote's fork logs with its own pid)
msg      the formatted message
exc      only when the record carries an exception: its formatted traceback

Log shippers and `jq` scripts rely on these keys; add keys, never rename one.
"""

from __future__ import annotations

import json
import logging
import os


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring); `tenant` is set in a
    tenant worker and left None in the router, where a record may carry its own."""

    def __init__(self, tenant: str | None = None) -> None:
        super().__init__()
        self.tenant = tenant

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"ts": round(record.created, 3),
                                    "level": record.levelname.lower(), "logger": record.name}
        tenant = self.tenant if self.tenant is not None else getattr(record, "tenant", None)
        if tenant is not None:
            entry["tenant"] = tenant
        entry["pid"] = os.getpid()
        entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)
