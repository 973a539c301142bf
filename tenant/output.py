"""A tenant worker's output: its log file, `<data-dir>/logs/<name>.log` (0600).

Runs in the tenant worker. Everything the worker writes ends up in that one file: its Python
logging (the root logger's handler is the file's), and whatever reaches file descriptors 1
and 2, `print()` and C-level writes included. Those two descriptors are pointed at a pipe; a
thread reads it and hands each line to the same handler as a record of logger `tenant.output`,
so every line has the worker's log format (one JSON object a line by default,
contract/logs.py) and goes through one size check. Every line also still goes to the stderr
the worker inherited (the router's): the host's log keeps the whole story, as before, each
JSON line tagged with its tenant.

Rotation: when the next line would take the file to `log_max_bytes`, `<name>.log` becomes
`<name>.log.1`, `.1` becomes `.2` and so on; past `log_backups` the oldest is deleted. So a
tenant never has more than `log_backups + 1` files, about `log_max_bytes` each
(`logging.handlers.RotatingFileHandler`; a line longer than `log_max_bytes` still goes in
whole, into a file of its own). Lines longer than MAX_LINE_BYTES are cut into pieces of that size.

Not durable: lines are written (no fsync) as they come; a crash of the host can lose the last
ones. A checkpoint child (forked) logs through the inherited handler into the same file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path

from contract.worker import WorkerSpec
from snapshots.durable import write_all

OUTPUT_LOGGER = "tenant.output"  # the logger name of a line written to stdout or stderr
MAX_LINE_BYTES = 64 * 1024
CLOSE_TIMEOUT_S = 1.0  # at exit, how long the reader thread gets to write what is left


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose files are created 0600 (a log can hold tenant data).

    A line it cannot write (a full disk) is dropped. The failure is reported on `report_fd`
    (the router's stderr), once until a line gets written again, and never on fds 1 and 2:
    they lead back into this handler, and a report per failed line would feed itself.
    """

    report_fd: int | None = None
    _reported = False
    _failed = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        super().emit(record)
        if not self._failed:
            self._reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed = True
        if self._reported or self.report_fd is None:
            return
        self._reported = True
        error = sys.exc_info()[1]
        report = f"cannot write the tenant log {self.baseFilename}: {error}; lines are dropped\n"
        with contextlib.suppress(OSError):
            write_all(self.report_fd, report.encode("utf-8", "backslashreplace"))

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        os.fchmod(fd, 0o600)  # a file left with wider modes by someone else
        return open(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


class _QuietStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The echo to the router's stderr: a failed write (the router is gone) is dropped, not
    reported on fd 2, which leads into the log file's pipe."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class OutputCapture:
    """The worker's log file handler plus the thread that copies fds 1 and 2 into it."""

    def __init__(self, handler: RotatingFileHandler) -> None:
        self.handler = handler
        self._saved_fds: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, spec: WorkerSpec) -> OutputCapture:
        """Open the log file, make it the root logger's only handler (with the formatter
        configured so far) and point fds 1 and 2 at it. Needs `spec.log_file`."""
        assert spec.log_file is not None
        path = Path(spec.log_file)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = PrivateRotatingFileHandler(path, maxBytes=spec.log_max_bytes,
                                             backupCount=spec.log_backups, encoding="utf-8")
        root = logging.getLogger()
        if root.handlers and root.handlers[0].formatter is not None:
            handler.setFormatter(root.handlers[0].formatter)
        capture = cls(handler)
        capture._redirect()
        assert capture._saved_fds is not None
        # The router's stderr keeps getting every line too (tenant-tagged in JSON), as before.
        handler.report_fd = capture._saved_fds[1]
        echo = _QuietStreamHandler(open(capture._saved_fds[1], "w", encoding="utf-8",  # noqa: SIM115
                                        errors="backslashreplace", closefd=False))
        echo.setFormatter(handler.formatter)
        root.handlers[:] = [handler, echo]
        return capture

    def _redirect(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved_fds = (os.dup(1), os.dup(2))  # non-inheritable copies, restored at close
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        # A pipe makes stdout block-buffered: a print() must show up when it is made.
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,),
                                        name="tenant-output", daemon=True)
        self._thread.start()

    def _pump(self, read_fd: int) -> None:
        """Copy lines from the pipe into the handler until every writer has closed it."""
        pending = b""
        try:
            while chunk := os.read(read_fd, 65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(line)
                while len(pending) > MAX_LINE_BYTES:
                    self._emit(pending[:MAX_LINE_BYTES])
                    pending = pending[MAX_LINE_BYTES:]
            if pending:
                self._emit(pending)
        finally:
            os.close(read_fd)

    def _emit(self, line: bytes) -> None:
        if self._saved_fds is not None:
            with contextlib.suppress(OSError):  # the router's stderr gone: the file still has it
                write_all(self._saved_fds[1], line + b"\n")
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        record = logging.LogRecord(OUTPUT_LOGGER, logging.INFO, __file__, 0, text, None, None)
        self.handler.handle(record)

    def close(self) -> None:
        """Give fds 1 and 2 back their old files, let the thread write what is left in the
        pipe (bounded: a checkpoint child still running keeps the pipe open). The handler
        stays the root logger's: a line logged after this still goes to the file."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self._saved_fds is not None:
            for target, saved in zip((1, 2), self._saved_fds, strict=True):
                os.dup2(saved, target)
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT_S)
        # The saved fds stay open: the echo handler writes to one until the process exits.
        self.handler.flush()
