"""Executes a save :class:`~satchel._plan.Plan`: header, then each tensor from its own memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import xxhash

from .._plan import Plan
from .atomic import atomic_file, write_all

__all__ = ["Written", "write_plan"]

# Small tensors are gathered into one buffer per write: 50,000 tiny write() calls cost more than
# the copy. Large tensors go straight from their memory to the kernel, with no extra copy.
_BATCH = 1 << 20


@dataclass(frozen=True)
class Written:
    """What landed on disk: its size and the xxh3-64 of the whole file (for commit records)."""

    size: int
    xxh3: str


def write_plan(plan: Plan, path: Path) -> Written:
    """Write ``plan`` atomically to ``path``; the whole-file digest is computed on the way."""
    digest = xxhash.xxh3_64()
    with atomic_file(path) as fd:
        pending = bytearray(plan.header)
        for chunk in plan.chunks:
            if chunk.nbytes >= _BATCH:
                if pending:
                    digest.update(pending)
                    write_all(fd, pending)
                    pending.clear()
                digest.update(chunk.data)
                write_all(fd, chunk.data)
            else:
                pending += chunk.data
                if len(pending) >= _BATCH:
                    digest.update(pending)
                    write_all(fd, pending)
                    pending.clear()
        if pending:
            digest.update(pending)
            write_all(fd, pending)
    return Written(plan.size, digest.hexdigest())
