"""Step folders of a checkpoint root, as readers see them, and what restore hands back.

A step folder is named ``step_<step>`` (zero-padded to 8 digits at least, SPEC 8.1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._commit import CommitRecord
from ._rng import restore_rng
from ._state import LoadReport, load_state
from .errors import UsageError

__all__ = [
    "CheckpointInfo",
    "CheckpointWarning",
    "RestoreResult",
    "apply_items",
    "dirname",
    "is_step_dir",
    "step_of",
]

_STEP_DIR = re.compile(r"^step_(\d{1,19})$")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped on restore because it is corrupt or incomplete."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One step folder as a reader sees it; ``problem`` is ``None`` for a valid checkpoint."""

    step: int
    path: Path
    record: CommitRecord | None
    problem: str | None

    @property
    def valid(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` loaded: the step, its extras and metrics, and what was skipped."""

    step: int
    path: Path
    extra: Any
    metrics: Mapping[str, float]
    items: Mapping[str, Any]
    reports: Mapping[str, LoadReport] = field(default_factory=dict)
    skipped: tuple[tuple[int, str], ...] = ()


def dirname(step: int) -> str:
    """The folder name of ``step``."""
    return f"step_{step:08d}"


def is_step_dir(p: Path) -> bool:
    """Whether ``p`` is named and shaped like a step folder (committed or not)."""
    return bool(_STEP_DIR.match(p.name)) and p.is_dir() and not p.is_symlink()


def step_of(p: Path) -> int | None:
    """The step a folder's name says, or ``None``."""
    m = _STEP_DIR.match(p.name)
    return int(m.group(1)) if m else None


def apply_items(items: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, LoadReport]:
    """Load restored ``items`` into live ``targets`` of the same names (in place).

    Models go through ``load_state`` (strict; its report is returned), optimizers, schedulers
    and scalers through their ``load_state_dict``, ``rng=True`` restores the generators.
    """
    reports: dict[str, LoadReport] = {}
    for name, target in targets.items():
        value = items[name]
        if name == "rng" and target is True:
            restore_rng(value)
        elif hasattr(target, "named_parameters"):
            reports[name] = load_state(target, value)
        elif hasattr(target, "load_state_dict"):
            target.load_state_dict(value)
        elif isinstance(target, dict):
            reports[name] = load_state(target, value)
        elif target not in (None, False):
            raise UsageError(f"restore target {name}={type(target).__name__} is not loadable")
    return reports
