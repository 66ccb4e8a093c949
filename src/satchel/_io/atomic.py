"""Atomic file replacement (SPEC 7): temp file in the same folder, fsync, rename, fsync folder.

A crash or an error at any point leaves either the old file or the new one under the final
name, never a mix. On an error the temp file is removed. One left by a killed process is
removed by the next save into that folder (SPEC 7.3), which knows it by four signs: its name
(``.satchel-tmp-<pid>-<8 hex>``, short so that every final name the file system allows works),
its age (last changed before that save began), its writer (the pid is not running here) and
its lock: a writer holds an ``flock`` on its temp file from creating it until after the rename,
which also protects a writer whose pid means nothing here (another host or pid namespace).

Every failed system call is raised as the :class:`~satchel.errors.SatchelOSError` for its
errno (``DiskFullError`` for ENOSPC...), naming the final path, not the temp name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .oserror import os_errors

__all__ = [
    "TMP_MARKER",
    "atomic_file",
    "fsync_dir",
    "remove_stale_temps",
    "replace_folder",
    "stale_temps",
    "temp_path",
    "write_all",
]

TMP_MARKER = ".satchel-tmp-"
# SPEC 7.1's name, and the longer ``.<final name>.satchel-tmp-<pid>-<8 hex>`` satchel used
# before, so the leftovers of older versions are recognised too.
_TEMP_NAME = re.compile(r"\.(?:.*\.)?satchel-tmp-(\d{1,10})-[0-9a-f]{8}", re.DOTALL)


def temp_path(folder: Path) -> Path:
    """A fresh temp name in ``folder``: ``.satchel-tmp-<pid>-<8 hex>`` (SPEC 7.1), ≤ 30 bytes."""
    return folder / f"{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


def fsync_dir(folder: Path) -> None:
    """Make a rename or create inside ``folder`` durable.

    Raises:
        SatchelOSError: naming ``folder``.
    """
    with os_errors(folder, "sync the folder"):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is written (a regular file may take less in one call)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


@contextmanager
def atomic_file(path: Path, *, sync_folder: bool = True) -> Iterator[int]:
    """Yield a file descriptor to write the new content of ``path``; commit on clean exit.

    Stale temp files of killed writers in the folder are removed first (SPEC 7.3).
    ``sync_folder=False`` leaves the folder fsync to the caller: a sharded save makes its
    shards' renames durable with one fsync before it commits the index.

    Raises:
        SatchelOSError: from any step (``DiskFullError`` for a full disk...), naming ``path``;
            before the rename the previous ``path`` is untouched and the temp file removed.
    """
    folder = path.parent
    with os_errors(path, "write"):
        remove_stale_temps(folder, before_ns=time.time_ns())
        tmp, fd = _create_temp(folder)
        try:
            try:
                yield fd
                os.fsync(fd)
                os.replace(tmp, path)
            finally:
                os.close(fd)  # releases the flock: only now may a cleaner take the name
        except BaseException:
            _remove_quietly(tmp)
            raise
        if sync_folder:
            fsync_dir(folder)


def replace_folder(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``path``, replacing what is there.

    The old ``path`` is first renamed to a temp name; if ``tmp`` then cannot take its place it
    is renamed back (as a checkpoint's overwrite does, SPEC 8.10), else removed. Only a crash
    between the two renames leaves ``path`` missing (the old content stays under the temp name).

    Raises:
        OSError: from a rename or the folder fsync (the caller names the path).
    """
    old = None
    if path.exists() or path.is_symlink():
        old = temp_path(path.parent)
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, path)
        raise
    try:
        fsync_dir(path.parent)
    finally:
        if old is not None:
            _remove_any(old)


def stale_temps(folder: Path, *, before_ns: int | None = None) -> list[Path]:
    """The temp files in ``folder`` that killed writers left behind (SPEC 7.3), sorted.

    Stale means: a regular file with one of satchel's temp names, last changed before
    ``before_ns`` (default: now), whose pid is not running here and on which no process holds
    an ``flock``. Folders are never listed (a checkpoint manager cleans its own). An unreadable
    folder has none.

    Example::

        for p in stale_temps(Path("runs")):
            print("left by a killed save:", p)
    """
    found = []
    for path in _candidates(folder, time.time_ns() if before_ns is None else before_ns):
        fd = _lock_if_stale(path)
        if fd is not None:
            os.close(fd)
            found.append(path)
    return sorted(found)


def remove_stale_temps(folder: Path, *, before_ns: int) -> list[Path]:
    """Remove what :func:`stale_temps` lists, each while holding its lock; returns them.

    Never raises: a temp file that cannot be removed is left for a later save.
    """
    removed = []
    for path in _candidates(folder, before_ns):
        fd = _lock_if_stale(path)
        if fd is None:
            continue
        try:
            # The name must still be the file we locked, or a new writer's file could go.
            if _same_file(fd, path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(removed)


def _create_temp(folder: Path) -> tuple[Path, int]:
    """Create and lock a fresh temp file; O_EXCL, so two saves never share one (docs/formats.md
    rule W5)."""
    for _ in range(8):
        tmp = temp_path(folder)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # the random part collided: draw again
        try:
            # Blocks only while a cleaner checks this file (microseconds). A file system that
            # cannot lock still saves; the pid in the name then protects the file alone.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, tmp):
                return tmp, fd
        except BaseException:
            os.close(fd)
            _remove_quietly(tmp)
            raise
        os.close(fd)  # a cleaner removed it before we locked it: draw another name
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def _candidates(folder: Path, before_ns: int) -> Iterator[Path]:
    """Temp files by name, age and pid; the lock is checked by :func:`_lock_if_stale`."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mtime_ns < before_ns and not _running(int(m[1])):
            yield Path(entry.path)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    if pid <= 0:
        return False  # no writer has such a pid; os.kill would signal a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists but is someone else's (or not a pid at all: leave it alone)
    return True


def _lock_if_stale(path: Path) -> int | None:
    """Open ``path`` and take its flock without waiting; the fd, or None if a writer holds it.

    O_NONBLOCK and O_NOFOLLOW: a FIFO or a link swapped in under the name never blocks us or
    leads us elsewhere.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
    except OSError:
        pass  # BlockingIOError: a live writer holds it; anything else: leave it alone
    os.close(fd)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _remove_quietly(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
