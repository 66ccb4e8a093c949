"""Checkpoint roots: the one home of their layout, commit record, writer lock and restore rules.

``layout`` names things (step folders, temp names, lock and commit files), ``record`` reads and
writes the commit record and checks a step's files against it (``files`` opens them safely),
``lock`` is the writer lock, ``targets`` says what each item becomes on save and restore,
``items`` plans and writes an item's files (one file, or a folder of shards written by
``workers``), ``incremental`` reuses what the newest step stored in the root's pool and
``collect`` deletes the pool files no record lists, ``validity`` checks a step's files,
``manager`` writes (``CheckpointManager``) and ``view`` reads (``CheckpointRoot``, never
locking). The face, ``_verify`` and ``_cli`` use what is here.
"""

from __future__ import annotations

from .layout import has_commit, is_root, is_step_folder, step_of
from .manager import CheckpointManager
from .record import CommitRecord, read_commit
from .validity import check_files
from .view import CheckpointInfo, CheckpointRoot, CheckpointWarning, RestoreResult

__all__ = [
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointRoot",
    "CheckpointWarning",
    "CommitRecord",
    "RestoreResult",
    "check_files",
    "has_commit",
    "is_root",
    "is_step_folder",
    "read_commit",
    "step_of",
]
