"""Which checkpoints a :class:`~satchel.CheckpointManager` keeps: small policy objects.

A checkpoint survives when any policy keeps it; with no policy every checkpoint is kept. The
newest valid checkpoint is never deleted, whatever the policies say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["CheckpointRecord", "KeepBest", "KeepEvery", "KeepLast", "Policy", "decide", "parse"]


@dataclass(frozen=True)
class CheckpointRecord:
    """What a policy may look at: the step and the metrics recorded with it."""

    step: int
    metrics: Mapping[str, float]


class Policy(Protocol):
    """A retention rule: given every committed checkpoint (oldest first), the steps it keeps."""

    @property
    def name(self) -> str: ...

    def keep(self, records: Sequence[CheckpointRecord]) -> set[int]: ...


@dataclass(frozen=True)
class KeepLast:
    """Keep the newest ``n`` checkpoints."""

    n: int

    @property
    def name(self) -> str:
        return f"keep_last={self.n}"

    def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
        return {r.step for r in records[-self.n :]} if self.n > 0 else set()


@dataclass(frozen=True)
class KeepEvery:
    """Keep every checkpoint whose step is a multiple of ``every``."""

    every: int

    @property
    def name(self) -> str:
        return f"keep_every={self.every}"

    def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
        return {r.step for r in records if r.step % self.every == 0}


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``k`` checkpoints with the best value of ``metric`` (``mode`` min or max).

    Checkpoints that did not record the metric are not ranked (other policies may keep them).
    """

    metric: str
    mode: Literal["min", "max"] = "min"
    k: int = 1

    @property
    def name(self) -> str:
        return f"keep_best={self.metric}:{self.mode}:{self.k}"

    def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
        # NaN/inf (a diverged run) never ranks: sorting with NaN gives arbitrary orders.
        ranked = [r for r in records if math.isfinite(r.metrics.get(self.metric, math.nan))]
        ranked.sort(key=lambda r: r.metrics[self.metric], reverse=self.mode == "max")
        return {r.step for r in ranked[: self.k]}


def parse(name: str) -> Policy:
    """The policy a ``name`` string spells (as recorded in commit records).

    Raises:
        ValueError: not a policy name this version knows.
    """
    kind, _, arg = name.partition("=")
    if kind == "keep_last" and arg.isdigit() and int(arg) > 0:
        return KeepLast(int(arg))
    if kind == "keep_every" and arg.isdigit() and int(arg) > 0:
        return KeepEvery(int(arg))
    if kind == "keep_best":
        metric, _, rest = arg.rpartition(":")
        metric, _, mode = metric.rpartition(":")
        if metric and mode in ("min", "max") and rest.isdigit() and int(rest) > 0:
            return KeepBest(metric, "min" if mode == "min" else "max", int(rest))
    raise ValueError(f"unknown retention policy {name!r}")


def decide(policies: Sequence[Policy], records: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
    """Map each kept step to the names of the policies keeping it (pure)."""
    if not policies:
        return {r.step: ["keep_all"] for r in records}
    kept: dict[int, list[str]] = {}
    for p in policies:
        for step in sorted(p.keep(records)):
            kept.setdefault(step, []).append(p.name)
    return kept
