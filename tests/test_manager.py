"""CheckpointManager: layout, commit record, restore of the newest valid step, locks, async saves.

Crash and fault-injection campaigns are in test_crash.py, retention in test_retention.py.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xxhash
from torch import nn

import satchel
import satchel._checkpoint.manager
from satchel import CheckpointManager, CheckpointWarning
from satchel._io.atomic import TMP_MARKER

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


# -- helpers ------------------------------------------------------------------------------------
def state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((64, 32)).astype(np.float32),
        "b": rng.standard_normal(32).astype(np.float32),
        "count": np.array(seed, dtype=np.int64),
    }


def same(got: Any, want: Any) -> bool:
    """Bitwise equality of nested dicts of arrays/tensors and plain values."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and set(got) == set(want)
            and all(same(got[k], want[k]) for k in want)
        )
    if isinstance(want, torch.Tensor):
        want = want.detach().numpy()
    if isinstance(got, torch.Tensor):
        got = got.detach().numpy()
    if isinstance(want, np.ndarray):
        got = np.asarray(got)
        return (
            got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
        )
    return bool(got == want)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def temp_entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if TMP_MARKER in p.name)


def restore_quietly(mgr: CheckpointManager, **kw: Any) -> satchel.RestoreResult:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        return mgr.restore(**kw)


def saved_three(root: Path) -> CheckpointManager:
    mgr = CheckpointManager(root)
    for s in (1, 2, 3):
        mgr.save(s, model=state(s), extra={"step": s}, metrics={"loss": 1.0 / s})
    return mgr


# -- listing ------------------------------------------------------------------------------------
def test_empty_root_has_no_steps_and_restore_says_not_found(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    mgr = CheckpointManager(root)
    assert root.is_dir()
    assert mgr.steps() == []
    assert mgr.latest() is None
    with pytest.raises(satchel.CheckpointNotFoundError, match="none saved") as ei:
        mgr.restore()
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(satchel.CheckpointNotFoundError):
        mgr.restore(step=0)


def test_steps_are_numeric_oldest_first_and_latest_is_the_largest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    order = [10, 2, 30, 0, 100_000_000, 99_999_999, 7]
    for s in order:
        mgr.save(s, model=state(s))
    assert mgr.steps() == sorted(order)
    assert mgr.latest() == 100_000_000
    assert (tmp_path / "step_00000002").is_dir()
    assert (tmp_path / "step_100000000").is_dir()  # at least 8 digits, more when needed
    assert [i.step for i in mgr.checkpoints()] == sorted(order)
    assert all(i.valid for i in mgr.checkpoints())
    # a second manager (another process, say) sees the same thing
    assert CheckpointManager(tmp_path).steps() == sorted(order)
    assert restore_quietly(mgr).step == 100_000_000


def test_foreign_entries_in_the_root_are_ignored_and_kept(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=state(1))
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "step_abc").mkdir()
    (tmp_path / "step_00000005").write_text("a file, not a folder")
    (tmp_path / "other").mkdir()
    os.symlink(step_dir(tmp_path, 1), tmp_path / "step_00000009")  # a link is not a checkpoint
    assert mgr.steps() == [1]
    assert restore_quietly(mgr).step == 1
    mgr.save(2, model=state(2))
    assert mgr.steps() == [1, 2]
    for name in ("notes.txt", "step_abc", "step_00000005", "other", "step_00000009"):
        assert os.path.lexists(tmp_path / name), name


