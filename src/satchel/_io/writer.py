"""Executes a save :class:`~satchel._plan.Plan`: header, then each tensor from its own memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import xxhash

from .._plan import Plan
from .._progress import Progress
from .atomic import atomic_file, write_all

__all__ = ["Written", "write_plan"]

# Small tensors are gathered into one buffer per write: 50,000 tiny write() calls cost more than
# the copy. Large tensors go straight from their memory to the kernel, with no extra copy.
_BATCH = 1 << 20
_STEP = 64 << 20  # with a progress bar, large tensors are written in steps of this size


@dataclass(frozen=True)
class Written:
    """What landed on disk: its size and the xxh3-64 of the whole file (for commit records)."""

    size: int
    xxh3: str


def write_plan(
    plan: Plan, path: Path, *, progress: Progress | None = None, file_digest: bool = False
) -> Written:
    """Write ``plan`` atomically to ``path``.

    With ``file_digest`` the xxh3-64 of the whole file is computed on the way (the manager's
    commit record needs it); a plain save skips that second pass over the bytes.
    """
    digest = xxhash.xxh3_64() if file_digest else None
    done = 0

    def emit(fd: int, data: bytearray | memoryview) -> None:
        nonlocal done
        if digest is not None:
            digest.update(data)
        if progress is None:
            write_all(fd, data)
            done += len(data)
            return
        view = memoryview(data).cast("B")
        for i in range(0, len(view), _STEP):
            write_all(fd, view[i : i + _STEP])
            done += len(view[i : i + _STEP])
            progress(done)

    with atomic_file(path) as fd:
        pending = bytearray(plan.header)
        for chunk in plan.chunks:
            if chunk.nbytes >= _BATCH:
                if pending:
                    emit(fd, pending)
                    pending.clear()
                emit(fd, chunk.data)
            else:
                pending += chunk.data
                if len(pending) >= _BATCH:
                    emit(fd, pending)
                    pending.clear()
        if pending:
            emit(fd, pending)
    return Written(plan.size, digest.hexdigest() if digest is not None else "")
