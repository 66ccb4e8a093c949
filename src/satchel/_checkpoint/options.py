"""A manager's options, checked once for both kinds of root (a folder, a URL).

``CheckpointManager`` and the object-storage manager take the same retention, metrics and
flag arguments; one place checks them so both refuse the same values with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .. import retention
from .._shards.names import parse_size
from ..errors import UsageError
from . import targets
from .layout import EXTRA_ITEM
from .view import CheckpointInfo

__all__ = [
    "How",
    "SaveRequest",
    "decide",
    "flag",
    "metrics_of",
    "own_kept",
    "policies_of",
    "positive",
    "save_request",
]


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


@dataclass(frozen=True)
class SaveRequest:
    """One ``save`` call's arguments, checked: the items as they will be written (the extras
    under their item name), the metrics, and how to write them."""

    items: dict[str, Any]
    metrics: dict[str, float]
    how: How


def save_request(
    step: object,
    items: Mapping[str, Any],
    *,
    extra: Any,
    metrics: Mapping[str, float] | None,
    max_shard_size: int | str | None,
    incremental: bool | None,
    defaults: How,
) -> SaveRequest:
    """Check a ``save`` call of either manager; ``None`` options take the manager's
    ``defaults``.

    Raises:
        UsageError: a bad step, no items, a bad ``max_shard_size``, ``incremental`` or metric.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UsageError(f"step must be a non-negative int, got {step!r}")
    if not items:
        raise UsageError("save() needs at least one item, e.g. model=model")
    limit = defaults.limit if max_shard_size is None else parse_size(max_shard_size)
    inc = defaults.incremental if incremental is None else flag(incremental, "incremental")
    prepared = {name: targets.prepare(name, value) for name, value in items.items()}
    if extra is not None:
        prepared[EXTRA_ITEM] = extra
    return SaveRequest(prepared, metrics_of(metrics), How(limit, inc))
