"""Executes a save :class:`~satchel._plan.Plan`: tensors go from their own memory to the file.

Two orders, one result (byte-identical files):

* small saves hash every tensor, then write header and data in one pass (small tensors are
  gathered into 1 MiB writes: 50,000 tiny write() calls cost more than the copy);
* large saves write the data first, from a second thread, while this thread computes the
  checksums, then write the header in front (its length is known in advance). The write
  releases the GIL, so hashing (~30 GB/s) hides behind the disk instead of adding to it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .._plan import Plan
from .._progress import Progress
from .atomic import atomic_file, write_all

__all__ = ["Written", "write_plan"]

_BATCH = 1 << 20
_STEP = 64 << 20  # large tensors are written in steps of this size (progress, and overlap)
_OVERLAP_MIN = 64 << 20  # below this much data, hashing first costs less than a thread


@dataclass(frozen=True)
class Written:
    """What landed on disk: its size and, when asked for, the xxh3-64 of the whole file."""

    size: int
    xxh3: str


def write_plan(
    plan: Plan, path: Path, *, progress: Progress | None = None, file_digest: bool = False
) -> Written:
    """Write ``plan`` atomically to ``path``.

    With ``file_digest`` the xxh3-64 of the whole file is also returned (the manager's commit
    record needs it); a plain save skips that pass over the bytes.
    """
    with atomic_file(path) as fd:
        if plan.data_len >= _OVERLAP_MIN and not file_digest:
            header = _data_then_header(plan, fd, progress)
            size = len(header) + plan.data_len
            return Written(size, "")
        header = plan.render(plan.digests())
        digest = _sequential(header, plan, fd, progress, file_digest=file_digest)
    return Written(len(header) + plan.data_len, digest)


def _sequential(
    header: bytes, plan: Plan, fd: int, progress: Progress | None, *, file_digest: bool
) -> str:
    digest = xxhash.xxh3_64() if file_digest else None
    done = 0

    def emit(data: bytearray | memoryview) -> None:
        nonlocal done
        if digest is not None:
            digest.update(data)
        view = memoryview(data).cast("B")
        for i in range(0, len(view), _STEP):
            part = view[i : i + _STEP]
            write_all(fd, part)
            done += len(part)
            if progress is not None:
                progress(done)

    pending = bytearray(header)
    for chunk in plan.chunks:
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


def _data_then_header(plan: Plan, fd: int, progress: Progress | None) -> bytes:
    start = plan.header_len
    failure: list[BaseException] = []

    def write_data() -> None:
        pos, done = start, start
        try:
            for chunk in plan.chunks:
                view = chunk.data
                for i in range(0, len(view), _STEP):
                    part = view[i : i + _STEP]
                    _pwrite_all(fd, part, pos)
                    pos += len(part)
                    done += len(part)
                    if progress is not None:
                        progress(done)
        except BaseException as e:  # re-raised in the saving thread below
            failure.append(e)

    writer = threading.Thread(target=write_data, name="satchel-write")
    writer.start()
    try:
        digests = plan.digests()
    finally:
        writer.join()
    if failure:
        raise failure[0]
    header = plan.render(digests)
    if len(header) != start:  # fixed-width checksums make this impossible; never write a lie
        raise AssertionError("satchel: header length changed between planning and writing")
    _pwrite_all(fd, header, 0)
    return header


def _pwrite_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, pos)
        pos, view = pos + n, view[n:]
