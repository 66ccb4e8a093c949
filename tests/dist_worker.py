"""One rank of a distributed-checkpoint test: save or restore a state of DTensors (gloo, CPU).

Usage: python dist_worker.py MODE FOLDER SPEC_JSON  (RANK, WORLD_SIZE, MASTER_PORT in the
environment). SPEC: {"placements": {"w": "S0", "v": "S1", "b": "R"}, "fail_rank": r}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

import satchel
from satchel._dist.layout import LAYOUT_FILE, parse_layout
from satchel._dist.ranks import read_into, write_item


def expected() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(13, 10, generator=g),  # 13 rows: uneven over 2, 3 and 4 ranks
        "v": torch.randn(6, 9, generator=g).to(torch.bfloat16),
        "b": torch.arange(7, dtype=torch.int64),
        "plain": torch.randn(5, generator=g),
    }


def placement(code: str) -> object:
    return Replicate() if code == "R" else Shard(int(code[1:]))


def main() -> None:
    mode, folder, spec = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=float(spec.get("timeout", 60))),
    )
    mesh = init_device_mesh("cpu", (world,))
    want = expected()
    names = spec["placements"]
    if mode == "save":
        state = {
            "model": {
                k: distribute_tensor(want[k], mesh, [placement(p)]) for k, p in names.items()
            },
            "plain": want["plain"],  # every rank holds it whole: written once
            "step": 7,
        }
        if spec.get("die_rank") == rank:
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-save: never reaches the agreement
        if spec.get("fail_rank") == rank:
            state["model"]["w"] = object()  # this rank cannot save: every rank must raise
        try:
            write_item(state, folder, group=dist.group.WORLD)
        except Exception as e:
            print(f"rank {rank} raised {type(e).__name__}: {e}", flush=True)
            if "die_rank" in spec:
                os._exit(0)  # a peer is gone: no teardown handshake is possible
            dist.barrier()
            dist.destroy_process_group()
            return
    elif mode == "mgr_async":
        # An async save stalls only for the host copy: changing the tensors right after the
        # call must not change what is saved; wait() is collective.
        state = {k: distribute_tensor(want[k], mesh, [placement(p)]) for k, p in names.items()}
        with satchel.CheckpointManager(folder, process_group=dist.group.WORLD) as mgr:
            mgr.save(1, model=state, blocking=False)
            for t in state.values():
                t.to_local().add_(1)
            mgr.wait()
            mgr.save(2, model=state, blocking=False)
        # close() waited for step 2
    elif mode == "mgr_fail":
        # Step 1 commits; step 2 fails on one rank: every rank raises, step 1 stays the newest.
        state = {k: distribute_tensor(want[k], mesh, [placement(p)]) for k, p in names.items()}
        with satchel.CheckpointManager(folder, process_group=dist.group.WORLD) as mgr:
            mgr.save(1, model=state)
            bad = dict(state, w=object()) if rank == spec["fail_rank"] else state
            try:
                mgr.save(2, model=bad)
            except satchel.SatchelError as e:
                print(f"rank {rank} raised {type(e).__name__}", flush=True)
            restored = mgr.restore(model={k: torch.zeros_like(v) for k, v in state.items()})
            assert restored.step == 1, restored.step
    elif mode == "load_state":
        # A single-file checkpoint into a sharded model: each rank copies its own box.
        model = torch.nn.Linear(10, 13, bias=False)
        model.weight = torch.nn.Parameter(
            distribute_tensor(torch.zeros(13, 10), mesh, [placement(names["w"])])
        )
        report = satchel.load_state(model, folder / "single.satchel")
        assert report.loaded == ("weight",), report
        assert torch.equal(model.weight.full_tensor(), want["w"])
    else:
        layout = parse_layout((folder / LAYOUT_FILE).read_bytes(), where=str(folder))
        targets = {
            "model": {
                k: distribute_tensor(torch.zeros_like(want[k]), mesh, [placement(p)])
                for k, p in names.items()
            },
            "plain": torch.zeros(5),
        }
        read_into(targets, layout, folder)
        for k, t in targets["model"].items():
            assert torch.equal(t.full_tensor(), want[k]), k
        assert torch.equal(targets["plain"], want["plain"])
    print(f"rank {rank} ok", flush=True)
    dist.barrier()  # gloo aborts a rank that tears down while a peer still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: gloo's threads may abort() in destructors


if __name__ == "__main__":
    main()
