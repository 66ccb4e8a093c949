"""One rank of the object-storage distributed tests (run by tests/test_remote_checkpoints.py).

Usage: python remote_dist_worker.py ENDPOINT BUCKET  (RANK, WORLD_SIZE, MASTER_PORT in the
environment; ENDPOINT the test process's moto server). In one process group, on two roots:

- ``s3://BUCKET/plain``: step 1 saved collectively (blocking), step 2 in the background, both
  restored on the ranks into zeroed DTensors and compared bitwise; step 3 fails on rank 1
  (an object it cannot save): every rank must raise, and step 2 stays the one restore picks.
- ``s3://BUCKET/inc``: :data:`STEPS` steps of a frozen backbone (a DTensor sharded on dim 0)
  and a changing adapter, ``incremental=True``, ``keep_last=2``; then a step that fails on
  rank 1; the newest committed step restored bitwise.

Each rank prints ``rank <r> ok`` at the end; the test process checks the roots afterwards.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

import satchel

STEPS = 4
CREDENTIALS = {"key": "testing", "secret": "testing"}


def plain_state(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {
        "w": torch.randn(13, 10, generator=g),  # 13 rows: uneven over 2 ranks
        "v": torch.randn(6, 9, generator=g).to(torch.bfloat16),
        "b": torch.arange(7, dtype=torch.int64) + step,  # a plain tensor: one rank writes it
    }


def inc_state(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "backbone": torch.randn(256, 512, generator=g),  # 512 KiB, frozen
        "adapter": torch.arange(64, dtype=torch.float32) + step,  # changes every step
    }


def _sharded(want: dict[str, torch.Tensor], mesh: object) -> dict[str, torch.Tensor]:
    """Float tensors sharded on dim 0 over the ranks; the others plain (held whole by all)."""
    return {
        k: distribute_tensor(v, mesh, [Shard(0)]) if v.ndim == 2 else v.clone()  # type: ignore[arg-type]
        for k, v in want.items()
    }


def _zeros(want: dict[str, torch.Tensor], mesh: object) -> dict[str, torch.Tensor]:
    return _sharded({k: torch.zeros_like(v) for k, v in want.items()}, mesh)


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for k, v in want.items():
        g = got[k]
        full = g.full_tensor() if hasattr(g, "full_tensor") else g
        assert full.dtype == v.dtype, k
        assert torch.equal(full.view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)), k


def main() -> None:
    endpoint, bucket = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    mesh = init_device_mesh("cpu", (world,))
    opts = {"endpoint_url": endpoint, **CREDENTIALS}
    group = dist.group.WORLD
    with satchel.CheckpointManager(
        f"s3://{bucket}/plain", process_group=group, storage_options=opts
    ) as mgr:
        mgr.save(1, model=_sharded(plain_state(1), mesh), extra={"step": 1})
        state = _sharded(plain_state(2), mesh)
        mgr.save(2, model=state, extra={"step": 2}, blocking=False)
        for t in state.values():  # the save copied its pieces: this must not reach it
            (t.to_local() if hasattr(t, "to_local") else t).add_(1)
        mgr.wait()
        for step in (1, 2):
            target = _zeros(plain_state(step), mesh)
            restored = mgr.restore(step, model=target)
            assert restored.step == step and restored.extra == {"step": step}, restored
            _same(target, plain_state(step))
        bad = _sharded(plain_state(3), mesh)
        if rank == 1:
            bad["w"] = object()  # type: ignore[assignment]  # this rank cannot save it
        try:
            mgr.save(3, model=bad)
        except satchel.SatchelError as e:
            print(f"rank {rank} raised {type(e).__name__}: {e}", flush=True)
        else:
            raise AssertionError("step 3 should have failed on every rank")
        target = _zeros(plain_state(2), mesh)
        assert mgr.restore(model=target).step == 2
        _same(target, plain_state(2))
    with satchel.CheckpointManager(
        f"s3://{bucket}/inc",
        process_group=group,
        storage_options=opts,
        incremental=True,
        keep_last=2,
    ) as mgr:
        for step in range(STEPS):
            mgr.save(step, model=_sharded(inc_state(step), mesh), blocking=step % 2 == 0)
        mgr.wait()
        bad = _sharded(inc_state(STEPS), mesh)
        if rank == 1:
            bad["backbone"] = object()  # type: ignore[assignment]
        try:  # rank 0 uploads its new adapter to the pool, rank 1 fails: rank 0 removes it
            mgr.save(STEPS, model=bad)
        except satchel.SatchelError:
            print(f"rank {rank} raised on the incremental save", flush=True)
        target = _zeros(inc_state(STEPS - 1), mesh)
        assert mgr.restore(model=target).step == STEPS - 1
        _same(target, inc_state(STEPS - 1))
    print(f"rank {rank} ok", flush=True)
    dist.barrier()  # gloo aborts a rank that tears down while a peer still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: gloo's threads may abort() in destructors


if __name__ == "__main__":
    main()
