"""The zygote: a preloaded process that forks tenant workers on request.

Started by the router as `python -m tenant.zygote SOCKET_FD APP [CODE_PATH]`. It imports the
tenant runtime, uvicorn, starlette and the app's modules, then rehearses: it runs one whole
throwaway worker in its own process (restore of an empty tenant in a temp dir, uvicorn startup,
a few requests to a path no app routes, stop), so the code every worker runs is imported,
initialised and warmed (CPython 3.11 specialises bytecode in place on first runs: done here,
those writes are not copy-on-write faults in every child). Then `gc.collect(); gc.freeze()`,
so children do not copy the preloaded heap when their collector runs. From then on it holds no
tenant data, no event loop and no open sockets beyond its channels. A fork from here serves its
first request in milliseconds; a fresh interpreter spends a few hundred on imports alone.

Spare: the zygote keeps one child forked ahead ("switchboard: spare worker"), blocked on a
socket pair until a spawn arrives; the zygote hands it the spawn message and descriptors and
answers with its pid, so the fork (about 1-2 ms here) is off the request path. A new spare is
forked only after SPARE_DELAY_S without spawns, so that fork never competes for a CPU with a
worker that is starting. In a burst, the spawns after the first fork directly.

Channel: a Unix SOCK_SEQPACKET socket (one message per packet, at most 64 KiB, JSON):
  router -> zygote  {"op": "spawn", "id": n, "spec": WorkerSpec}
                    + SCM_RIGHTS [listen_fd, control_fd]
  zygote -> router  {"id": n, "pid": int} | {"id": n, "error": str}
                    {"event": "ready", "pid": int, "preload_error": str|null,
                     "warmup_error": str|null, "preload_ms": float}        once, at start
                    {"event": "exit", "pid": int, "status": int}   a worker ended (exit code, or
                                                                   -signal when killed)
The zygote -> spare channel carries the same spawn message and descriptors, once.

The zygote exits when the router closes the channel (ending its spare first), and dies with the
router (PR_SET_PDEATHSIG); a spare exits on end of file from the zygote. Workers forked here do
not die with the zygote (killing it must not take tenants down); they stop when the router's
end of their own control channel closes. Ctrl-C is ignored here: the router handles it.
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import logging
import os
import select
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

MAX_MESSAGE = 65536
SPARE_DELAY_S = 0.2  # quiet time after a spawn before the next spare is forked
WARMUP_TENANT = "zygote-warmup"
WARMUP_PATH = "/__switchboard_zygote_warmup__"  # a path no app routes: a 404, no handler runs
WARMUP_REQUESTS = 3
WARMUP_TIMEOUT_S = 20.0


def preload(app_spec: str) -> str | None:
    """Import everything a worker needs before its first request. Returns an import error."""
    import setproctitle  # noqa: F401
    import starlette.applications  # noqa: F401
    import uvicorn
    import uvicorn.lifespan.off  # imported by every worker's Config.load()
    import uvicorn.protocols.http.httptools_impl
    import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401

    import tenant.runtime

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    if os.environ.get("SWITCHBOARD_CLUSTER_URL"):
        import tenant.pgjournal  # cluster mode: every worker talks to PostgreSQL (~50 ms)
    try:
        tenant.runtime.load_app(app_spec)
    except Exception as exc:  # the worker reports it properly when it boots
        return "".join(traceback.format_exception_only(exc)).strip()
    return None


def rehearse(app_spec: str) -> str | None:
    """Run one throwaway worker in this process, so the code every worker runs is warm.

    The worker restores an empty tenant in a temp dir, serves WARMUP_REQUESTS requests to a
    path no app routes (Starlette answers 404 before any app code or command runs) and stops.
    Everything it set up is undone: logging, signal dispositions, the process title, the
    active tenant context, the temp dir, and any socket it left open (the zygote must hold no
    sockets: every child would inherit them). Returns an error text, or None.
    """
    import setproctitle

    import tenant.context
    from contract.worker import WorkerSpec
    from tenant.runtime import worker_main

    fds_before = _open_fds()
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level)
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    saved_title = setproctitle.setproctitle
    data_dir = tempfile.mkdtemp(prefix="switchboard-zygote-")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    driver: threading.Thread | None = None
    errors: list[str] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        spec = WorkerSpec(tenant=WARMUP_TENANT, port=port, data_dir=data_dir, app=app_spec,
                          root_path=f"/t/{WARMUP_TENANT}", log_level="critical")
        driver = threading.Thread(target=_drive_rehearsal, args=(ours, port, errors),
                                  name="zygote-warmup", daemon=True)
        driver.start()
        setproctitle.setproctitle = lambda title: None  # ps must never show it as a tenant
        code = worker_main(spec, listener.detach(), theirs.detach(), parent=None)
        if code != 0:
            errors.append(f"the rehearsal worker exited with status {code}")
    except Exception as exc:  # a cold zygote still works: report, do not die
        errors.append("".join(traceback.format_exception_only(exc)).strip())
    finally:
        setproctitle.setproctitle = saved_title
        ours.close()  # ends the worker if it is still up; the driver sees it closed
        if driver is not None:
            driver.join(WARMUP_TIMEOUT_S)
            if driver.is_alive():
                errors.append("the rehearsal driver did not finish")
        listener.close()
        theirs.close()
        tenant.context.activate(None)
        root.handlers[:], _ = saved_logging
        root.setLevel(saved_logging[1])
        for sig, handler in saved_signals.items():
            if handler is not None:
                signal.signal(sig, handler)
        signal.set_wakeup_fd(-1)
        shutil.rmtree(data_dir, ignore_errors=True)
        gc.collect()  # finalise what the worker dropped (closing its sockets) before the sweep
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:  # a thread alive at fork() could hold a lock the children then wait on
            errors.append(f"threads still running after the rehearsal: {others}")
        # Sockets only: a leaked socket would be inherited by every child. Other descriptors
        # may be a C library's own (libuv keeps a global pipe for signals and renews it in
        # each child through pthread_atfork): closing one would free a number it still uses.
        leaked = [fd for fd in _open_fds() - fds_before if _is_socket(fd)]
        for fd in leaked:
            with contextlib.suppress(OSError):
                os.close(fd)
        if leaked:
            errors.append(f"the rehearsal left {len(leaked)} sockets open; closed them")
    return "; ".join(errors) or None


def _drive_rehearsal(control: socket.socket, port: int, errors: list[str]) -> None:
    """Runs in a helper thread during the rehearsal: wait for ready, request, then stop it."""
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    try:
        control.settimeout(WARMUP_TIMEOUT_S)
        lines = control.makefile("rb")
        event = json.loads(lines.readline() or b"{}")
        if event.get("event") != "ready":
            errors.append(f"the rehearsal worker did not start: {event.get('error', event)}")
            return
        with socket.create_connection(("127.0.0.1", port), timeout=WARMUP_TIMEOUT_S) as conn:
            request = f"GET {WARMUP_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            for _ in range(WARMUP_REQUESTS):
                conn.sendall(request)
                _read_response(conn, deadline)
        control.sendall(json.dumps({"id": 1, "op": "ping"}).encode() + b"\n")
        while (reply := json.loads(lines.readline() or b"{}")) and reply.get("id") != 1:
            pass  # an event the worker sent meanwhile
        lines.close()
    except (OSError, ValueError) as exc:
        errors.append(f"rehearsal requests failed: {exc}")
    finally:
        with contextlib.suppress(OSError):
            control.shutdown(socket.SHUT_RDWR)  # end of file: the worker stops


def _read_response(conn: socket.socket, deadline: float) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(conn, deadline)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += _recv(conn, deadline)


def _recv(conn: socket.socket, deadline: float) -> bytes:
    if time.monotonic() > deadline:
        raise OSError("rehearsal response timed out")
    chunk = conn.recv(65536)
    if not chunk:
        raise OSError("the rehearsal worker closed the connection")
    return chunk


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _open_fds() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/fd")}
    except OSError:  # not Linux: nothing to compare
        return set()


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def recv_spawn(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(2 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


def prepare(app_spec: str) -> dict[str, Any]:
    """Preload, rehearse, freeze. Returns the fields of the "ready" event."""
    started = time.monotonic()
    error = preload(app_spec)
    warmup_error = None if error else rehearse(app_spec)
    gc.collect()
    gc.freeze()
    return {"preload_error": error, "warmup_error": warmup_error,
            "preload_ms": round((time.monotonic() - started) * 1000, 1)}


class Zygote:
    """The fork loop. Keeps one spare child forked ahead, so a spawn skips the fork."""

    def __init__(self, sock: socket.socket, app_spec: str) -> None:
        self.sock = sock
        self.app_spec = app_spec
        self.wake_r, self.wake_w = os.pipe()
        self.spare: tuple[int, socket.socket] | None = None  # (pid, our end of its channel)
        self.last_spawn = 0.0

    def serve(self, ready: dict[str, Any]) -> int:
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select; reaping is below
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the router's to handle
        send(self.sock, {"event": "ready", "pid": os.getpid(), **ready})
        try:
            return self._loop()
        finally:
            self.drop_spare()

    def _loop(self) -> int:
        while True:
            spare_due = self.last_spawn + SPARE_DELAY_S
            wait = 1.0 if self.spare else max(0.0, spare_due - time.monotonic())
            readable, _, _ = select.select([self.sock.fileno(), self.wake_r], [], [], wait)
            if self.wake_r in readable:
                os.read(self.wake_r, 4096)
            self.reap_children()
            if self.sock.fileno() in readable:
                try:
                    message, fds = recv_spawn(self.sock)
                except (OSError, ValueError):
                    return 1
                if message is None:
                    return 0  # the router closed the channel
                self.spawn(message, fds)
            elif self.spare is None and time.monotonic() >= spare_due:
                try:
                    self.fork_spare()
                except OSError:  # out of processes or memory: spawns fork directly meanwhile
                    self.last_spawn = time.monotonic()

    def spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        from contract.worker import WorkerSpec

        reply: dict[str, Any] = {"id": message.get("id")}
        try:
            if message.get("op") != "spawn" or len(fds) != 2:
                raise ValueError("bad spawn request")
            spec = WorkerSpec(**message["spec"])  # checked here, not in a child that would die
            reply["pid"] = self.hand_to_spare(message, fds) or self.fork_worker(spec, fds)
        except (ValueError, KeyError, TypeError) as exc:
            reply["error"] = f"bad spawn request: {exc}"
        except OSError as exc:
            reply["error"] = f"fork failed: {exc}"
        finally:
            for fd in fds:
                os.close(fd)
        self.last_spawn = time.monotonic()
        send(self.sock, reply)

    def hand_to_spare(self, message: dict[str, Any], fds: list[int]) -> int | None:
        """Pass the spawn (and the descriptors) to the spare; its pid, or None if there is none."""
        if self.spare is None:
            return None
        pid, channel = self.spare
        self.spare = None
        try:
            channel.sendmsg([json.dumps(message).encode()],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except OSError:
            return None  # it died meanwhile: fork instead
        finally:
            channel.close()
        return pid

    def fork_spare(self) -> None:
        """Fork a child that waits for one spawn; replenished only when no spawn is recent, so
        the fork never competes with a worker that is starting."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            self._in_child(lambda: spare_main(theirs))
        theirs.close()
        self.spare = (pid, ours)

    def fork_worker(self, spec: Any, fds: list[int]) -> int:
        from tenant.runtime import worker_main

        pid = os.fork()
        if pid == 0:
            self._in_child(lambda: worker_main(spec, fds[0], fds[1], parent=None))
        return pid

    def _in_child(self, body: Callable[[], int]) -> NoReturn:
        """Drop what is the zygote's, run `body`, exit; never return into the zygote's loop."""
        code = 1
        try:
            self.sock.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            if self.spare is not None:
                self.spare[1].close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a worker's own again
            code = body()
        except BaseException:  # reported, then the child exits: never back into the loop
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)

    def drop_spare(self, timeout_s: float = 2.0) -> None:
        """End the spare and reap it, so nothing of ours outlives the zygote's exit."""
        if self.spare is None:
            return
        pid, channel = self.spare
        self.spare = None
        channel.close()  # end of file: it exits at once
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return
                time.sleep(0.005)

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare[0]:
                self.spare[1].close()
                self.spare = None  # the router never heard of it: no event
                continue
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            try:
                send(self.sock, {"event": "exit", "pid": pid, "status": code})
            except OSError:
                return