# -- layout and commit record -------------------------------------------------------------------
def test_folder_layout_and_commit_record_fields(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt_state = {"lr": np.float64(0.1), "m": np.ones((3, 3), np.float32)}
    mgr = CheckpointManager(tmp_path)
    t0 = time.time()
    mgr.save(
        7,
        model=model,
        opt=opt_state,
        metrics={"loss": 0.25, "acc": 1, "diverged": float("nan")},
        extra={"epoch": 3, "args": {"hidden": 8}},
    )
    t1 = time.time()
    folder = step_dir(tmp_path, 7)
    assert sorted(os.listdir(tmp_path)) == [".satchel.lock", "step_00000007"]
    assert sorted(os.listdir(folder)) == [
        "extra.satchel",
        "manifest.json",
        "model.satchel",
        "opt.satchel",
    ]
    doc = json.loads((folder / "manifest.json").read_text())
    assert doc["format"] == "satchel-checkpoint"
    assert doc["version"] == 1
    assert doc["step"] == 7
    assert t0 - 1 <= doc["time"] <= t1 + 1
    assert doc["time_utc"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(doc["time"]))
    assert doc["metrics"] == {"loss": 0.25, "acc": 1.0, "diverged": None}
    assert set(doc["items"]) == {"model", "opt", "extra"}
    for name, rec in doc["items"].items():
        assert set(rec) == {"file", "size", "xxh3"}
        assert rec["file"] == f"{name}.satchel"
        data = (folder / rec["file"]).read_bytes()
        assert rec["size"] == len(data)
        assert rec["xxh3"] == xxhash.xxh3_64_hexdigest(data)
    v = doc["versions"]
    assert v["satchel"] == satchel.__version__
    assert v["python"] == platform.python_version()
    assert v["numpy"] == np.__version__
    assert v["torch"] == str(torch.__version__)
    # every item is an ordinary satchel file
    assert same(satchel.load(folder / "model.satchel"), dict(model.state_dict()))
    assert same(satchel.load(folder / "opt.satchel")["m"], opt_state["m"])
    assert satchel.load(folder / "extra.satchel") == {"epoch": 3, "args": {"hidden": 8}}
    # the parsed view agrees with the file
    (info,) = mgr.checkpoints()
    assert info.valid and info.step == 7 and info.path == folder
    assert info.record is not None
    assert info.record.items["model"].xxh3 == doc["items"]["model"]["xxh3"]
    assert info.record.metrics["loss"] == 0.25
    assert np.isnan(info.record.metrics["diverged"])
    assert mgr.check(7) is None


# -- restore ------------------------------------------------------------------------------------
def test_restore_given_step_and_newest(tmp_path: Path) -> None:
    mgr = saved_three(tmp_path)
    res = restore_quietly(mgr)
    assert res.step == 3 and res.extra == {"step": 3} and res.skipped == ()
    assert res.metrics == {"loss": pytest.approx(1 / 3)}
    assert res.path == step_dir(tmp_path, 3)
    assert set(res.items) == {"model"}
    assert same(res.items["model"], state(3))
    for s in (1, 2, 3):
        r = mgr.restore(step=s)
        assert r.step == s and r.extra == {"step": s} and same(r.items["model"], state(s))
    target = {k: np.zeros_like(v) for k, v in state(0).items()}
    r = mgr.restore(step=2, model=target)
    assert same(target, state(2))
    assert r.reports["model"].clean
    with pytest.raises(satchel.CheckpointNotFoundError):
        mgr.restore(step=4)
    with pytest.raises(satchel.CheckpointNotFoundError, match="optimizer"):
        mgr.restore(optimizer={})


def test_restore_into_fresh_torch_objects_resumes_bit_for_bit(tmp_path: Path) -> None:
    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    def train(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> list[float]:
        losses = []
        for _ in range(n):
            x = torch.randn(8, 6)
            loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    model, opt = build()
    train(model, opt, 5)
    mgr = CheckpointManager(tmp_path)
    mgr.save(5, model=model, optimizer=opt, rng=True, extra={"epoch": 1})
    expected = train(model, opt, 4)
    final = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(99)  # a different process state
    model2, opt2 = build()
    res = restore_quietly(mgr, model=model2, optimizer=opt2, rng=True)
    assert res.step == 5 and res.extra == {"epoch": 1}
    assert res.reports["model"].clean
    assert train(model2, opt2, 4) == expected
    assert same(dict(model2.state_dict()), final)


CORRUPTIONS = [
    "flip_byte",
    "truncate",
    "append_byte",
    "delete_item",
    "delete_manifest",
    "garbage_manifest",
    "manifest_wrong_step",
]


def corrupt(folder: Path, how: str) -> None:
    item = folder / "model.satchel"
    manifest = folder / "manifest.json"
    if how == "flip_byte":
        data = bytearray(item.read_bytes())
        data[len(data) - 100] ^= 0x01  # inside the tensor bytes: same size, other digest
        item.write_bytes(bytes(data))
    elif how == "truncate":
        os.truncate(item, item.stat().st_size // 2)
    elif how == "append_byte":
        with item.open("ab") as f:
            f.write(b"\0")
    elif how == "delete_item":
        item.unlink()
    elif how == "delete_manifest":
        manifest.unlink()
    elif how == "garbage_manifest":
        manifest.write_bytes(b"\x00{not json at all" * 3)
    elif how == "manifest_wrong_step":
        doc = json.loads(manifest.read_text())
        doc["step"] = 2
        manifest.write_text(json.dumps(doc))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_broken_newest_is_reported_and_previous_valid_restored(tmp_path: Path, how: str) -> None:
    mgr = saved_three(tmp_path)
    corrupt(step_dir(tmp_path, 3), how)
    with pytest.warns(CheckpointWarning, match="step 3") as rec:
        res = mgr.restore()
    assert len(rec) == 1
    assert res.step == 2
    assert same(res.items["model"], state(2))
    assert res.extra == {"step": 2}
    assert [s for s, _ in res.skipped] == [3]
    assert res.skipped[0][1]  # a reason
    assert mgr.check(3) is not None
    with pytest.raises(satchel.CheckpointNotFoundError, match="step 3"):
        mgr.restore(step=3)


def test_two_broken_newest_are_both_skipped(tmp_path: Path) -> None:
    mgr = saved_three(tmp_path)
    corrupt(step_dir(tmp_path, 3), "flip_byte")
    corrupt(step_dir(tmp_path, 2), "truncate")
    with pytest.warns(CheckpointWarning) as rec:
        res = mgr.restore()
    assert len(rec) == 2
    assert res.step == 1 and same(res.items["model"], state(1))
    assert [s for s, _ in res.skipped] == [3, 2]


def test_no_valid_checkpoint_is_not_found_naming_what_was_skipped(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=state(1))
    mgr.save(2, model=state(2))
    corrupt(step_dir(tmp_path, 1), "flip_byte")
    corrupt(step_dir(tmp_path, 2), "delete_item")
    with (
        pytest.warns(CheckpointWarning),
        pytest.raises(satchel.CheckpointNotFoundError, match=r"step 2.*step 1"),
    ):
        mgr.restore()


# -- overwrite ----------------------------------------------------------------------------------
def test_saving_an_existing_step_fails_unless_overwrite(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=state(1), extra="first")
    before = (step_dir(tmp_path, 1) / "model.satchel").read_bytes()
    with pytest.raises(satchel.CheckpointExistsError, match="overwrite=True") as ei:
        mgr.save(1, model=state(5))
    assert isinstance(ei.value, FileExistsError)
    with pytest.raises(satchel.CheckpointExistsError):
        mgr.save(1, model=state(5), blocking=False)  # raised at once, not in the background
    mgr.wait()
    assert (step_dir(tmp_path, 1) / "model.satchel").read_bytes() == before
    # another manager on the same root sees the step as existing too
    with pytest.raises(satchel.CheckpointExistsError):
        CheckpointManager(tmp_path).save(1, model=state(5))

    mgr.save(1, model=state(5), extra="second", overwrite=True)
    res = restore_quietly(mgr)
    assert res.step == 1 and res.extra == "second" and same(res.items["model"], state(5))
    assert mgr.steps() == [1]
    assert temp_entries(tmp_path) == []
    mgr.save(1, model=state(6), overwrite=True, blocking=False)
    mgr.wait()
    assert same(restore_quietly(mgr).items["model"], state(6))
    assert temp_entries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == [".satchel.lock", "step_00000001"]


# -- temp leftovers -----------------------------------------------------------------------------
def test_temp_leftovers_are_ignored_by_readers_and_removed_by_the_next_save(
    tmp_path: Path,
) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=state(1))
    # a crashed save of step 9: complete except for the rename, even with a commit record
    fake = tmp_path / ".step_00000009.satchel-tmp-123-abcd"
    fake.mkdir()
    for name in ("model.satchel", "manifest.json"):
        (fake / name).write_bytes((step_dir(tmp_path, 1) / name).read_bytes())
    (fake / ".opt.satchel.satchel-tmp-123-beef").write_bytes(b"half")
    half = tmp_path / ".step_00000010.satchel-tmp-456-0123"
    half.mkdir()
    trash = tmp_path / ".trash-step_00000000.satchel-tmp-789-aaaa"
    trash.mkdir()
    (trash / "model.satchel").write_bytes(b"x")
    stray = tmp_path / ".notes.satchel-tmp-1-ffff"
    stray.write_bytes(b"y")

    assert mgr.steps() == [1]
    assert mgr.latest() == 1
    assert [i.step for i in mgr.checkpoints()] == [1]
    assert restore_quietly(mgr).step == 1
    assert len(temp_entries(tmp_path)) == 5  # readers delete nothing

    mgr.save(2, model=state(2))
    assert temp_entries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == [".satchel.lock", "step_00000001", "step_00000002"]
    assert restore_quietly(mgr).step == 2


# -- arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {"keep_last": 0},
        {"keep_last": -1},
        {"keep_last": True},
        {"keep_every": 0},
        {"keep_every": 1.5},
        {"keep_best": ("loss", "avg", 1)},
        {"keep_best": ("loss", "min", 0)},
    ],
)
def test_bad_retention_arguments(tmp_path: Path, kw: dict[str, Any]) -> None:
    with pytest.raises(satchel.UsageError):
        CheckpointManager(tmp_path, **kw)


