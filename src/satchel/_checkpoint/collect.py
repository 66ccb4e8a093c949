"""Garbage collection of the root's pool: the bytes no committed step references go (SPEC 8.19).

References are counted through the commit records, and only through them: a pool file stays
while any step folder's record lists it. The writer collects with the lock held, at the start
of every save (what a killed save left) and after retention (what the deleted steps alone
referenced); so a pool file no step references outlives at most the next save, whatever was
killed when. A step folder whose record exists but cannot be read might reference anything:
while there is one, nothing is collected (a damaged step is never made worse).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from .._io.atomic import TMP_MARKER, fsync_dir
from .._shards.pool import POOL_DIR, is_pool_file
from ..errors import SatchelError
from .layout import COMMIT_FILE, list_steps
from .record import read_commit

__all__ = ["collect", "referenced"]


def referenced(root: Path) -> set[str] | None:
    """Every pool file a step folder's commit record lists; ``None`` when some step folder has
    a record that cannot be read (its references are unknown)."""
    out: set[str] = set()
    for step, folder in list_steps(root):
        try:
            record = read_commit(folder, expected_step=step)
        except (SatchelError, OSError):
            if os.path.lexists(folder) and os.path.lexists(folder / COMMIT_FILE):
                return None
            continue  # no record (or gone): a folder that is no checkpoint references nothing
        out.update(f.file for f in record.pool)
    return out


def collect(root: Path) -> list[str]:
    """Delete the pool files no commit record lists and the temporary files of killed writes.

    Call with the writer lock held and no pool write in flight. Returns the names removed.
    """
    blobs = root / POOL_DIR
    try:
        st = os.lstat(blobs)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode):
        return []  # a link or a file: never followed, never touched (writing refuses it)
    keep = referenced(root)
    if keep is None:
        return []
    removed = []
    with os.scandir(blobs) as entries:
        for entry in entries:
            name = entry.name
            if TMP_MARKER in name:
                # No pool write is in flight (the lock is held): a killed write left it.
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                removed.append(name)
            elif (
                is_pool_file(name) and name not in keep and not entry.is_dir(follow_symlinks=False)
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)  # a link is removed by its name, never its target
                removed.append(name)
    if removed:
        fsync_dir(blobs)
    return removed