def spare_main(channel: socket.socket) -> int:
    """Runs in the spare child: wait for one spawn from the zygote, then be that worker.

    End of file on the channel (the zygote exited or was killed) ends the spare quietly.
    """
    import setproctitle

    from contract.worker import WorkerSpec
    from tenant.runtime import worker_main

    setproctitle.setproctitle("switchboard: spare worker")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C while waiting: the router's to handle
    message, fds = recv_spawn(channel)
    channel.close()
    if message is None or len(fds) != 2:
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any worker
    return worker_main(WorkerSpec(**message["spec"]), fds[0], fds[1], parent=None)


def run(sock: socket.socket, app_spec: str) -> int:
    import setproctitle

    title = f"switchboard: zygote {app_spec}"
    setproctitle.setproctitle(title)
    ready = prepare(app_spec)
    setproctitle.setproctitle(title)  # the rehearsal's worker may have renamed us
    return Zygote(sock, app_spec).serve(ready)


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    app_spec = argv[1]
    if len(argv) > 2 and argv[2]:
        sys.path.insert(0, argv[2])
    from tenant.limits import set_death_signal

    set_death_signal(os.getppid(), sig=signal.SIGKILL)  # it holds nothing worth saving
    sock = socket.socket(fileno=fd)
    return run(sock, app_spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
