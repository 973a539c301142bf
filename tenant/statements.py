"""Running one console statement on the worker's event loop (runs in the tenant worker).

As `python -m asyncio` does: the source is compiled in "single" mode with
PyCF_ALLOW_TOP_LEVEL_AWAIT, turned into a function over the session's namespace, called, and
awaited when it is a coroutine. So `await` works at the prompt, and the loop is blocked by at
most one synchronous statement. Expression values are shown with pprint (into the session's
output, not the worker's stdout: `sys.stdout`, `sys.stderr` and `sys.displayhook` are routed
by a context variable, so the tenant's requests running meanwhile still print to its log).

Whether a statement may change `state` directly (and so must mark the tenant dirty) is
guessed from its syntax tree, best effort: an assignment or `del` through an attribute or a
subscript, an `await`, or a call of anything but a few known readers counts as a write.
Python cannot prove a statement harmless (any call may mutate through a reference), so the
guess errs on "write".
"""

from __future__ import annotations

import ast
import codeop
import contextvars
import io
import itertools
import linecache
import pprint
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

# Calls that only read: a statement made only of these (and plain-name assignments) does not
# mark the tenant dirty. run() journals its own changes; checkpoint() saves them.
READER_CALLS = frozenset({
    "len", "sorted", "list", "dict", "set", "tuple", "repr", "str", "int", "float", "bool",
    "print", "sum", "min", "max", "any", "all", "type", "isinstance", "dir", "vars", "help",
    "range", "enumerate", "zip", "abs", "round", "hasattr", "getattr", "id", "hash", "format",
    "requests", "run", "checkpoint", "breakpoint_on", "breakpoint_off", "breakpoints",
    "pprint", "reversed", "next", "iter",
})
READER_METHODS = frozenset({"get", "keys", "values", "items", "count", "index", "copy",
                            "startswith", "endswith", "lower", "upper", "strip", "split",
                            "join", "format", "result", "done"})

_output: contextvars.ContextVar[io.StringIO | None] = contextvars.ContextVar(
    "console_output", default=None)
_display: contextvars.ContextVar[Callable[[Any], None] | None] = contextvars.ContextVar(
    "console_display", default=None)
_filenames = itertools.count(1)


class _Routed(io.TextIOBase):
    """sys.stdout / sys.stderr: the console's buffer inside a statement, else the original."""

    def __init__(self, original: TextIO) -> None:
        self.original = original

    def write(self, text: str) -> int:
        buffer = _output.get()
        if buffer is not None:
            return buffer.write(text)
        return self.original.write(text)

    def flush(self) -> None:
        if _output.get() is None:
            self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return self.original.isatty()

    @property
    def buffer(self) -> Any:  # code that writes bytes to sys.stdout.buffer
        return self.original.buffer

    def __getattr__(self, name: str) -> Any:  # anything else a stream offers
        return getattr(self.original, name)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")


def install_routing() -> None:
    """Route sys.stdout, sys.stderr and sys.displayhook through the context variables (once)."""
    if not isinstance(sys.stdout, _Routed):
        sys.stdout = _Routed(sys.stdout)
    if not isinstance(sys.stderr, _Routed):
        sys.stderr = _Routed(sys.stderr)
    if getattr(sys.displayhook, "__name__", "") != "_routed_displayhook":
        original = sys.displayhook

        def _routed_displayhook(value: Any) -> None:
            show = _display.get()
            if show is None:
                original(value)
            else:
                show(value)

        sys.displayhook = _routed_displayhook


class Compiler:
    """Compiles console input; None while a statement is incomplete (`for x in y:`)."""

    def __init__(self) -> None:
        self._compile = codeop.CommandCompiler()
        self._compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

    def __call__(self, source: str) -> tuple[Any, ast.AST] | None:
        """(code, tree) for complete input, None for incomplete; raises SyntaxError."""
        filename = f"<console#{next(_filenames)}>"
        code = self._compile(source, filename, "single")
        if code is None:
            return None
        # The source in linecache, so tracebacks and pdb's `list` show the lines typed.
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
        tree = compile(source, filename, "single",
                       ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return code, tree


def may_write(tree: ast.AST) -> bool:
    """Whether the statement may change objects it reaches (see the module docstring)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = (node.targets if isinstance(node, ast.Assign | ast.Delete)
                       else [node.target])
            if isinstance(node, ast.Delete | ast.AugAssign) and not all(
                    isinstance(t, ast.Name) for t in targets):
                return True
            if any(not _plain_target(t) for t in targets):
                return True
        elif isinstance(node, ast.Await) or (isinstance(node, ast.Call) and not _reader_call(node)):
            return True
    return False


def writes_through_reference(tree: ast.AST) -> bool:
    """An assignment or `del` through an attribute or subscript: a write, for sure."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = (node.targets if isinstance(node, ast.Assign | ast.Delete)
                       else [node.target])
            if any(not _plain_target(t) for t in targets):
                return True
    return False


def _plain_target(target: ast.expr) -> bool:
    if isinstance(target, ast.Name):
        return True
    if isinstance(target, ast.Tuple | ast.List):
        return all(_plain_target(t) for t in target.elts)
    if isinstance(target, ast.Starred):
        return _plain_target(target.value)
    return False


def _reader_call(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in READER_CALLS
    if isinstance(func, ast.Attribute):
        return func.attr in READER_METHODS
    return False


def format_value(value: Any) -> str:
    return pprint.pformat(value, width=100, sort_dicts=False)


def format_exception(exc: BaseException) -> str:
    """The traceback from the statement's own frames on (ours are left out)."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<console#"):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


class Capture:
    """Inside `with Capture(show) as out:` the statement's output and displayed values go to
    `out` (a StringIO), for this task and the tasks it starts."""

    def __init__(self, show: Callable[[Any], None]) -> None:
        self.out = io.StringIO()
        self._show = show
        self._tokens: list[contextvars.Token[Any]] = []

    def __enter__(self) -> io.StringIO:
        self._tokens = [_output.set(self.out), _display.set(self._show)]
        return self.out

    def __exit__(self, *exc: object) -> None:
        _display.reset(self._tokens[1])
        _output.reset(self._tokens[0])
