"""Opening the files of a step (SPEC 8.12): folders and regular files only, bounded reads.

Every file of a step is opened here and only here, never through a link and only if it is a
folder or a regular file, checked on the open descriptor: a FIFO or a device named like a
checkpoint file must not block or feed a reader, and a link must not lead a reader (or a
writer's retention) out of the root. Reads are bounded: a commit record by its cap, an item
file by its recorded size.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import xxhash

from ..errors import FormatError

__all__ = ["digest", "open_folder", "open_regular", "read_at_most", "step_folder"]

_CHUNK = 4 << 20  # item files are hashed this many bytes at a time
# Read-only, never through a link, never waiting (a FIFO opens at once), never a terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextmanager
def step_folder(folder: Path) -> Iterator[int]:
    """A descriptor of ``folder``, opened without following a link: files are opened in it."""
    fd = open_folder(folder, folder, what="a step folder")
    try:
        yield fd
    finally:
        os.close(fd)


def open_folder(
    name: str | Path, where: Path, *, dir_fd: int | None = None, what: str = "a folder"
) -> int:
    """Open the folder ``name`` (in ``dir_fd``) without following a link.

    Raises:
        FormatError: it is a link or not a folder (``reason`` says which).
        OSError: it cannot be opened (``FileNotFoundError``: there is none).
    """
    try:
        if dir_fd is None:
            return os.open(name, _DIR_FLAGS)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        reason = f"is {_kind(where)}, not {what}"
        raise FormatError(f"{where}: {reason}", path=str(where), reason=reason) from e


def open_regular(dir_fd: int, name: str, where: str) -> int:
    """Open ``name`` in ``dir_fd`` for reading, refusing anything but a regular file.

    Raises:
        FormatError: a link, FIFO, folder, device or socket (``reason`` says which).
        OSError: it cannot be opened (``FileNotFoundError``: there is none).
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        kind = "a symbolic link" if e.errno == errno.ELOOP else "not openable"
        kind = "a folder" if e.errno == errno.EISDIR else kind
        raise _not_regular(where, kind) from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(where, _KINDS.get(stat.S_IFMT(mode), "a special file"))
    return fd


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFREG: "a regular file",
}


def _kind(path: Path) -> str:
    try:
        return _KINDS.get(stat.S_IFMT(os.lstat(path).st_mode), "a special file")
    except OSError:
        return "not readable"


def _not_regular(where: str, kind: str) -> FormatError:
    reason = f"is {kind}, not a regular file"
    return FormatError(f"{where}: {reason}", path=where, reason=reason)


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``: a bound on what a hostile file can make us hold."""
    parts, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def digest(fd: int, size: int) -> str:
    """xxh3-64 of the first ``size`` bytes of ``fd``, read in chunks (no mapping: a file cut
    short meanwhile is an error here, not a SIGBUS)."""
    h = xxhash.xxh3_64()
    buf = bytearray(min(size, _CHUNK))
    view = memoryview(buf)
    done = 0
    while done < size:
        n = os.preadv(fd, [view[: min(len(buf), size - done)]], done)
        if n == 0:
            raise OSError(errno.EIO, f"file ended after {done} of {size} bytes (cut short)")
        h.update(view[:n])
        done += n
    return h.hexdigest()
