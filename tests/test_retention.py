"""Retention: the pure policies of satchel.retention, and what CheckpointManager deletes."""

from __future__ import annotations

import errno
import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
import satchel._manager
from satchel import CheckpointManager
from satchel._io.atomic import TMP_MARKER
from satchel.retention import CheckpointRecord, KeepBest, KeepEvery, KeepLast, decide


def recs(*pairs: tuple[int, dict[str, float]]) -> list[CheckpointRecord]:
    return [CheckpointRecord(s, m) for s, m in pairs]


def plain(steps: range | list[int]) -> list[CheckpointRecord]:
    return [CheckpointRecord(s, {}) for s in steps]


def arr(step: int) -> dict[str, np.ndarray]:
    return {"w": np.full(16, step, dtype=np.float32)}


def entries(root: Path) -> list[str]:
    return sorted(p for p in os.listdir(root) if p != ".satchel.lock")


# -- policies (pure) ----------------------------------------------------------------------------
def test_keep_last() -> None:
    assert KeepLast(2).keep(plain(range(1, 6))) == {4, 5}
    assert KeepLast(10).keep(plain(range(1, 4))) == {1, 2, 3}
    assert KeepLast(1).keep(plain([0, 100, 2000])) == {2000}
    assert KeepLast(3).keep([]) == set()
    assert KeepLast(3).name == "keep_last=3"


def test_keep_every() -> None:
    assert KeepEvery(3).keep(plain(range(0, 11))) == {0, 3, 6, 9}
    assert KeepEvery(1000).keep(plain([999, 1000, 1500, 2000, 2001])) == {1000, 2000}
    assert KeepEvery(5).keep(plain([1, 2, 3])) == set()
    assert KeepEvery(5).name == "keep_every=5"


def test_keep_best_min_and_max() -> None:
    r = recs(
        (1, {"loss": 0.9, "acc": 0.1}),
        (2, {"loss": 0.2, "acc": 0.7}),
        (3, {"loss": 0.5, "acc": 0.9}),
        (4, {"loss": 0.1, "acc": 0.3}),
        (5, {"loss": 0.7, "acc": 0.8}),
    )
    assert KeepBest("loss", "min", 1).keep(r) == {4}
    assert KeepBest("loss", "min", 2).keep(r) == {2, 4}
    assert KeepBest("acc", "max", 2).keep(r) == {3, 5}
    assert KeepBest("acc", "min", 1).keep(r) == {1}
    assert KeepBest("loss", "min", 10).keep(r) == {1, 2, 3, 4, 5}
    assert KeepBest("loss").keep(r) == {4}  # defaults: min, k=1
    assert KeepBest("val", "max", 2).name == "keep_best=val:max:2"


def test_keep_best_ignores_checkpoints_without_the_metric() -> None:
    r = recs((1, {}), (2, {"loss": 0.5}), (3, {"other": 0.0}), (4, {"loss": 0.6}))
    assert KeepBest("loss", "min", 5).keep(r) == {2, 4}
    assert KeepBest("loss", "max", 1).keep(r) == {4}
    assert KeepBest("nowhere", "min", 3).keep(r) == set()


def test_keep_best_never_ranks_nan_above_real_values() -> None:
    # A diverged evaluation records NaN (stored as null, read back as NaN). It must not push a
    # real best checkpoint out, whatever the order the checkpoints come in.
    values = {1: 0.5, 2: math.nan, 3: 0.1, 4: 0.3}
    for order in itertools.permutations(values):
        r = recs(*((s, {"loss": values[s]}) for s in order))
        assert KeepBest("loss", "min", 1).keep(r) == {3}, order
        assert KeepBest("loss", "max", 1).keep(r) == {1}, order
        assert KeepBest("loss", "min", 2).keep(r) == {3, 4}, order


def test_decide_without_policies_keeps_everything() -> None:
    r = plain([1, 5, 9])
    assert decide([], r) == {1: ["keep_all"], 5: ["keep_all"], 9: ["keep_all"]}
    assert decide([], []) == {}


def test_decide_is_the_union_and_names_the_reasons() -> None:
    r = recs(*((s, {"loss": 10.0 - s if s != 2 else -1.0}) for s in range(1, 8)))
    policies = [KeepLast(2), KeepEvery(3), KeepBest("loss", "min", 1)]
    kept = decide(policies, r)
    assert kept == {
        2: ["keep_best=loss:min:1"],
        3: ["keep_every=3"],
        6: ["keep_last=2", "keep_every=3"],
        7: ["keep_last=2"],
    }
    before = list(r)
    decide(policies, r)
    assert r == before  # pure


# -- the manager applies them ---------------------------------------------------------------------
def save_all(mgr: CheckpointManager, steps: list[int], losses: dict[int, float] | None = None):
    for s in steps:
        metrics = {"loss": losses[s]} if losses and s in losses else None
        mgr.save(s, model=arr(s), metrics=metrics)


