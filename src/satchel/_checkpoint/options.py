"""A manager's options, checked once for both kinds of root (a folder, a URL).

``CheckpointManager`` and the object-storage manager take the same retention, metrics and
flag arguments; one place checks them so both refuse the same values with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .. import retention
from ..errors import UsageError
from .view import CheckpointInfo

__all__ = ["How", "decide", "flag", "metrics_of", "own_kept", "policies_of", "positive"]


def policies_of(
    keep_last: int | None,
    keep_every: int | None,
    keep_best: tuple[str, Literal["min", "max"], int] | None,
    more: Iterable[retention.Policy],
) -> tuple[retention.Policy, ...]:
    """The built-in policies from their arguments, then the user's own; names unique."""
    out: list[retention.Policy] = []
    if keep_last is not None:
        out.append(retention.KeepLast(positive(keep_last, "keep_last")))
    if keep_every is not None:
        out.append(retention.KeepEvery(positive(keep_every, "keep_every")))
    if keep_best is not None:
        metric, mode, k = keep_best
        if mode not in ("min", "max"):
            raise UsageError(f"keep_best mode must be 'min' or 'max', got {mode!r}")
        out.append(retention.KeepBest(metric, mode, positive(k, "keep_best k")))
    for p in more:
        retention.check_policy(p)
        out.append(p)
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise UsageError(f"retention policy names must be unique, got {names}")
    return tuple(out)


def decide(
    policies: Iterable[retention.Policy],
    infos: Sequence[CheckpointInfo],
    step: int,
    metrics: Mapping[str, float],
) -> dict[int, list[str]]:
    """Run the policies over the committed steps ``infos``, ``step`` (not yet written)
    included: step -> the names of the policies that keep it."""
    records = [retention.CheckpointRecord(i.step, i.record.metrics) for i in infos if i.record]
    records.append(retention.CheckpointRecord(step, dict(metrics)))
    records.sort(key=lambda r: r.step)
    return retention.decide(tuple(policies), records)


def own_kept(
    policies: Iterable[retention.Policy], kept: Mapping[int, list[str]]
) -> dict[str, tuple[int, ...]]:
    """The steps each user-written policy keeps: what a commit record must carry (SPEC 8.3),
    since a reader cannot rebuild such a policy from its name."""
    own = [p.name for p in policies if not retention.portable(p)]
    return {name: tuple(s for s in sorted(kept) if name in kept[s]) for name in own}


@dataclass(frozen=True)
class How:
    """How one save writes its items: ``max_shard_size`` and ``incremental`` as resolved."""

    limit: int | None
    incremental: bool


def flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} must be True or False, got {value!r}")
    return value


def positive(n: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"{what} must be a positive int, got {n!r}")
    return n


def metrics_of(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """The metrics as str -> float (non-finite values allowed: the record stores null)."""
    out = {}
    for k, v in (metrics or {}).items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError) as e:
            raise UsageError(f"metric {k!r} must be a number, got {v!r}") from e
    return out
