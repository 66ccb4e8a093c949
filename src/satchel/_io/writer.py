"""Executes a save :class:`~satchel._plan.Plan`: tensors go from their own memory to the file.

Two orders, one result (the same bytes):

* Small states: every tensor is hashed, the header rendered, then header and data written
  front to back; small tensors are gathered into 1 MiB writes (50,000 tiny write() calls cost
  more than the copy).
* From 64 MiB of data on: the data is written first, after room for the header (whose length
  does not depend on the digests: they are fixed-width), while a second thread hashes the same
  tensors (xxh3 releases the GIL); the header goes in last, at offset 0, then the fsync. Each
  written stretch is handed to the disk at once (Linux ``sync_file_range``): with gigabytes of
  RAM, the kernel would otherwise keep a 1 GiB file dirty in memory until the fsync, which then
  pays the whole disk write after the copying is over, instead of alongside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from .._gcpause import paused_gc
from .._plan import Plan, digests, header_len, render_header
from .._progress import Progress
from .atomic import atomic_file, write_all

__all__ = ["Written", "write_plan"]

_BATCH = 1 << 20
_STEP = 64 << 20  # large tensors are written in steps of this size (progress reports)
_OVERLAP_FROM = 64 << 20  # below this, a second thread costs more than the hash it hides
_FLUSH = 32 << 20  # bytes written between two early-writeback hints


@dataclass(frozen=True)
class Written:
    """What landed on disk: its size and, when asked for, the xxh3-64 of the whole file."""

    size: int
    xxh3: str


def write_plan(
    plan: Plan,
    path: Path,
    *,
    progress: Progress | None = None,
    file_digest: bool = False,
    sums: Sequence[str] | None = None,
    sync_folder: bool = True,
) -> Written:
    """Write ``plan`` atomically to ``path``.

    With ``file_digest`` the xxh3-64 of the whole file is also returned (the manager's commit
    record needs it); a plain save skips that pass over the bytes. ``sums`` are the stored
    tensors' digests when the caller already has them (a sharded save hashes once).
    """
    with atomic_file(path, sync_folder=sync_folder) as fd:
        if sums is None and not file_digest and plan.data_len >= _OVERLAP_FROM:
            return Written(_overlapped(plan, fd, progress), "")
        if sums is None:
            sums = digests(plan)
        with paused_gc():  # rendering builds the header's many small objects; writing builds none
            header = render_header(plan, sums)
        digest = _sequential(header, plan, fd, progress, file_digest=file_digest)
    return Written(len(header) + plan.data_len, digest)


def _overlapped(plan: Plan, fd: int, progress: Progress | None) -> int:
    """Data first (hashed alongside by a second thread), header last; returns the file size."""
    start = header_len(plan)
    found: list[list[str]] = []
    failed: list[BaseException] = []

    def hash_all() -> None:
        try:
            found.append(digests(plan))
        except BaseException as e:  # re-raised on the caller's thread below
            failed.append(e)

    hasher = threading.Thread(target=hash_all, name="satchel-hash", daemon=True)
    hasher.start()
    try:
        os.lseek(fd, start, os.SEEK_SET)
        # Progress counts the header's room as written, so the last report is the file size.
        report = None if progress is None else (lambda done: progress(start + done))
        _sequential(b"", plan, fd, report, file_digest=False, flushed_from=start)
    finally:
        hasher.join()
    if failed:
        raise failed[0]
    header = render_header(plan, found[0])
    if len(header) != start:  # digests are fixed-width: the header cannot change length
        raise AssertionError(f"header is {len(header)} bytes, {start} were reserved")
    _pwrite_all(fd, header, 0)
    return start + plan.data_len


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _sync_file_range() -> Callable[[int, int, int], Any] | None:
    """Linux's sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE: start writeback of the range, do not wait for it
    return lambda fd, offset, nbytes: fn(fd, offset, nbytes, write)


_START_WRITEBACK = _sync_file_range()


def _sequential(
    header: bytes,
    plan: Plan,
    fd: int,
    progress: Progress | None,
    *,
    file_digest: bool,
    flushed_from: int | None = None,
) -> str:
    """Write ``header`` then the data at the file's position; with ``flushed_from`` (that
    position), start the disk on each stretch as soon as it is written."""
    digest = xxhash.xxh3_64() if file_digest else None
    done = 0
    hint = _START_WRITEBACK if flushed_from is not None else None
    pos = flushed_from or 0
    hinted = pos

    def emit(data: bytearray | memoryview) -> None:
        nonlocal done, pos, hinted
        if digest is not None:
            digest.update(data)
        view = memoryview(data).cast("B")
        step = _FLUSH if hint is not None else _STEP
        for i in range(0, len(view), step):
            part = view[i : i + step]
            write_all(fd, part)
            done += len(part)
            pos += len(part)
            if hint is not None and pos - hinted >= _FLUSH:
                hint(fd, hinted, pos - hinted)  # only a hint: its failure changes nothing
                hinted = pos
            if progress is not None:
                progress(done)

    pending = bytearray(header)
    for stored in plan.stored:
        chunk = stored.data
        if chunk.nbytes >= _BATCH:
            if pending:
                emit(pending)
                pending.clear()
            emit(chunk.data)
        else:
            pending += chunk.data
            if len(pending) >= _BATCH:
                emit(pending)
                pending.clear()
    if pending:
        emit(pending)
    return digest.hexdigest() if digest is not None else ""