@pytest.mark.parametrize(
    ("step", "kw"),
    [
        (-1, {"model": {"w": np.zeros(2)}}),
        (True, {"model": {"w": np.zeros(2)}}),
        (1.0, {"model": {"w": np.zeros(2)}}),
        (1, {}),
        (1, {"extra": 5}),
        (1, {"model": {"w": np.zeros(2)}, "metrics": {"loss": "low"}}),
    ],
)
def test_bad_save_arguments_write_nothing(tmp_path: Path, step: Any, kw: dict[str, Any]) -> None:
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(satchel.UsageError):
        mgr.save(step, **kw)
    with pytest.raises(satchel.UsageError):
        mgr.save(1, **{"../evil": np.zeros(2)})
    assert mgr.steps() == []
    assert [p.name for p in tmp_path.iterdir() if p.name != ".satchel.lock"] == []


# -- writer lock ---------------------------------------------------------------------------------
HOLD_LOCK = """
import pathlib, sys, time
from satchel._checkpoint.lock import WriterLock
with WriterLock(pathlib.Path(sys.argv[1])).hold():
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def lock_holder(tmp_path: Path) -> Any:
    procs: list[subprocess.Popen[str]] = []

    def start(root: Path) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(root)],
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_second_writer_gets_a_clear_error_and_the_lock_dies_with_its_holder(
    tmp_path: Path, lock_holder: Any
) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(1, model=state(1))
    holder = lock_holder(tmp_path)

    with pytest.raises(satchel.CheckpointLockedError, match=f"pid {holder.pid}") as ei:
        mgr.save(2, model=state(2))
    assert isinstance(ei.value, BlockingIOError)
    assert "readers need no lock" in str(ei.value)
    # the failed save changed nothing: no folder, no temp, and retention did not run
    assert sorted(os.listdir(tmp_path)) == [".satchel.lock", "step_00000001"]

    # background save: the error surfaces on wait()
    mgr.save(2, model=state(2), blocking=False)
    with pytest.raises(satchel.CheckpointLockedError):
        mgr.wait()
    mgr.wait()  # reported once

    # readers need no lock
    assert mgr.steps() == [1]
    assert mgr.latest() == 1
    res = restore_quietly(CheckpointManager(tmp_path))
    assert res.step == 1 and same(res.items["model"], state(1))

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    mgr.save(2, model=state(2))  # the kernel released the lock with the dead process
    assert mgr.steps() == [2]
    assert (tmp_path / ".satchel.lock").read_text().strip() == str(os.getpid())


def test_lock_is_released_after_every_save_and_error(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=state(1))
    with pytest.raises(satchel.UnsupportedObjectError):
        mgr.save(2, model={"f": object()})
    # another process can take the lock now
    out = subprocess.run(
        [sys.executable, "-c", HOLD_LOCK.replace("time.sleep(120)", "pass"), str(tmp_path)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "locked"
    mgr.save(2, model=state(2))


# -- async saves ----------------------------------------------------------------------------------
class Gate:
    """Wraps the manager's write_plan so a background save stops until the test opens the gate."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = satchel._checkpoint.manager.write_plan
        self.open = threading.Event()
        self.entered = threading.Event()
        monkeypatch.setattr(satchel._checkpoint.manager, "write_plan", self)

    def __call__(self, plan: Any, path: Path, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.open.wait(30), "gate never opened"
        return self.real(plan, path, **kwargs)


def test_async_save_holds_the_values_of_the_moment_save_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    arrays = {"a": np.arange(10, dtype=np.float32)}
    want_model = {k: v.clone() for k, v in model.state_dict().items()}
    want_opt_mom = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    want_arrays = {"a": arrays["a"].copy()}

    gate = Gate(monkeypatch)
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=model, optimizer=opt, arrays=arrays, blocking=False)
    assert gate.entered.wait(30)  # the background thread is writing now
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1000.0)
        for p in model.parameters():
            opt.state[p]["momentum_buffer"].mul_(-3)
    arrays["a"] += 7
    gate.open.set()
    mgr.wait()

    res = restore_quietly(mgr)
    assert same(res.items["model"], want_model)
    assert same(res.items["arrays"], want_arrays)
    moms = [res.items["optimizer"]["state"][i]["momentum_buffer"] for i in range(4)]
    assert all(same(m, w) for m, w in zip(moms, want_opt_mom, strict=True))
    fresh = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    mgr.restore(model=fresh)
    assert same(dict(fresh.state_dict()), want_model)


