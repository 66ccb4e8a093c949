"""Whether a step's files are what its commit record says (SPEC 8.4, 8.12, 8.16, 8.18).

A step is valid when every file its record lists — item files, the files of item folders, and
the pool files in the root's ``blobs/`` it references — is a regular file (never a link) of
the recorded size and whole-file xxh3-64. Any failure to read counts against the step, never
escapes as an error.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._shards.pool import POOL_DIR
from ..errors import FormatError
from . import workers
from .files import digest, open_folder, open_regular, step_folder
from .record import CommitRecord, FileRecord, ItemRecord

__all__ = ["check_files"]


def check_files(
    folder: Path, record: CommitRecord, *, pool_seen: dict[FileRecord, str | None] | None = None
) -> str | None:
    """Why the files disagree with the record, or ``None`` if the step is valid (SPEC 8.4).

    ``pool_seen`` remembers the pool files already checked (SPEC 8.18) across the steps of one
    listing, so a backbone every step shares is read once, not once per step.

    Any failure to read counts against the step (SPEC 8.12), never escapes as an error: a
    missing, non-regular or unreadable file, another size, another digest. An item folder is
    opened like the step's, never through a link (SPEC 8.16); its files are checked by
    ``workers.CHECK_WORKERS`` threads (one: more did not pay).
    """
    try:
        with step_folder(folder) as dir_fd:
            for name, item in record.items.items():
                problem = _check_item(dir_fd, folder, name, item)
                if problem is not None:
                    return problem
        if record.pool:
            return _check_pool(folder.parent / POOL_DIR, record.pool, pool_seen)
    except FileNotFoundError:
        return f"{folder.name}: the step folder is gone"
    except (FormatError, OSError) as e:
        return str(e)
    return None


def _check_item(dir_fd: int, folder: Path, name: str, item: ItemRecord) -> str | None:
    if item.folder is None:
        (rec,) = item.files
        return _check_file(dir_fd, name, rec, rec.file, str(folder / rec.file))
    sub = folder / item.folder
    try:
        sub_fd = open_folder(item.folder, sub, dir_fd=dir_fd)
    except FileNotFoundError:
        return f"item {name!r}: folder {item.folder} is missing"
    except FormatError as e:
        return f"item {name!r}: {item.folder}: {e.reason}"
    except OSError as e:
        return f"item {name!r}: {item.folder} cannot be read: {e}"
    try:

        def check(rec: FileRecord) -> None:
            shown = f"{item.folder}/{rec.file}"
            problem = _check_file(sub_fd, name, rec, shown, str(sub / rec.file))
            if problem is not None:
                raise _Problem(problem)  # no further file is started

        workers.each(check, item.files, workers=workers.CHECK_WORKERS)
    except _Problem as e:
        return str(e)
    finally:
        os.close(sub_fd)
    return None


def _check_pool(
    blobs: Path, pool: tuple[FileRecord, ...], seen: dict[FileRecord, str | None] | None
) -> str | None:
    """SPEC 8.18: every pool file the step references, in the root's pool folder (opened
    without following a link), with its recorded size and digest."""
    try:
        fd = open_folder(blobs, blobs, what="the pool folder")
    except FileNotFoundError:
        return f"the pool folder {POOL_DIR}/ is missing"
    except FormatError as e:
        return f"{POOL_DIR}: {e.reason}"
    try:
        for rec in pool:
            if seen is not None and rec in seen:
                problem = seen[rec]
            else:
                shown = f"{POOL_DIR}/{rec.file}"
                problem = _check_file(fd, "pool", rec, shown, str(blobs / rec.file))
                if problem is not None:
                    problem = problem.replace("item 'pool': ", "", 1)
                if seen is not None:
                    seen[rec] = problem
            if problem is not None:
                return problem
    finally:
        os.close(fd)
    return None


class _Problem(Exception):
    """Why a file of an item folder disagrees with the record (internal to ``_check_item``)."""


def _check_file(dir_fd: int, name: str, rec: FileRecord, shown: str, where: str) -> str | None:
    what = f"item {name!r}: {shown}"
    try:
        fd = open_regular(dir_fd, rec.file, where)
    except FileNotFoundError:
        return f"item {name!r}: file {shown} is missing"
    except FormatError as e:
        return f"{what}: {e.reason}"
    except OSError as e:
        return f"{what} cannot be read: {e}"
    try:
        size = os.fstat(fd).st_size
        if size != rec.size:
            return f"{what} is {size} bytes, record says {rec.size}"
        if digest(fd, rec.size) != rec.xxh3:
            return f"{what} does not match its checksum (corrupt)"
    except OSError as e:
        return f"{what} cannot be read: {e}"
    finally:
        os.close(fd)
    return None
