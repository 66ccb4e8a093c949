"""The writer lock of a checkpoint root (SPEC 8.6): an OS file lock, so no crash leaves it held.

A :class:`CheckpointManager` takes it when it is made and keeps it until ``close()``: two
trainers on one root would otherwise interleave saves and delete each other's steps. Readers
never take it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path

from ..errors import CheckpointLockedError, FormatError
from .layout import LOCK_FILE

__all__ = ["WriterLock"]

# Never through a link (it could point anywhere), never truncated before it is ours, never
# waiting (a FIFO opens at once, then is refused), never inherited by a program we start.
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_INFO = 4096  # what is read back of the holder's description


class WriterLock:
    """``flock`` on the root's lock file, taken at once or refused.

    The kernel drops the lock when the holder's process exits, however it exits, so a crash
    never leaves the root locked. The holder writes who it is into the file (pid, host, since
    when, as JSON) so that the error another writer gets names it.

    Raises:
        CheckpointLockedError: another writer (in this process or another) holds the lock.
        FormatError: the lock file is a link, a FIFO, a folder or anything else not regular.
        OSError: the root cannot be written.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self.pid = os.getpid()
        fd = _open(self.path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise CheckpointLockedError(_refusal(root, fd)) from e
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            info = {"pid": self.pid, "host": socket.gethostname(), "since": since}
            os.ftruncate(fd, 0)  # ours now: whatever the last holder wrote goes
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this process holds the lock through this object (a forked child does not)."""
        return self._fd is not None and self.pid == os.getpid()

    def release(self) -> None:
        """Unlock and close; idempotent. In a forked child, only the inherited copy is closed:
        unlocking it would unlock the parent's lock, which is the same open file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.pid == os.getpid():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)  # also for copies a fork handed on
        os.close(fd)


def _open(path: Path) -> int:
    try:
        fd = os.open(path, _FLAGS, 0o644)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        kind = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a folder"}.get(e.errno, "special")
        raise _not_regular(path, kind) from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, "a FIFO" if stat.S_ISFIFO(mode) else "a special file")
    return fd


def _not_regular(path: Path, kind: str) -> FormatError:
    reason = f"the writer lock is {kind}, not a regular file"
    return FormatError(
        f"{path}: {reason}; satchel neither follows nor replaces it: remove it and try again",
        path=str(path),
        reason=reason,
    )


def _refusal(root: Path, fd: int) -> str:
    """The message for a writer that finds the lock held, naming the holder if it can."""
    try:
        info = json.loads(os.pread(fd, _MAX_INFO, 0))
        pid, host, since = int(info["pid"]), str(info["host"]), str(info["since"])
    except (OSError, ValueError, TypeError, KeyError):
        holder = "another writer (it has not said who it is yet)"
    else:
        holder = f"pid {pid} on {host} since {since}"
        if pid == os.getpid() and host == socket.gethostname():
            holder += " (this process: close() its other CheckpointManager first)"
    return (
        f"{root}: the checkpoint root is locked by a CheckpointManager: {holder}; use one "
        "writer per root, and satchel.CheckpointRoot to read it (readers need no lock)"
    )
