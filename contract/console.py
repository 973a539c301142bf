"""The console wire: `switchboard attach` (ops/attach.py) <-> the tenant worker (tenant/console.py).

Transport. A Unix stream socket, `<data-dir>/console/<id>.sock` (snapshots/layout.py), bound
by the worker only while an attach is requested: the router asks it with the control op
`console_open` (contract/worker.py) and hands the path to the CLI through the admin API
(`POST /v1/tenants/{name}/attach`). console/ is 0700 and the socket 0600, both the service
user's; the worker also checks the peer with SO_PEERCRED and refuses any uid but its own.
The worker stops listening (and removes the file) when its last session ends, or when nobody
connected within CONNECT_TIMEOUT_S of the request.

Frames. One JSON object per line (UTF-8, `\\n`-terminated, at most MAX_LINE_BYTES), both ways;
the same framing as the control channel (contract.worker.encode/decode).

Client -> worker:
  {"op": "hello", "user": str, "read_only": bool,      first frame, within HELLO_TIMEOUT_S;
   "breaks": ["module:function", ...]}                  breaks are set as breakpoint_on() does
  {"op": "exec", "source": str}                        one statement (maybe several lines)
  {"op": "complete", "text": str}                      tab completion of a name or attribute
  {"op": "line", "text": str}                          a line for a pending "input" (pdb)
  {"op": "interrupt"}                                  cancel the running statement (Ctrl-C)
  end of file                                          detach (Ctrl-D)

Worker -> client:
  {"event": "welcome", "tenant": str, "pid": int, "code_version": str, "read_only": bool,
   "warning": str, "breaks": [str]}                    after hello; "warning" says direct
                                                       mutations of `state` are not journaled
  {"event": "refused", "error": str}                   then the worker closes the connection
  {"out": str}                                         output text, printed as it comes
  {"event": "done", "more": bool}                      the statement finished (its output was
                                                       sent before); more: the source is
                                                       incomplete, send it again with more lines
  {"event": "matches", "matches": [str]}               answer to "complete"
  {"event": "break", "target": str, "deadline_s": float}   a breakpoint fired: a pdb session
                                                       follows on this connection, at any time
                                                       (also while the client sits at its prompt)
  {"event": "input", "prompt": str}                    pdb waits for one "line"
  {"event": "released", "reason": str}                 the pdb session is over (continued,
                                                       deadline passed, or the client left)
"""

from __future__ import annotations

from contract.worker import MAX_LINE_BYTES, decode, encode

__all__ = ["CONNECT_TIMEOUT_S", "HELLO_TIMEOUT_S", "MAX_LINE_BYTES", "decode", "encode"]

CONNECT_TIMEOUT_S = 30.0  # from console_open to the client's connection
HELLO_TIMEOUT_S = 10.0  # from the connection to its hello frame
