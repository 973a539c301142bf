"""A one-line progress bar for long CLI transfers (export, import), on stderr when it is a
terminal and silent when it is not, so scripts and pipes see only the command's output.

Written by hand: a redraw is one line of text, and `rich` would cost the CLI's start time on
every command for this one use.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from ops.output import format_bytes

REDRAW_S = 0.1
WIDTH = 30


class Progress:
    def __init__(self, label: str, total: int | None, stream: TextIO | None = None,
                 unit: Callable[[int], str] = format_bytes) -> None:
        self.label = label
        self.unit = unit  # how an amount is shown: bytes by default, or a count of things
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._drawn_at = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._drawn_at >= REDRAW_S:
            self._drawn_at = now
            self._draw()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        size = self.unit(self.done)
        if self.total:
            share = min(1.0, self.done / self.total)
            bar = "#" * int(share * WIDTH)
            total = self.unit(self.total)
            line = f"{self.label} [{bar:<{WIDTH}}] {share:4.0%} {size} of {total}"
        else:
            line = f"{self.label} {size}"
        self.stream.write("\r" + line)
        self.stream.flush()
