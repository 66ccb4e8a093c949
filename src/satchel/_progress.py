"""Progress reporting for long saves, loads and conversions (``progress=`` in the API).

``progress`` is ``None``/``False`` (silent), ``True`` (a bar on stderr, drawn only when stderr
is a terminal) or a callable ``fn(done_bytes, total_bytes)``. Reports are rate-limited so a
50,000-tensor file does not spend its time printing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "ProgressArg", "human_bytes", "reporter"]

ProgressArg = bool | Callable[[int, int], None] | None
Progress = Callable[[int], None]  # called with bytes done so far


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _Bar:
    """A one-line bar redrawn in place with ``\\r``; finished with a newline."""

    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        frac = done / total if total else 1.0
        width = 28
        filled = int(frac * width)
        rate = done / max(now - self.start, 1e-9)
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {frac:6.1%} "
            f"{human_bytes(done)}/{human_bytes(total)} {human_bytes(rate)}/s"
        )
        self.stream.write(line)
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def reporter(progress: ProgressArg, total: int, label: str) -> Progress | None:
    """A ``done -> None`` function for ``progress``, or ``None`` when nothing should be shown."""
    if progress is None or progress is False:
        return None
    if progress is True:
        if not sys.stderr.isatty():
            return None
        fn: Callable[[int, int], None] = _Bar(label, total, sys.stderr)
    elif callable(progress):
        fn = progress
    else:
        raise TypeError(f"progress must be None, a bool or a callable, got {progress!r}")
    finished = False

    def report(done: int) -> None:
        nonlocal finished
        if not finished:
            fn(min(done, total), total)
            finished = done >= total

    return report
