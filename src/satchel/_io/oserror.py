"""OS errors, translated: a failed system call becomes the :class:`SatchelOSError` for its errno.

Writers wrap their file system calls in :func:`os_errors`, so a full disk reaches the caller as
``DiskFullError`` (still an ``OSError`` with its ``errno``) naming the file the caller asked for,
never the temporary name, and saying what to do; the original error is the ``__cause__``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SatchelError, SatchelOSError

__all__ = ["make_folder", "os_errors"]


@contextmanager
def os_errors(path: str | os.PathLike[str], doing: str) -> Iterator[None]:
    """Re-raise a plain ``OSError`` from the block as a ``SatchelOSError`` naming ``path``.

    ``doing`` completes "cannot ...": ``"write"``, ``"save step 7"``. satchel's own errors (a
    ``SatchelFileNotFoundError``, a ``CheckpointLockedError``) pass through unchanged.

    Example::

        with os_errors(path, "write"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT)   # ENOSPC -> DiskFullError
    """
    try:
        yield
    except SatchelError:
        raise
    except OSError as e:
        raise SatchelOSError.from_oserror(e, doing=doing, path=path) from e


def make_folder(path: Path, *, doing: str) -> None:
    """Create ``path`` and its missing parents; an existing folder is fine.

    Raises:
        SatchelNotADirectoryError: ``path`` or one of its parents is a file.
        SatchelOSError: any other failure (read-only, permission, full disk).
    """
    with os_errors(path, doing):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError as e:
            # pathlib re-raises EEXIST only when the path exists and is not a folder: say so.
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from e
