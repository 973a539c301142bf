"""The zygote: a preloaded process that forks tenant workers on request.

Started by the router as `python -m tenant.zygote SOCKET_FD APP [CODE_PATH]`. It imports the
tenant runtime, uvicorn, starlette and the app's modules, runs `gc.collect(); gc.freeze()`
so children do not copy the preloaded heap when the collector runs, and then holds no tenant
data, no event loop and no open sockets beyond its channel. A fork from here serves its first
request in milliseconds; a fresh interpreter spends a few hundred on imports alone.

Channel: a Unix SOCK_SEQPACKET socket (one message per packet, at most 64 KiB, JSON):
  router -> zygote  {"op": "spawn", "id": n, "spec": WorkerSpec}  + SCM_RIGHTS [listen_fd, control_fd]
  zygote -> router  {"id": n, "pid": int} | {"id": n, "error": str}
                    {"event": "ready", "pid": int, "preload_error": str|null}   once, at start
                    {"event": "exit", "pid": int, "status": int}   a worker ended (exit code, or
                                                                   -signal when killed)
The zygote exits when the router closes the channel. Workers forked here do not die with the
zygote (killing it must not take tenants down); they stop when the router's end of their own
control channel closes.
"""

from __future__ import annotations

import array
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

MAX_MESSAGE = 65536


def preload(app_spec: str) -> str | None:
    """Import everything a worker needs before its first request. Returns an import error."""
    import setproctitle  # noqa: F401
    import starlette.applications  # noqa: F401
    import uvicorn  # noqa: F401
    import uvicorn.protocols.http.httptools_impl  # noqa: F401
    import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401

    import tenant.runtime

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    try:
        tenant.runtime.load_app(app_spec)
    except Exception as exc:  # the worker reports it properly when it boots
        return "".join(traceback.format_exception_only(exc)).strip()
    return None


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


def run(sock: socket.socket, app_spec: str) -> int:
    import setproctitle

    from tenant.runtime import WorkerSpec, worker_main

    setproctitle.setproctitle(f"switchboard: zygote {app_spec}")
    error = preload(app_spec)
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select; reaping is below
    send(sock, {"event": "ready", "pid": os.getpid(), "preload_error": error})
    while True:
        readable, _, _ = select.select([sock, wake_r], [], [], 1.0)
        if wake_r in readable:
            os.read(wake_r, 4096)
        reap_children(sock)
        if sock not in readable:
            continue
        try:
            message, fds = recv_spawn(sock)
        except (OSError, ValueError):
            return 1
        if message is None:
            return 0  # the router closed the channel
        if message.get("op") != "spawn" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            send(sock, {"id": message.get("id"), "error": "bad spawn request"})
            continue
        spec = WorkerSpec(**message["spec"])
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = worker_main(spec, fds[0], fds[1], parent=None)
            except BaseException:  # noqa: BLE001 - the child must never return into the zygote loop
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        send(sock, {"id": message.get("id"), "pid": pid})


def reap_children(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        try:
            send(sock, {"event": "exit", "pid": pid, "status": code})
        except OSError:
            return


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    app_spec = argv[1]
    if len(argv) > 2 and argv[2]:
        sys.path.insert(0, argv[2])
    from tenant.runtime import set_death_signal

    set_death_signal(os.getppid(), sig=signal.SIGKILL)  # it holds nothing worth saving
    sock = socket.socket(fileno=fd)
    return run(sock, app_spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
