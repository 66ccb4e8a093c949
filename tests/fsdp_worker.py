"""One rank of an FSDP2 training run on CPU (gloo), checkpointed with satchel's manager.

Usage: python fsdp_worker.py PHASE ROOT OUT STEPS  (RANK, WORLD_SIZE, MASTER_PORT set).
PHASE ``ref`` trains STEPS steps and writes the final parameters to OUT; ``first`` trains STEPS
steps and saves; ``resume`` restores the newest step, trains STEPS more, writes OUT.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import init_device_mesh

import satchel

BATCH = 8  # the global batch: split evenly over 1, 2 or 4 ranks


def model_and_optimizer(mesh: object) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 3),
    )  # fmt: skip
    for layer in m:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m, torch.optim.Adam(m.parameters(), lr=3e-2)


def train(m: torch.nn.Module, opt: torch.optim.Optimizer, first: int, n: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    for step in range(first, first + n):
        g = torch.Generator().manual_seed(1000 + step)  # the same global batch on every rank
        x, y = torch.randn(BATCH, 12, generator=g), torch.randn(BATCH, 3, generator=g)
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss = torch.nn.functional.mse_loss(m(x[part]), y[part])
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    phase, root, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    mesh = init_device_mesh("cpu", (world,))
    m, opt = model_and_optimizer(mesh)
    group = dist.group.WORLD
    if phase == "ref":
        train(m, opt, 0, steps)
    elif phase == "first":
        train(m, opt, 0, steps)
        with satchel.CheckpointManager(root, process_group=group) as mgr:
            mgr.save(steps, model=m, optimizer=opt)
    else:
        with satchel.CheckpointManager(root, process_group=group) as mgr:
            restored = mgr.restore(model=m, optimizer=opt)
        train(m, opt, restored.step, steps)
    full = {k: v.full_tensor() for k, v in m.state_dict().items()}  # collective
    if phase != "first" and rank == 0:
        satchel.save(full, out)
    print(f"rank {rank} ok", flush=True)
    dist.barrier()  # gloo aborts a rank that tears down while a peer still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: gloo's threads may abort() in destructors


if __name__ == "__main__":
    main()