def test_no_policy_keeps_every_checkpoint(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    save_all(mgr, list(range(8)))
    assert mgr.steps() == list(range(8))


def test_keep_last_after_each_save(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    seen = []
    for s in range(1, 7):
        mgr.save(s, model=arr(s))
        seen.append(mgr.steps())
    assert seen == [[1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6]]
    assert entries(tmp_path) == ["step_00000005", "step_00000006"]  # no trash left behind
    res = mgr.restore()
    assert res.step == 6 and np.array_equal(res.items["model"]["w"], arr(6)["w"])


def test_keep_every_with_keep_last(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=1, keep_every=3)
    save_all(mgr, list(range(1, 8)))
    assert mgr.steps() == [3, 6, 7]


def test_keep_best_min_keeps_the_lowest_and_the_newest(tmp_path: Path) -> None:
    losses = {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.1, 5: 0.4, 6: 0.8}
    mgr = CheckpointManager(tmp_path, keep_best=("loss", "min", 2))
    save_all(mgr, list(losses), losses)
    assert mgr.steps() == [2, 4, 6]  # 6 only because it is the newest


def test_keep_best_max(tmp_path: Path) -> None:
    acc = {1: 0.1, 2: 0.9, 3: 0.5, 4: 0.95, 5: 0.2}
    mgr = CheckpointManager(tmp_path, keep_best=("acc", "max", 1))
    for s, a in acc.items():
        mgr.save(s, model=arr(s), metrics={"acc": a})
    assert mgr.steps() == [4, 5]


def test_all_three_policies_together(tmp_path: Path) -> None:
    losses = {s: 1.0 / s for s in range(1, 13)}
    losses[5] = 0.001  # the best, not a multiple of 4, not among the last
    mgr = CheckpointManager(tmp_path, keep_last=2, keep_every=4, keep_best=("loss", "min", 1))
    save_all(mgr, list(losses), losses)
    assert mgr.steps() == [4, 5, 8, 11, 12]


def test_keep_best_that_keeps_only_old_steps_still_keeps_the_newest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_best=("loss", "min", 1))
    mgr.save(1, model=arr(1), metrics={"loss": 0.1})
    for s in range(2, 6):
        mgr.save(s, model=arr(s), metrics={"loss": float(s)})  # every new one is worse
        assert mgr.steps() == [1, s]
    assert mgr.restore().step == 5
    # a checkpoint without the metric is not ranked, but as the newest it stays
    mgr.save(6, model=arr(6))
    assert mgr.steps() == [1, 6]


def test_saving_an_older_step_never_deletes_the_newest_valid(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_best=("loss", "min", 1))
    mgr.save(10, model=arr(10), metrics={"loss": 5.0})
    mgr.save(5, model=arr(5), metrics={"loss": 1.0})  # better and older
    assert mgr.steps() == [5, 10]
    mgr2 = CheckpointManager(tmp_path, keep_last=1)
    mgr2.save(3, model=arr(3))
    assert mgr2.steps() == [3, 10]  # keep_last keeps 10; 3 was just saved


def test_newest_valid_survives_when_a_newer_one_is_corrupt(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(10, model=arr(10), metrics={"loss": 9.0})
    mgr.save(20, model=arr(20), metrics={"loss": 9.0})
    item = tmp_path / "step_00000020" / "model.satchel"
    data = bytearray(item.read_bytes())
    data[-1] ^= 0xFF
    item.write_bytes(bytes(data))
    mgr = CheckpointManager(tmp_path, keep_best=("loss", "min", 1))
    mgr.save(5, model=arr(5), metrics={"loss": 1.0})  # best and just saved
    assert mgr.steps() == [5, 10]  # 10 is the newest valid one; the corrupt 20 may go
    assert mgr.restore().step == 10


def test_retention_uses_metrics_recorded_on_disk(tmp_path: Path) -> None:
    losses = {1: 0.2, 2: 0.9, 3: 0.8}
    save_all(CheckpointManager(tmp_path), [1, 2, 3], losses)
    mgr = CheckpointManager(tmp_path, keep_last=1, keep_best=("loss", "min", 1))
    mgr.save(4, model=arr(4), metrics={"loss": 0.5})
    assert mgr.steps() == [1, 4]


def test_nan_metric_does_not_evict_the_best_checkpoint(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_best=("loss", "min", 1))
    # step 1 diverged (NaN, stored as null); step 3 is the real best
    for s, loss in [(1, math.nan), (2, 0.5), (3, 0.1), (4, 0.3), (5, 0.9)]:
        mgr.save(s, model=arr(s), metrics={"loss": loss})
    assert mgr.steps() == [3, 5]


def test_retention_runs_only_after_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(1, model=arr(1))

    def failing(*a: Any, **k: Any) -> Any:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(satchel._manager, "write_commit", failing)
    with pytest.raises(OSError, match="injected"):
        mgr.save(2, model=arr(2))
    assert mgr.steps() == [1]
    assert entries(tmp_path) == ["step_00000001"]
    monkeypatch.undo()
    mgr.save(2, model=arr(2))
    assert mgr.steps() == [2]


def test_retention_leaves_no_trash_and_deletes_only_step_folders(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=1)
    (tmp_path / "notes.txt").write_text("keep me")
    for s in range(4):
        mgr.save(s, model=arr(s))
    assert entries(tmp_path) == ["notes.txt", "step_00000003"]
    assert not [p for p in tmp_path.rglob("*") if TMP_MARKER in p.name]
