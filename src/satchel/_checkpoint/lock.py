"""The writer lock of a checkpoint root (SPEC 8.6): an OS file lock, so no crash leaves it held."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import CheckpointLockedError
from .layout import LOCK_FILE

__all__ = ["WriterLock"]


class WriterLock:
    """``flock`` on the root's lock file: held while saving or deleting, never by readers.

    The kernel drops the lock when the holder's process exits, however it exits, so a crash
    never leaves the root locked. The holder's pid is written into the file for error messages.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Take the lock without waiting.

        Raises:
            CheckpointLockedError: another process is saving to this root right now.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise CheckpointLockedError(
                    f"{self.path.parent}: another process (pid {holder}) is saving to this "
                    "checkpoint root; use one writer per root (readers need no lock)"
                ) from e
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