def test_at_most_one_save_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    mgr = CheckpointManager(tmp_path)
    active = 0
    max_active = 0
    log: list[str] = []
    real_write = mgr._write

    def tracked(step: int, *a: Any) -> None:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        log.append(f"start {step}")
        try:
            real_write(step, *a)
        finally:
            log.append(f"end {step}")
            active -= 1

    monkeypatch.setattr(mgr, "_write", tracked)
    mgr.save(1, model=state(1), blocking=False)
    assert gate.entered.wait(30)
    returned = threading.Event()

    def second() -> None:
        mgr.save(2, model=state(2), blocking=False)
        returned.set()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    assert not returned.is_set(), "the second save did not wait for the first"
    assert log == ["start 1"]
    gate.open.set()
    t.join(30)
    assert returned.is_set()
    mgr.close()
    assert max_active == 1
    assert log == ["start 1", "end 1", "start 2", "end 2"]
    assert mgr.steps() == [1, 2]


@pytest.mark.parametrize("surface", ["save", "wait", "close", "context_exit"])
def test_background_error_surfaces_on_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, surface: str
) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=state(1))
    before = {p.name: p.read_bytes() for p in step_dir(tmp_path, 1).iterdir()}
    real = satchel._checkpoint.manager.write_plan
    calls = 0

    def failing(plan: Any, path: Path, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real(plan, path)  # the first item is written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(satchel._checkpoint.manager, "write_plan", failing)
    mgr.save(2, model=state(2), opt=state(20), blocking=False)  # returns; fails in background
    if surface == "save":
        with pytest.raises(OSError, match="injected") as ei:
            mgr.save(3, model=state(3))
        assert mgr.steps() == [1]  # step 3 was not saved either
    elif surface == "wait":
        with pytest.raises(OSError, match="injected") as ei:
            mgr.wait()
    elif surface == "close":
        with pytest.raises(OSError, match="injected") as ei:
            mgr.close()
    else:
        with pytest.raises(OSError, match="injected") as ei, mgr:
            pass
    assert ei.value.errno == errno.ENOSPC
    mgr.wait()  # reported once only
    mgr.close()
    assert mgr.steps() == [1]
    assert {p.name: p.read_bytes() for p in step_dir(tmp_path, 1).iterdir()} == before
    assert temp_entries(tmp_path) == []
    monkeypatch.setattr(satchel._checkpoint.manager, "write_plan", real)
    mgr.save(2, model=state(2), blocking=False)
    mgr.close()
    assert mgr.steps() == [1, 2]


def test_background_fsync_error_leaves_no_litter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, model=state(1))
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread().name.startswith("satchel-save-"):
            raise OSError(errno.EIO, "Input/output error (injected)")
        real_fsync(fd)

    monkeypatch.setattr(satchel._io.atomic.os, "fsync", fsync)
    mgr.save(2, model=state(2), blocking=False)
    with pytest.raises(OSError, match="injected") as ei:
        mgr.wait()
    assert ei.value.errno == errno.EIO
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [".satchel.lock", "step_00000001"]
    assert same(restore_quietly(mgr).items["model"], state(1))


def test_async_saves_in_a_with_block_are_on_disk_after_it(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path, keep_last=2) as mgr:
        for s in range(5):
            mgr.save(s, model=state(s), blocking=False, extra=s)
    reader = CheckpointManager(tmp_path)
    assert reader.steps() == [3, 4]
    res = restore_quietly(reader)
    assert res.step == 4 and res.extra == 4 and same(res.items["model"], state(4))
    assert temp_entries(tmp_path) == []
