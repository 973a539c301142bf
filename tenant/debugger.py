"""pdb for a breakpoint on a console connection (runs in the tenant worker).

`ConsolePdb` is pdb with its input and output on a `tenant.pdbio.SocketPdbIO`, no SIGINT
handler (the worker owns its signals) and no .pdbrc. `quit` and end of input continue instead
of raising BdbQuit: a quit would end the tenant's request with a return value of None.
"""

from __future__ import annotations

import pdb
from typing import IO, cast

from tenant.pdbio import SocketPdbIO


class ConsolePdb(pdb.Pdb):
    def __init__(self, io: SocketPdbIO) -> None:
        stream = cast(IO[str], io)  # file-like enough for pdb: write, flush, readline
        super().__init__(stdin=stream, stdout=stream, nosigint=True, readrc=False)
        self.use_rawinput = False
        self.prompt = "(Pdb) "

    def do_quit(self, arg: str) -> bool | None:
        self.message("quit continues the request here (Ctrl-D at >>> detaches)")
        return bool(self.do_continue(arg))

    do_q = do_exit = do_quit

    def do_EOF(self, arg: str) -> bool | None:
        return bool(self.do_continue(arg))
