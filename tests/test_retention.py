"""Retention: the pure policies of satchel.retention, and what CheckpointManager deletes."""

from __future__ import annotations

import errno
import fcntl
import io
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
import satchel._checkpoint.manager
from checkpoint_records import seal
from satchel import CheckpointManager, CheckpointRoot
from satchel._cli import main
from satchel._io.atomic import TMP_MARKER
from satchel.retention import (
    CheckpointRecord,
    KeepBest,
    KeepEvery,
    KeepLast,
    Recorded,
    decide,
    parse,
    portable,
)


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


def test_spec_8_9_saving_an_older_step_never_deletes_the_newest_valid(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_best=("loss", "min", 1))
    mgr.save(10, model=arr(10), metrics={"loss": 5.0})
    mgr.save(5, model=arr(5), metrics={"loss": 1.0})  # better and older
    assert mgr.steps() == [5, 10]
    mgr.close()
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
    mgr.close()
    mgr = CheckpointManager(tmp_path, keep_best=("loss", "min", 1))
    mgr.save(5, model=arr(5), metrics={"loss": 1.0})  # best and just saved
    assert mgr.steps() == [5, 10]  # 10 is the newest valid one; the corrupt 20 may go
    assert mgr.restore().step == 10


def test_retention_uses_metrics_recorded_on_disk(tmp_path: Path) -> None:
    losses = {1: 0.2, 2: 0.9, 3: 0.8}
    with CheckpointManager(tmp_path) as first:
        save_all(first, [1, 2, 3], losses)
    mgr = CheckpointManager(tmp_path, keep_last=1, keep_best=("loss", "min", 1))
    mgr.save(4, model=arr(4), metrics={"loss": 0.5})
    assert mgr.steps() == [1, 4]


def test_spec_8_11_nan_metric_does_not_evict_the_best_checkpoint(tmp_path: Path) -> None:
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

    monkeypatch.setattr(satchel._checkpoint.manager, "write_commit", failing)
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


# -- policies users write (the Policy protocol) ---------------------------------------------------
@dataclass(frozen=True)
class KeepBelow:
    """A user's policy: keep every checkpoint whose ``metric`` is below ``limit``."""

    metric: str
    limit: float

    @property
    def name(self) -> str:
        return f"below:{self.metric}<{self.limit}"

    def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
        return {r.step for r in records if r.metrics.get(self.metric, math.inf) < self.limit}


LOSSES = {1: 0.9, 2: 0.2, 3: 0.7, 4: 0.1, 5: 0.8, 6: 0.6}


def test_user_policy_end_to_end(tmp_path: Path) -> None:
    below = KeepBelow("loss", 0.3)
    mgr = CheckpointManager(tmp_path, keep_last=1, policies=[below])
    assert [p.name for p in mgr.policies] == ["keep_last=1", "below:loss<0.3"]
    save_all(mgr, list(LOSSES), LOSSES)
    assert mgr.steps() == [2, 4, 6]
    want = {2: ["below:loss<0.3"], 4: ["below:loss<0.3"], 6: ["keep_last=1", "newest"]}
    assert mgr.kept_by() == want

    # the commit record names every policy and carries the user policy's own decision
    doc = json.loads((tmp_path / "step_00000006" / "manifest.json").read_text())
    assert doc["retention"] == ["keep_last=1", "below:loss<0.3"]
    assert doc["kept"] == {"below:loss<0.3": [2, 4]}

    # a reader that does not have the policy's code shows the recorded decision
    assert CheckpointRoot(tmp_path).kept_by() == want
    assert CheckpointRoot(tmp_path).retention == ("keep_last=1", "below:loss<0.3")
    out, err = io.StringIO(), io.StringIO()
    assert main(["ls", str(tmp_path), "--json"], stdout=out, stderr=err) == 0, err.getvalue()
    ls = json.loads(out.getvalue())
    assert ls["policies"] == ["keep_last=1", "below:loss<0.3"]
    assert {c["step"]: c["kept_by"] for c in ls["checkpoints"]} == want
    out = io.StringIO()
    assert main(["ls", str(tmp_path)], stdout=out, stderr=err) == 0
    assert "retention: keep_last=1, below:loss<0.3" in out.getvalue()


