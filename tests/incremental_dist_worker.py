"""One rank of the distributed incremental-save test (run by tests/test_incremental.py).

Usage: python incremental_dist_worker.py ROOT STEPS  (RANK, WORLD_SIZE, MASTER_PORT in the
environment). Even steps are saved blocking, odd ones in the background. Every rank holds half
of a frozen backbone (a DTensor sharded on dim 0) and the whole of a small adapter (a plain
tensor) that changes at every step; the ranks save STEPS steps with ``incremental=True`` and
``keep_last=2``, then restore the newest into zeroed targets and check it. :func:`expected` is
the state at a step.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

import satchel


def expected(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    backbone = torch.randn(256, 512, generator=g)  # 512 KiB, never changes
    adapter = torch.arange(32, dtype=torch.float32) + step  # 128 B, changes every step
    return {"backbone": backbone, "adapter": adapter}


def main() -> None:
    root, steps = Path(sys.argv[1]), int(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    mesh = init_device_mesh("cpu", (world,))
    with satchel.CheckpointManager(
        root, process_group=dist.group.WORLD, incremental=True, keep_last=2
    ) as mgr:
        for step in range(steps):
            want = expected(step)
            state = {
                "backbone": distribute_tensor(want["backbone"], mesh, [Shard(0)]),
                "adapter": want["adapter"],
            }
            mgr.save(step, model=state, extra={"step": step}, blocking=step % 2 == 0)
        mgr.wait()
        want = expected(steps - 1)
        target = {
            "backbone": distribute_tensor(torch.zeros(256, 512), mesh, [Shard(0)]),
            "adapter": torch.zeros(32),
        }
        restored = mgr.restore(model=target)
        assert restored.step == steps - 1, restored.step
        assert torch.equal(target["backbone"].full_tensor(), want["backbone"])
        assert torch.equal(target["adapter"], want["adapter"])
    print(f"rank {rank} ok", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: gloo's threads may abort() in destructors


if __name__ == "__main__":
    main()
