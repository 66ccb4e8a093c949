"""The CheckpointManagers of this process that are not closed yet (SPEC 8.6, 8.14).

At interpreter exit each is finished and a background save that failed unheard is reported on
stderr; in a forked child each is disowned, so the child never holds its parent's root. Python
joins non-daemon threads (the saves in flight) before it runs exit handlers, and lets an exit
handler change the exit status only through ``os._exit``, which would skip every other
library's exit handlers: the status is left as it is.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import weakref
from pathlib import Path
from typing import Protocol

__all__ = ["Writer", "add", "discard", "report"]


class Writer(Protocol):
    """What this module needs of a manager."""

    def _finish_at_exit(self) -> None:
        """Finish the save in flight, report its failure (:func:`report`), release the lock."""

    def _disown(self) -> None:
        """In a forked child: let go of the parent's lock and failures without touching them."""


_open: weakref.WeakSet[Writer] = weakref.WeakSet()


def add(writer: Writer) -> None:
    _open.add(writer)


def discard(writer: Writer) -> None:
    _open.discard(writer)


def report(root: Path, step: int, error: BaseException) -> None:
    """One line on stderr for a background save that failed and was never raised."""
    what = f"{type(error).__name__}: {error}".replace("\n", " ")
    line = (
        f"satchel: {root}: step {step} was not saved: its background save failed with {what} "
        "(wait() or close() raise such errors); the earlier checkpoints are intact\n"
    )
    stream = sys.stderr if sys.stderr is not None else sys.__stderr__
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.write(line)
            stream.flush()


@atexit.register
def _finish_all() -> None:
    for writer in list(_open):
        _open.discard(writer)
        writer._finish_at_exit()


def _disown_all() -> None:
    for writer in list(_open):
        _open.discard(writer)
        writer._disown()


os.register_at_fork(after_in_child=_disown_all)
