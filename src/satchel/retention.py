"""Which checkpoints a :class:`~satchel.CheckpointManager` keeps: small policy objects.

A checkpoint survives when any policy keeps it; with no policy every checkpoint is kept. The
step just saved and the newest valid checkpoint are never deleted, whatever the policies say
(SPEC 8.9). Besides ``keep_last``/``keep_every``/``keep_best``, a manager takes policies you
write: any object with a ``name`` and a ``keep`` method (see :class:`Policy`).

Example, a policy of your own::

    @dataclass(frozen=True)
    class KeepBelow:
        metric: str
        limit: float

        @property
        def name(self) -> str:
            return f"below:{self.metric}<{self.limit}"

        def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
            return {r.step for r in records if r.metrics.get(self.metric, math.inf) < self.limit}

    mgr = satchel.CheckpointManager("runs/exp1", keep_last=2, policies=[KeepBelow("loss", 0.1)])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .errors import UsageError

__all__ = [
    "CheckpointRecord",
    "KeepBest",
    "KeepEvery",
    "KeepLast",
    "Policy",
    "Recorded",
    "check_policy",
    "decide",
    "parse",
    "portable",
]

_RESERVED = ("keep_all", "newest")  # labels satchel itself shows next to kept steps


@dataclass(frozen=True)
class CheckpointRecord:
    """What a policy may look at: the step and the metrics recorded with it."""

    step: int
    metrics: Mapping[str, float]


class Policy(Protocol):
    """A retention rule: given every committed checkpoint, the steps it keeps.

    Call order, on every ``CheckpointManager.save``:

    1. The manager holds the root's writer lock (it has since it was made): no other writer
       changes the root meanwhile.
    2. ``keep(records)`` is called once per policy, in the order the manager was given them
       (``keep_last``, ``keep_every``, ``keep_best``, then ``policies=``). ``records`` holds
       every committed step, oldest first, the step being saved included (with the metrics
       passed to ``save``). An exception from ``keep`` fails that save; nothing is written.
    3. The new step is written and committed. Its commit record lists every policy's ``name``
       and, for a policy of your own, the steps it kept (so ``satchel ls`` and
       :class:`~satchel.CheckpointRoot` can show them without running your code).
    4. Every committed step that no policy kept is deleted, except the step just saved and the
       newest valid one.

    ``CheckpointManager.kept_by()`` calls ``keep`` the same way, outside any save (even on a
    closed manager). ``keep`` must only decide: no I/O, no state carried between calls. Steps it
    returns that are not in ``records`` are ignored. ``name`` identifies the policy in commit
    records and in ``satchel ls``; it must be non-empty, unique among a manager's policies,
    and should spell the policy's parameters (``"below:loss<0.1"``).
    """

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
        # SPEC 8.11: NaN/inf (a diverged run) never ranks; sorting with NaN gives any order.
        ranked = [r for r in records if math.isfinite(r.metrics.get(self.metric, math.nan))]
        ranked.sort(key=lambda r: r.metrics[self.metric], reverse=self.mode == "max")
        return {r.step for r in ranked[: self.k]}


@dataclass(frozen=True)
class Recorded:
    """A policy a reader cannot run, standing in with the steps its writer recorded."""

    name: str
    steps: frozenset[int]

    def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
        return set(self.steps)


def parse(name: str) -> Policy:
    """The built-in policy a ``name`` string spells (as recorded in commit records).

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


def portable(policy: Policy) -> bool:
    """Whether a reader can rebuild ``policy`` from its name alone (the built-ins can)."""
    if type(policy) not in (KeepLast, KeepEvery, KeepBest):
        return False
    try:
        return parse(policy.name) == policy
    except ValueError:
        return False


def check_policy(policy: object) -> None:
    """Refuse what cannot serve as a :class:`Policy`.

    Raises:
        UsageError: no string ``name``, an empty or reserved one, or no callable ``keep``.
    """
    name = getattr(policy, "name", None)
    if not isinstance(name, str) or not name or not name.isprintable():
        raise UsageError(f"retention policy {policy!r} needs a non-empty printable str 'name'")
    if name in _RESERVED:
        raise UsageError(f"retention policy name {name!r} is reserved; choose another")
    if not callable(getattr(policy, "keep", None)):
        raise UsageError(f"retention policy {name!r} has no keep(records) method")


def decide(policies: Sequence[Policy], records: Sequence[CheckpointRecord]) -> dict[int, list[str]]:
    """Map each kept step to the names of the policies keeping it, in policy order (pure)."""
    if not policies:
        return {r.step: ["keep_all"] for r in records}
    steps = {r.step for r in records}
    kept: dict[int, list[str]] = {}
    for p in policies:
        for step in sorted(set(p.keep(records)) & steps):
            kept.setdefault(step, []).append(p.name)
    return kept
