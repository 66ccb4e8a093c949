"""Executes a save :class:`~satchel._plan.Plan`: tensors go from their own memory to the file.

Every tensor is hashed, the header rendered, then header and data written front to back in one
pass; small tensors are gathered into 1 MiB writes (50,000 tiny write() calls cost more than
the copy). Writing the data first from a second thread while hashing, header last, was tried
and measured slower on this project's disk (median 1.18 s against 0.66 s for 1 GiB), so the
simple order stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .._gcpause import paused_gc
from .._plan import Plan, digests, render_header
from .._progress import Progress
from .atomic import atomic_file, write_all

__all__ = ["Written", "write_plan"]

_BATCH = 1 << 20
_STEP = 64 << 20  # large tensors are written in steps of this size (progress reports)


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
        if sums is None:
            sums = digests(plan)
        with paused_gc():  # rendering builds the header's many small objects; writing builds none
            header = render_header(plan, sums)
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
