"""A headless Chromium and a small Chrome DevTools Protocol (CDP) client for the browser tests.

Wire: one WebSocket (the `websockets` sync client) to the browser endpoint
`ws://127.0.0.1:PORT/devtools/browser/ID`, which Chromium writes to `DevToolsActivePort` in its
profile dir (line 1 the port, line 2 the path). A command is a JSON text frame
`{"id", "method", "params", "sessionId"?}`; its answer carries the same id and either `result` or
`error` `{"code", "message"}`. Every other frame is an event `{"method", "params", "sessionId"?}`,
kept in arrival order in `DevTools.events`. Pages are driven through flattened sessions
(`Target.attachToTarget` with `flatten: true`), so the one socket serves the browser and every
page. Every read has a deadline; nothing here waits forever.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.conftest import alive, cmdline

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
MAX_FRAME_BYTES = 64 << 20  # a full-page PNG screenshot, base64, fits with room to spare


class CDPError(Exception):
    """Chromium answered a command with an error (e.g. the page navigated away mid-evaluate)."""


class JavaScriptError(Exception):
    """An expression evaluated in the page threw; the message is the page's own description."""


class Chromium:
    """One headless Chromium in its own process group, writing only under `workdir`.

    `workdir` holds the profile (`profile/`), a HOME of its own (`home/`: the crash database and
    caches do not follow --user-data-dir) and `chromium.log`. `stop()` SIGKILLs the process group
    (browser, zygotes, renderers, GPU and network helpers); a group already gone (ESRCH) is not
    an error. The crashpad handlers put themselves in sessions of their own, so they are found by
    their command line, which names this workdir, and killed as well.
    """

    def __init__(self, workdir: Path, binary: str = CHROMIUM) -> None:
        self.workdir = workdir
        self.profile_dir = workdir / "profile"
        self.home = workdir / "home"
        self.log_path = workdir / "chromium.log"
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> str:
        """Launch the browser; return its DevTools WebSocket URL once it listens."""
        if not os.access(self.binary, os.X_OK):
            raise AssertionError(f"{self.binary} is missing: run `make system-deps` (apt chromium)")
        for directory in (self.profile_dir, self.home):
            directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}",
                "--remote-debugging-port=0", "about:blank"]
        env = dict(os.environ, HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_CACHE_HOME=str(self.home / ".cache"))
        # Output goes to a file: Chromium is chatty (dbus noise) and a full pipe would stall it.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited {self.proc.returncode}: {self.log_tail()}")
            lines = port_file.read_text().split() if port_file.exists() else []
            # Both lines present means the file is complete (it is written in one go, but check).
            if len(lines) == 2 and lines[1].startswith("/devtools/browser/"):
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            if time.monotonic() > deadline:
                raise AssertionError(f"chromium not listening after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        # Left alone they exit once the browser is gone; a failed test should not wait on that.
        for pid in processes_naming(str(self.workdir)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def processes_naming(text: str) -> list[int]:
    """Live processes, other than this one, whose command line contains `text` (from /proc)."""
    pids = (int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    return [pid for pid in pids if pid != os.getpid() and text in cmdline(pid) and alive(pid)]


class DevTools:
    """A CDP connection to the browser: commands by id, events buffered in arrival order."""

    def __init__(self, ws: ClientConnection, timeout: float = 60) -> None:
        self.ws = ws
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._answers: dict[int, dict[str, Any]] = {}

    @classmethod
    @contextlib.contextmanager
    def connect(cls, url: str, timeout: float = 60) -> Iterator[DevTools]:
        with connect(url, max_size=MAX_FRAME_BYTES, open_timeout=timeout, compression=None) as ws:
            yield cls(ws, timeout)

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session_id: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Run one command and return its result; CDPError if Chromium refused it."""
        command_id = next(self._ids)
        frame: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            frame["sessionId"] = session_id
        self.ws.send(json.dumps(frame))
        deadline = time.monotonic() + (timeout or self.timeout)
        while command_id not in self._answers:
            self._read_one(deadline, f"the answer to {method}")
        answer = self._answers.pop(command_id)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error'].get('message')} ({answer['error']})")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def mark(self) -> int:
        """A position in the event log, for `wait_event(..., since=mark)`."""
        return len(self.events)

    def wait_event(self, method: str, *, since: int = 0, session_id: str | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """The first event `method` (for `session_id`, if given) at or after position `since`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        index = since
        while True:
            for event in self.events[index:]:
                if event["method"] == method and session_id in (None, event.get("sessionId")):
                    return event
            index = len(self.events)
            self._read_one(deadline, f"the event {method}")

    def _read_one(self, deadline: float, waiting_for: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {waiting_for} from chromium before the deadline")
        try:
            raw = self.ws.recv(timeout=remaining)
        except TimeoutError as exc:
            raise AssertionError(f"no {waiting_for} from chromium before the deadline") from exc
        message: dict[str, Any] = json.loads(raw)
        if "id" in message:
            self._answers[message["id"]] = message
        else:
            self.events.append(message)


class Page:
    """One browser tab, attached over a flattened session."""

    def __init__(self, devtools: DevTools, target_id: str, session_id: str) -> None:
        self.devtools = devtools
        self.target_id = target_id
        self.session_id = session_id

    @classmethod
    def open(cls, devtools: DevTools, width: int = 1280, height: int = 900) -> Page:
        """A new blank tab with Page, Runtime and Log reporting on, before anything loads."""
        target_id = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = devtools.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})
        page = cls(devtools, target_id, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page

    def send(self, method: str, params: dict[str, Any] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        return self.devtools.send(method, params, session_id=self.session_id, timeout=timeout)

    def wait_event(self, method: str, since: int = 0,
                   timeout: float | None = None) -> dict[str, Any]:
        return self.devtools.wait_event(method, since=since, session_id=self.session_id,
                                        timeout=timeout)

    def navigate(self, url: str) -> None:
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise AssertionError(f"navigating to {url} failed: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), returned by value as JSON."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text")
            raise JavaScriptError(f"{description}\n  in: {expression.strip()[:300]}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll an expression until it is truthy; return that value, fail at the deadline.

        While the page navigates, the old document's context vanishes under the command (a CDP
        error); that is "not yet", not a failure.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            with contextlib.suppress(CDPError):
                last = self.evaluate(expression)
                if last:
                    return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not seen within {timeout}s (last value {last!r})")
            time.sleep(0.05)

    def events(self, method: str, keep: Callable[[dict[str, Any]], bool] = lambda _: True,
               ) -> list[dict[str, Any]]:
        """The params of every event `method` this tab has reported so far."""
        return [e["params"] for e in self.devtools.events
                if e["method"] == method and e.get("sessionId") == self.session_id
                and keep(e["params"])]

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

