"""Where the command writes: stdout for results, stderr for errors and progress bars.

Colour is used only on a terminal, never when ``NO_COLOR`` is set (https://no-color.org) or
``TERM=dumb``, unless ``--color always`` asks for it. Progress bars go to stderr and only when
stderr is a terminal (``--no-progress`` turns them off).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal, TextIO

from .._progress import Progress, reporter

__all__ = ["SCHEMA_VERSION", "ColorMode", "Console", "Meter", "Style", "visible_len"]

SCHEMA_VERSION = 1  # the "satchel_cli" field of every --json document (docs/cli.md)

ColorMode = Literal["auto", "always", "never"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


def visible_len(text: str) -> int:
    """Length of ``text`` as shown on screen (ANSI colour codes take no room)."""
    return len(_ANSI.sub("", text))


def wants_colour(stream: TextIO, mode: ColorMode) -> bool:
    """``always``/``never`` win; ``auto`` means a terminal without NO_COLOR and not TERM=dumb."""
    if mode != "auto":
        return mode == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Style:
    """ANSI colouring that is the identity when colour is off."""

    def __init__(self, enabled: bool, *, unicode: bool = True) -> None:
        self.enabled = enabled
        self.unicode = unicode  # box-drawing characters for trees, or plain ASCII

    def __call__(self, text: str, *names: str) -> str:
        if not self.enabled or not names or not text:
            return text
        codes = ";".join(_CODES[n] for n in names)
        return f"\x1b[{codes}m{text}\x1b[0m"


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")  # StringIO holds anything
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class Console:
    """The two output streams of one command run, with their styles and the --json switch."""

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        colour: ColorMode = "auto",
        json_mode: bool = False,
        progress: bool = True,
    ) -> None:
        self.out, self.err = out, err
        self.style = Style(wants_colour(out, colour), unicode=_can_encode(out, "├─│└×…"))
        self.err_style = Style(wants_colour(err, colour))
        self.json_mode = json_mode
        isatty = getattr(err, "isatty", None)
        self.progress_on = progress and bool(isatty and isatty())

    # -- results -------------------------------------------------------------------------------
    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def lines(self, texts: list[str]) -> None:
        for t in texts:
            self.line(t)

    def emit(self, command: str, body: Mapping[str, Any]) -> None:
        """Write the one JSON document of a ``--json`` run (schema in docs/cli.md)."""
        doc = {"satchel_cli": SCHEMA_VERSION, "command": command, **body}
        self.out.write(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")

    # -- errors and progress -------------------------------------------------------------------
    def error(self, message: str) -> None:
        """One line on stderr: ``satchel: error: <message>``."""
        first = " ".join(message.split())  # a message is one line, whatever its source did
        self.err.write(f"{self.err_style('satchel: error:', 'bold', 'red')} {first}\n")
        self.err.flush()

    def api_progress(self) -> bool | None:
        """The ``progress=`` argument for the API: ``True`` on a terminal, else ``None``."""
        return True if self.progress_on else None

    def meter(self, total: int, label: str) -> Meter:
        """A bar for the CLI's own long loops (stats, diff, ls); silent off a terminal."""
        return Meter(reporter(True if self.progress_on else None, total, label), total)


class Meter:
    """Counts bytes done and forwards them to a progress bar (or to nothing)."""

    def __init__(self, report: Progress | None, total: int) -> None:
        self._report, self.total, self.done = report, total, 0

    def add(self, n: int) -> None:
        self.done += n
        if self._report is not None:
            self._report(self.done)

    def finish(self) -> None:
        if self._report is not None:
            self._report(self.total)
