"""Atomic file replacement (SPEC 7): temp file in the same folder, fsync, rename, fsync folder.

A crash or an error at any point leaves either the old file or the new one under the final
name, never a mix, and no temp file behind (the temp is removed on every error path; one left
by a killed process carries a recognisable name so it can be cleaned).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TMP_MARKER", "atomic_file", "fsync_dir", "write_all"]

TMP_MARKER = ".satchel-tmp-"


def fsync_dir(folder: Path) -> None:
    """Make a rename or create inside ``folder`` durable."""
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
def atomic_file(path: Path) -> Iterator[int]:
    """Yield a file descriptor to write the new content of ``path``; commit on clean exit.

    Raises:
        OSError: from any step; the previous ``path`` is untouched and the temp file removed.
    """
    folder = path.parent
    tmp = folder / f".{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    # O_EXCL: two concurrent saves never share a temp file (docs/formats.md rule W5).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(folder)


def _remove_quietly(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
