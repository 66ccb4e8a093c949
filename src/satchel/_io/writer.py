"""Executes a save :class:`~satchel._plan.Plan`: header, then each tensor from its own memory."""

from __future__ import annotations

from pathlib import Path

from .._plan import Plan
from .atomic import atomic_file, write_all

__all__ = ["write_plan"]

# Small tensors are gathered into one buffer per write: 50,000 tiny write() calls cost more than
# the copy. Large tensors go straight from their memory to the kernel, with no extra copy.
_BATCH = 1 << 20


def write_plan(plan: Plan, path: Path) -> None:
    """Write ``plan`` atomically to ``path``."""
    with atomic_file(path) as fd:
        pending = bytearray(plan.header)
        for chunk in plan.chunks:
            if chunk.nbytes >= _BATCH:
                if pending:
                    write_all(fd, pending)
                    pending.clear()
                write_all(fd, chunk.data)
            else:
                pending += chunk.data
                if len(pending) >= _BATCH:
                    write_all(fd, pending)
                    pending.clear()
        if pending:
            write_all(fd, pending)
