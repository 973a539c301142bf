"""`switchboard attach NAME [--read-only] [--break MODULE:FUNCTION]`: a live Python console in
a tenant's worker.

The CLI is a thin terminal client: it asks the admin API to open the console (which starts
the tenant and holds it resident), refuses to go on unless this user owns the socket it was
given (the worker checks the peer again with SO_PEERCRED), then speaks the line protocol of
contract/console.py: each statement typed (with readline editing, history in
~/.switchboard_history and tab completion asked of the worker) is run by the worker on its
event loop, and its output printed. A breakpoint that fires opens pdb here, also while the
prompt waits. Ctrl-C interrupts a running statement; Ctrl-D detaches.

Threads: a reader thread prints output as it arrives and queues the other frames; the main
thread owns the terminal (input()) and sends.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import queue
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from contract.console import decode, encode
from ops import common
from ops.errors import CommandError

HISTORY_FILE = "~/.switchboard_history"
HISTORY_LENGTH = 1000
COMPLETE_TIMEOUT_S = 2.0
POLL_S = 0.1
CLOSED = {"event": "closed"}


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register `attach`, `pin`, `unpin` and `upgrade` (ops/cli.py calls this once)."""
    from ops import versions

    attach = commands.add_parser(
        "attach", parents=[common],
        help="open a live Python console inside a tenant's worker (Ctrl-D detaches)")
    attach.add_argument("name", metavar="NAME")
    attach.add_argument("--read-only", action="store_true",
                        help="refuse run(), checkpoint(), breakpoints and writes into state "
                             "(best effort: see docs/debugging.md)")
    attach.add_argument("--break", dest="breaks", action="append", default=[],
                        metavar="MODULE:FUNCTION",
                        help="stop there (in this tenant only) with pdb on this console; may "
                             "be given more than once")
    attach.set_defaults(handler=cmd_attach)
    versions.add_commands(commands, common)


def cmd_attach(args: argparse.Namespace) -> int:
    user = getpass.getuser()
    with common.admin_client(args) as client:
        opened = client.attach(args.name, user, os.getuid(), args.read_only)
    path = Path(str(opened.get("socket")))
    check_owner(path, args.name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot connect to the console of {args.name} at {path}: "
                           f"{exc.strerror or exc}") from exc
    with sock:
        console = ConsoleClient(sock)
        return console.run({"op": "hello", "user": user, "read_only": args.read_only,
                            "breaks": list(args.breaks)})


def check_owner(path: Path, name: str) -> None:
    """Refuse unless this user owns the console socket (the service user runs attach)."""
    uid = os.getuid()
    try:
        owner = path.stat().st_uid
    except PermissionError as exc:
        raise CommandError(f"the console of {name} ({path}) cannot be reached as "
                           f"{getpass.getuser()} (uid {uid}): run attach as the user that runs "
                           "switchboard serve") from exc
    except FileNotFoundError as exc:
        raise CommandError(f"the console of {name} ({path}) is gone: its worker stopped?") \
            from exc
    if owner != uid:
        raise CommandError(f"the console of {name} belongs to uid {owner}, not to "
                           f"{getpass.getuser()} (uid {uid}): run attach as the user that runs "
                           "switchboard serve")


class ConsoleClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self.matches: queue.Queue[list[str]] = queue.Queue()
        self._lock = threading.Lock()
        self._at_prompt = False
        self._input_at_prompt = False  # pdb asked for a line while the prompt waited
        self._reader = threading.Thread(target=self._read, name="console-reader", daemon=True)

    # --- the reader thread -----------------------------------------------------------------

    def _read(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            for line in stream:
                try:
                    frame = decode(line)
                except ValueError:
                    continue
                self._dispatch(frame)
        except OSError:
            pass
        finally:
            self.frames.put(CLOSED)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        if "out" in frame:
            _write(str(frame["out"]))
            return
        event = frame.get("event")
        if event == "matches":
            self.matches.put([str(m) for m in frame.get("matches") or []])
            return
        if event == "break":
            _write(f"\n*** breakpoint on {frame.get('target')}: pdb here (the tenant's other "
                   f"requests wait; released after {frame.get('deadline_s')}s) ***\n")
            return
        if event == "released":
            _write(f"*** breakpoint released: {frame.get('reason')} ***\n")
        with self._lock:
            if event == "input" and self._at_prompt:
                self._input_at_prompt = True
                _write(str(frame.get("prompt") or ""))
                return
        self.frames.put(frame)

    # --- the main thread -------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        try:
            self.sock.sendall(encode(frame))
        except OSError as exc:
            raise CommandError(f"the console connection broke: {exc.strerror or exc}") from exc

    def run(self, hello: dict[str, Any]) -> int:
        self.send(hello)
        self._reader.start()
        try:
            welcome = self.frames.get(timeout=30)
        except queue.Empty:
            raise CommandError("the tenant's worker did not greet the console within 30 s") \
                from None
        if welcome.get("event") != "welcome":
            raise CommandError(str(welcome.get("error") or "the worker closed the console"))
        _write(_banner(welcome))
        history = _setup_readline(self)
        try:
            self._loop()
        finally:
            _save_history(history)
        return 0

    def _loop(self) -> None:
        lines: list[str] = []
        while True:
            try:
                line = self._prompt("... " if lines else ">>> ")
            except EOFError:
                _write("\n")
                return
            except KeyboardInterrupt:
                _write("\nKeyboardInterrupt\n")
                lines = []
                continue
            if line is None:
                return  # the worker went away
            with self._lock:
                pdb_line, self._input_at_prompt = self._input_at_prompt, False
            if pdb_line:
                self.send({"op": "line", "text": line})
                if self._wait_for("released") is None:
                    return
                continue
            lines.append(line)
            self.send({"op": "exec", "source": "\n".join(lines)})
            done = self._wait_for("done")
            if done is None:
                return
            if not done.get("more"):
                lines = []

    def _prompt(self, prompt: str) -> str | None:
        with self._lock:
            self._at_prompt = True
        try:
            return input(prompt)
        finally:
            with self._lock:
                self._at_prompt = False

    def _wait_for(self, event: str) -> dict[str, Any] | None:
        """Wait for `event`, answering pdb's requests for a line meanwhile; None when the
        worker closed the console."""
        while True:
            try:
                frame = self.frames.get(timeout=POLL_S)
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                self.send({"op": "interrupt"})
                continue
            if frame is CLOSED:
                _write("\nthe console was closed by the tenant's worker\n")
                return None
            kind = frame.get("event")
            if kind == "input":
                try:
                    line = input(str(frame.get("prompt") or ""))
                except (EOFError, KeyboardInterrupt):
                    line = "continue"
                self.send({"op": "line", "text": line})
            elif kind == event:
                return frame

    def complete(self, text: str, state: int) -> str | None:
        """readline's completer: the worker's matches for `text`."""
        if state == 0:
            self._completions: list[str] = []
            with contextlib.suppress(CommandError):
                while not self.matches.empty():
                    self.matches.get_nowait()
                self.send({"op": "complete", "text": text})
                with contextlib.suppress(queue.Empty):
                    self._completions = self.matches.get(timeout=COMPLETE_TIMEOUT_S)
        return self._completions[state] if state < len(self._completions) else None


def _banner(welcome: dict[str, Any]) -> str:
    mode = " READ-ONLY" if welcome.get("read_only") else ""
    lines = [f"switchboard console{mode}: tenant {welcome.get('tenant')} "
             f"(pid {welcome.get('pid')}, code version {welcome.get('code_version')})",
             "in scope: state, app, tenant, run(command, **args), checkpoint(), requests(), "
             "breakpoint_on('module:function'); await works; Ctrl-D detaches"]
    if welcome.get("breaks"):
        lines.append("breakpoints: " + ", ".join(welcome["breaks"]))
    if welcome.get("warning"):
        lines.append("warning: " + str(welcome["warning"]))
    return "\n".join(lines) + "\n"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _setup_readline(client: ConsoleClient) -> str | None:
    try:
        import readline
    except ImportError:  # no line editing on this platform: plain input() still works
        return None
    readline.set_completer(client.complete)
    readline.parse_and_bind("tab: complete")
    history = os.path.expanduser(HISTORY_FILE)
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(HISTORY_LENGTH)
    return history


def _save_history(history: str | None) -> None:
    if history is None:
        return
    import readline

    with contextlib.suppress(OSError):
        readline.write_history_file(history)
        os.chmod(history, 0o600)  # statements typed at a tenant's console may hold its data
