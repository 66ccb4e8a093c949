"""CheckpointRoot, the read-only view of a checkpoint root, and the one home of the layout names.

The view lists, checks and restores; it never saves, never takes the writer lock and never
creates the root. The names of a root's entries are spelled in ``_checkpoint/layout.py`` only.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel import CheckpointManager, CheckpointRoot, CheckpointWarning
from satchel._cli import main

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
    with CheckpointManager(r, keep_last=2) as mgr:
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
import sys, time, satchel
mgr = satchel.CheckpointManager(sys.argv[1])
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
            CheckpointManager(root)
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
        # Only satchel's own warnings: the collector may report an earlier test's leftovers here.
        (w,) = [x for x in caught if issubclass(x.category, CheckpointWarning)]
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


# -- hostile entries: FIFOs and links (SPEC 8.12, 8.6) --------------------------------------------
def finishes(fn: Any, *, fifos: Sequence[Path] = (), timeout: float = 5.0) -> Any:
    """``fn()`` in a thread that must return within ``timeout`` seconds, so that a reader that
    blocks on a FIFO fails this test instead of hanging the suite."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for fifo in fifos:  # open the other end: the blocked open() returns, the thread ends
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"{fn} still blocked after {timeout} s: it opened a FIFO")
    if "error" in box:
        raise box["error"]
    return box["value"]


HOSTILE = {
    # what replaces part of step 3, and whether step 3 still counts as committed
    "fifo_record": False,
    "link_to_fifo_record": False,
    "link_to_a_record_outside": False,
    "fifo_item": True,
    "link_to_an_item_outside": True,
    "dir_item": True,
    "link_step": None,  # not even listed
}


def make_hostile(root: Path, outside: Path, how: str) -> list[Path]:
    """Break step 3 of ``root`` as ``how`` says; the FIFOs made (to unblock a hung reader)."""
    folder = root / "step_00000003"
    record, item = folder / "manifest.json", folder / "model.satchel"
    fifo = outside / "fifo"
    if "fifo" in how:
        os.mkfifo(fifo)
    if how == "fifo_record":
        record.unlink()
        os.mkfifo(record)
        return [record]
    if how == "fifo_item":
        item.unlink()
        os.mkfifo(item)
        return [item]
    if how == "dir_item":
        item.unlink()
        item.mkdir()
    elif how == "link_to_fifo_record":
        record.unlink()
        os.symlink(fifo, record)
    elif how == "link_to_a_record_outside":
        record.rename(outside / "manifest.json")
        os.symlink(outside / "manifest.json", record)
    elif how == "link_to_an_item_outside":
        item.rename(outside / "model.satchel")
        os.symlink(outside / "model.satchel", item)
    elif how == "link_step":
        folder.rename(outside / folder.name)
        os.symlink(outside / folder.name, folder)
    return [fifo] if "fifo" in how else []


@pytest.mark.parametrize("how", list(HOSTILE))
def test_spec_8_12_readers_and_writers_open_only_regular_files_inside_the_root(
    root: Path, tmp_path: Path, how: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    fifos = make_hostile(root, outside, how)
    committed = HOSTILE[how]
    before = tree(outside)
    view = CheckpointRoot(root)

    def run(fn: Any) -> Any:
        return finishes(fn, fifos=fifos)

    assert run(view.steps) == ([2, 3] if committed else [2])
    infos = run(view.checkpoints)
    listed = [(2, True), (3, False)] if committed is not None else [(2, True)]
    assert [(i.step, i.valid) for i in infos] == listed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(view.restore).step == 2
    assert len(caught) == (committed is not None)
    assert run(lambda: view.check(3)) is not None
    with pytest.raises(satchel.CheckpointNotFoundError, match="step 3"):
        run(lambda: view.restore(step=3))
    assert run(lambda: satchel.verify(root)).ok == (committed is None)
    assert not run(lambda: satchel.verify(root / "step_00000003")).ok
    out, err = io.StringIO(), io.StringIO()
    assert run(lambda: main(["ls", str(root)], stdout=out, stderr=err)) == 0, err.getvalue()

    def save_with_retention() -> None:
        with CheckpointManager(root, keep_last=1) as mgr:
            mgr.save(4, model=arr(4))

    run(save_with_retention)  # the writer lists, then deletes what keep_last=1 does not keep
    assert view.restore().step == 4
    assert tree(outside) == before  # nothing outside the root was read through, or deleted


@pytest.mark.parametrize("how", ["symlink", "dangling_symlink", "fifo", "directory"])
def test_spec_8_6_the_lock_file_must_be_a_regular_file(tmp_path: Path, how: str) -> None:
    root = tmp_path / "run"
    root.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("someone else's data")
    lock = root / ".satchel.lock"
    if how == "symlink":
        os.symlink(precious, lock)
    elif how == "dangling_symlink":
        os.symlink(tmp_path / "made-by-the-writer", lock)
    elif how == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    with pytest.raises(satchel.FormatError, match=r"lock.*not a regular file"):
        finishes(lambda: CheckpointManager(root), fifos=[lock])
    assert precious.read_text() == "someone else's data"
    assert not os.path.lexists(tmp_path / "made-by-the-writer")
    assert sorted(os.listdir(root)) == [".satchel.lock"]


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