def test_built_in_policies_are_not_recorded_as_decisions(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2, keep_best=("loss", "min", 1))
    save_all(mgr, [1, 2, 3], {1: 0.1, 2: 0.5, 3: 0.4})
    doc = json.loads((tmp_path / "step_00000003" / "manifest.json").read_text())
    assert "kept" not in doc  # readers rebuild the built-ins from their names
    assert CheckpointRoot(tmp_path).kept_by() == mgr.kept_by()


def test_user_policy_call_order(tmp_path: Path) -> None:
    calls: list[list[tuple[int, dict[str, float]]]] = []

    class Spy:
        name = "spy"
        saving = True

        def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
            if not self.saving:
                return {records[0].step}
            # called with the writer lock held and before any file of the new step exists
            fd = os.open(tmp_path / ".satchel.lock", os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            assert not [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]
            calls.append([(r.step, dict(r.metrics)) for r in records])
            return {records[0].step, 999}  # a step not in records is ignored

    spy = Spy()
    mgr = CheckpointManager(tmp_path, policies=[spy])
    mgr.save(5, model=arr(5), metrics={"loss": 0.5})
    mgr.save(3, model=arr(3), metrics={"loss": 0.3})
    mgr.save(7, model=arr(7))
    assert calls == [
        [(5, {"loss": 0.5})],
        [(3, {"loss": 0.3}), (5, {"loss": 0.5})],  # oldest first, the new step included
        [(3, {"loss": 0.3}), (5, {"loss": 0.5}), (7, {})],
    ]
    assert mgr.steps() == [3, 7]  # 3 kept by the spy, 7 just saved; 5 deleted
    spy.saving = False  # kept_by() asks the policies again, outside any save
    assert mgr.kept_by() == {3: ["spy"], 7: ["newest"]}


def test_a_failing_user_policy_fails_the_save_and_writes_nothing(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def keep(self, records: Sequence[CheckpointRecord]) -> set[int]:
            if len(records) > 1:
                raise RuntimeError("policy bug")
            return set()

    mgr = CheckpointManager(tmp_path, policies=[Broken()])
    mgr.save(1, model=arr(1))
    with pytest.raises(RuntimeError, match="policy bug"):
        mgr.save(2, model=arr(2))
    assert entries(tmp_path) == ["step_00000001"]
    mgr.save(1, model=arr(1), overwrite=True)  # the lock was released


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (object(), "needs a non-empty"),
        (type("P", (), {"name": "", "keep": lambda s, r: set()})(), "needs a non-empty"),
        (type("P", (), {"name": "newest", "keep": lambda s, r: set()})(), "reserved"),
        (type("P", (), {"name": "x", "keep": 5})(), "no keep"),
        (KeepLast(3), "unique"),
    ],
)
def test_bad_user_policies_are_refused(tmp_path: Path, policy: Any, match: str) -> None:
    with pytest.raises(satchel.UsageError, match=match):
        CheckpointManager(tmp_path, keep_last=3, policies=[policy])


def test_portable_names_only_the_built_ins() -> None:
    assert all(portable(p) for p in (KeepLast(2), KeepEvery(10), KeepBest("loss", "max", 3)))
    assert not portable(KeepBelow("loss", 0.1))
    assert not portable(Recorded("x", frozenset()))
    for p in (KeepLast(2), KeepEvery(10), KeepBest("a:b", "max", 3)):
        assert parse(p.name) == p


def test_reader_of_an_old_record_shows_nothing_for_an_unknown_policy(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=1, policies=[KeepBelow("loss", 0.5)])
    save_all(mgr, [1, 2], {1: 0.1, 2: 0.9})
    manifest = tmp_path / "step_00000002" / "manifest.json"
    doc = json.loads(manifest.read_text())
    del doc["kept"]  # as a writer that predates the field wrote it
    manifest.write_bytes(seal(doc, version=1))
    assert CheckpointRoot(tmp_path).kept_by() == {1: [], 2: ["keep_last=1", "newest"]}


@pytest.mark.parametrize("kept", [[], {"x": 3}, {"x": ["1"]}, {"x": [True]}, {"x": [-1]}])
def test_malformed_kept_field_makes_the_record_invalid(tmp_path: Path, kept: Any) -> None:
    mgr = CheckpointManager(tmp_path, policies=[KeepBelow("loss", 0.5)])
    mgr.save(1, model=arr(1), metrics={"loss": 0.1})
    manifest = tmp_path / "step_00000001" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["kept"] = kept
    manifest.write_bytes(seal(doc))
    (info,) = CheckpointRoot(tmp_path).checkpoints()
    assert info.record is None and info.problem is not None and "kept" in info.problem
