"""CheckpointRoot, the read-only view of a checkpoint root, and the one home of the layout names.

The view lists, checks and restores; it never saves, never takes the writer lock and never
creates the root. The names of a root's entries are spelled in ``_checkpoint/layout.py`` only.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel import CheckpointManager, CheckpointRoot, CheckpointWarning

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "satchel"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def arr(step: int) -> dict[str, np.ndarray]:
    return {"w": np.full(8, step, dtype=np.float32)}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` with its size and mtime: what a read must leave unchanged."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "run"
    mgr = CheckpointManager(r, keep_last=2)
    for s in (1, 2, 3):
        mgr.save(s, model=arr(s), metrics={"loss": 1.0 / s}, extra={"s": s})
    return r


def test_view_lists_checks_and_restores(root: Path) -> None:
    view = CheckpointRoot(root)
    assert view.steps() == [2, 3] and view.latest() == 3
    assert [(i.step, i.valid) for i in view.checkpoints()] == [(2, True), (3, True)]
    assert view.check(3) is None and view.check(7) is not None
    assert view.retention == ("keep_last=2",)
    assert view.kept_by() == {2: ["keep_last=2"], 3: ["keep_last=2", "newest"]}
    target = {"w": np.zeros(8, dtype=np.float32)}
    res = view.restore(model=target)
    assert res.step == 3 and res.extra == {"s": 3} and res.metrics == {"loss": 1.0 / 3}
    assert target["w"].tolist() == [3.0] * 8  # loaded in place
    assert view.restore(step=2).extra == {"s": 2}
    assert "CheckpointRoot(" in repr(view)


def test_view_has_no_way_to_write() -> None:
    for name in ("save", "wait", "close", "policies"):
        assert not hasattr(CheckpointRoot, name), name
    assert not hasattr(CheckpointManager, "reader")  # one way to read: CheckpointRoot


def test_view_never_creates_the_root(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b"
    with pytest.raises(satchel.CheckpointNotFoundError, match="no such checkpoint folder"):
        CheckpointRoot(missing)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(satchel.CheckpointNotFoundError):
        CheckpointRoot(tmp_path / "file")


def test_view_never_locks_nor_writes(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / ".satchel.lock").unlink()  # a root copied without its lock file
    before = tree(root)

    def no_flock(*a: Any) -> None:
        raise AssertionError("a reader took a lock")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    view = CheckpointRoot(root)
    view.checkpoints()
    view.kept_by()
    view.restore(model={"w": np.zeros(8, dtype=np.float32)})
    assert satchel.verify(root).ok
    assert tree(root) == before


HOLD_LOCK = """
import pathlib, sys, time
from satchel._checkpoint.lock import WriterLock
with WriterLock(pathlib.Path(sys.argv[1])).hold():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_view_restores_while_a_writer_holds_the_lock(root: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(satchel.CheckpointLockedError):
            CheckpointManager(root).save(4, model=arr(4))
        view = CheckpointRoot(root)
        assert view.steps() == [2, 3]
        assert view.restore().extra == {"s": 3}
        assert [i.valid for i in view.checkpoints()] == [True, True]
    finally:
        holder.kill()
        holder.wait()


def test_skipped_step_warning_points_at_the_callers_line(root: Path) -> None:
    (root / "step_00000003" / "model.satchel").unlink()
    for reader in (CheckpointRoot(root), CheckpointManager(root)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert reader.restore().step == 2
        (w,) = caught
        assert issubclass(w.category, CheckpointWarning) and w.filename == __file__


def test_progress_reports_the_bytes_verified(root: Path) -> None:
    seen: list[tuple[int, int]] = []
    CheckpointRoot(root).checkpoints(verify=True, progress=lambda d, t: seen.append((d, t)))
    sizes = sum(p.stat().st_size for p in root.rglob("*.satchel"))
    assert seen and seen[-1] == (sizes, sizes)


def test_verify_of_a_root_lists_its_step_folders(root: Path) -> None:
    (root / "step_00000002" / "manifest.json").unlink()
    report = satchel.verify(root)
    assert report.status == "corrupt" and report.checked == 2
    assert [(i.step, i.record is None) for i in report.checkpoints] == [(2, True), (3, False)]
    assert report.problems[0].where == "step 2"
    assert satchel.verify(root / "step_00000003").checkpoints == ()


# -- one home for the names ------------------------------------------------------------------------
# the file names, the step-name pattern, the step-name format and the trash prefix
LAYOUT_LITERALS = ("manifest.json", ".satchel.lock", "^step_", 'f"step_', ".trash-")


def test_layout_names_are_spelled_in_layout_py_only() -> None:
    layout = SRC / "_checkpoint" / "layout.py"
    text = layout.read_text()
    assert all(lit in text for lit in LAYOUT_LITERALS)
    found = [
        f"{p.relative_to(SRC)}: {lit}"
        for p in SRC.rglob("*.py")
        if p != layout
        for lit in LAYOUT_LITERALS
        if lit in p.read_text()
    ]
    assert found == []


def test_commit_record_file_is_the_one_layout_names(root: Path) -> None:
    from satchel._checkpoint import layout

    folder = root / layout.step_name(3)
    want = [layout.COMMIT_FILE, "extra.satchel", "model.satchel"]
    assert sorted(os.listdir(folder)) == sorted(want)
    assert json.loads((folder / layout.COMMIT_FILE).read_text())["step"] == 3
    assert (root / layout.LOCK_FILE).is_file()
    assert layout.list_steps(root) == [(2, root / "step_00000002"), (3, folder)]
