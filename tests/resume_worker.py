"""Training script for test_resume.py, run in fresh processes (pytest does not collect it).

    python resume_worker.py straight      CKPT FINAL N   train N steps, save the state to FINAL
    python resume_worker.py first         CKPT FINAL N   train N/2 steps, checkpoint into CKPT
    python resume_worker.py resume        CKPT FINAL N   restore CKPT, train to N, save FINAL
    python resume_worker.py resume-no-rng CKPT FINAL N   same, leaving the global RNGs unrestored

The run uses dropout (global torch RNG), Adam, a StepLR schedule, a dataset shuffled each epoch
by a seeded torch.Generator, input noise from NumPy's global generator and a loss weight from
Python's ``random``, so an exact resume needs every piece of state back.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import satchel

N_SAMPLES = 40
BATCH = 8
BATCHES_PER_EPOCH = N_SAMPLES // BATCH


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.drop = nn.Dropout(p=0.3)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, 6, generator=g)
    y = torch.randint(0, 3, (N_SAMPLES,), generator=g)
    return x, y


class Run:
    def __init__(self, model_seed: int) -> None:
        torch.manual_seed(model_seed)
        self.model = Model()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2, betas=(0.9, 0.99))
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=5, gamma=0.5)
        self.data_gen = torch.Generator().manual_seed(77)
        self.perm = torch.arange(N_SAMPLES)
        self.step = 0
        self.x, self.y = dataset()

    def train_until(self, stop: int) -> None:
        self.model.train()
        while self.step < stop:
            i = self.step % BATCHES_PER_EPOCH
            if i == 0:
                self.perm = torch.randperm(N_SAMPLES, generator=self.data_gen)
            idx = self.perm[i * BATCH : (i + 1) * BATCH]
            noise = torch.from_numpy(np.random.standard_normal((BATCH, 6)).astype(np.float32))
            x = self.x[idx] + 0.05 * noise
            weight = 1.0 + 0.1 * random.random()
            loss = nn.functional.cross_entropy(self.model(x), self.y[idx]) * weight
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.sched.step()
            self.step += 1


def seed_globals() -> None:
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)


def save_final(run: Run, final: Path) -> None:
    satchel.save(
        {
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "step": run.step,
        },
        final,
    )


def main(argv: list[str]) -> None:
    mode, ckpt, final, n = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if mode == "straight":
        run = Run(model_seed=0)
        seed_globals()
        run.train_until(n)
        save_final(run, final)
    elif mode == "first":
        run = Run(model_seed=0)
        seed_globals()
        run.train_until(n // 2)
        mgr = satchel.CheckpointManager(ckpt)
        mgr.save(
            run.step,
            model=run.model,
            optimizer=run.opt,
            scheduler=run.sched,
            rng=True,
            extra={
                "step": run.step,
                "epoch": run.step // BATCHES_PER_EPOCH,
                "data_gen": run.data_gen.get_state(),
                "perm": run.perm,
            },
        )
    elif mode in ("resume", "resume-no-rng"):
        run = Run(model_seed=999)  # different init: everything must come from the checkpoint
        random.seed(999)
        np.random.seed(999)
        torch.manual_seed(999)
        # Two of these run at once on one root: they only read it, so a CheckpointRoot (a
        # CheckpointManager would hold the root's writer lock, and the second would be refused).
        restored = satchel.CheckpointRoot(ckpt).restore(
            model=run.model,
            optimizer=run.opt,
            scheduler=run.sched,
            rng=(mode == "resume"),
        )
        if not restored.reports["model"].clean:
            raise SystemExit(f"model did not load cleanly: {restored.reports['model']}")
        run.step = restored.extra["step"]
        if restored.step != run.step:
            raise SystemExit(f"step mismatch {restored.step} != {run.step}")
        run.data_gen.set_state(restored.extra["data_gen"].clone())
        run.perm = restored.extra["perm"].clone()
        run.train_until(n)
        save_final(run, final)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
