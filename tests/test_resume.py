"""Exact resume (issue item 6), with the restore in a new process.

A small model with dropout, Adam and a StepLR schedule, data shuffled by a seeded generator:
train N steps straight; separately train N/2, save, restore in a *new process*, train to N.
Final parameters and optimizer state must be bitwise equal. The worker is resume_worker.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import satchel

HERE = Path(__file__).resolve().parent
WORKER = HERE / "resume_worker.py"
SRC = HERE.parent / "src"
N = 24  # 5 batches per epoch: N/2 = 12 stops mid-epoch, so the shuffle order must resume too


def _env() -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(SRC), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    return env


def _start(mode: str, ckpt: Path, final: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(ckpt), str(final), str(N)],
        env=_env(),
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"{p.args} failed:\n{out}\n{err}"


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two loaded states differ (tensors compared bitwise, with dtype and shape)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
            return [where]
        same = a.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() == (
            b.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
        return [] if same and torch.equal(a, b) else [where]
    if isinstance(a, Mapping):
        if not isinstance(b, Mapping) or list(a) != list(b):
            return [where]
        return [d for k in a for d in _diff(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return [where]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _diff(x, y, f"{where}[{i}]")
        ]
    return [] if type(a) is type(b) and a == b else [where]


def test_exact_resume_in_new_process_is_bitwise_equal(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    straight = tmp_path / "straight.satchel"
    resumed = tmp_path / "resumed.satchel"
    no_rng = tmp_path / "resumed_without_rng.satchel"

    # Phase 1 (independent processes): the straight run, and the first half with a checkpoint.
    _finish(
        _start("straight", tmp_path / "unused", straight), _start("first", ckpt, tmp_path / "x")
    )
    view = satchel.CheckpointRoot(ckpt)  # a reader: the resume processes below read it too
    assert view.steps() == [N // 2]
    assert view.check(N // 2) is None

    # Phase 2: fresh processes restore the checkpoint and train to N.
    _finish(_start("resume", ckpt, resumed), _start("resume-no-rng", ckpt, no_rng))

    a, b = satchel.load(straight), satchel.load(resumed)
    assert a["step"] == b["step"] == N
    assert _diff(a["model"], b["model"]) == []
    assert _diff(a["optimizer"], b["optimizer"]) == []
    assert _diff(a["scheduler"], b["scheduler"]) == []
    # Adam's per-parameter state is all there: step, exp_avg and exp_avg_sq for 4 tensors.
    state = b["optimizer"]["state"]
    assert sorted(state) == [0, 1, 2, 3]
    for s in state.values():
        assert float(s["step"]) == N
        assert set(s) == {"step", "exp_avg", "exp_avg_sq"}
    assert b["optimizer"]["param_groups"][0]["lr"] == 1e-2 * 0.5 ** (N // 5)
    assert b["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    # The files themselves are byte-identical.
    assert straight.read_bytes() == resumed.read_bytes()

    # The check has teeth: without the RNG state (dropout masks, noise) the result differs.
    c = satchel.load(no_rng)
    assert _diff(a["model"], c["model"]) != []
    assert _diff(a["optimizer"]["state"], c["optimizer"]["state"]) != []

    # And training really moved the parameters after the checkpoint.
    mid = satchel.load(ckpt / f"step_{N // 2:08d}" / "model.satchel")
    assert _diff(mid, b["model"]) != []
