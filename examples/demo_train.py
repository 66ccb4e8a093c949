"""A small training run checkpointed every step; the demo kills it and resumes it.

    python examples/demo_train.py ROOT TOTAL_STEPS [--slow]

Resumes from the newest valid checkpoint in ROOT if there is one. Prints "committed <step>"
after each save so a parent process knows what is on disk.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

import satchel


def build() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    return model, opt, sched


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The batch is a function of the step, so a resumed run sees the same data.
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 16, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def train(
    root: Path, total: int, *, slow: bool = False, report: bool = False
) -> tuple[nn.Module, int]:
    """Train to ``total`` steps; returns the model and the step it started from."""
    model, opt, sched = build()
    mgr = satchel.CheckpointManager(root, keep_last=3)
    start = 0
    if mgr.latest() is not None:
        restored = mgr.restore(model=model, optimizer=opt, scheduler=sched, rng=True)
        start = restored.step
    for step in range(start + 1, total + 1):
        x, y = data(step)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        mgr.save(
            step,
            model=model,
            optimizer=opt,
            scheduler=sched,
            rng=True,
            metrics={"loss": loss.item()},
        )
        if report:
            print(f"committed {step}", flush=True)
        if slow:
            time.sleep(0.05)
    mgr.close()
    return model, start


if __name__ == "__main__":
    train(Path(sys.argv[1]), int(sys.argv[2]), slow="--slow" in sys.argv, report=True)
