"""Incremental checkpoints: a fine-tuning run saved at every step (docs/checkpoints.md).

Usage: python benchmarks/incremental.py [--size-mib 512] [--steps 6] [--workdir DIR]

The state is a frozen transformer-shaped fp32 backbone (``workloads.transformer_state``, random
so nothing compresses) plus a LoRA-like adapter of about 0.5% of its bytes and the adapter's
Adam state (two more copies of the adapter). Each step changes the adapter and its optimizer
state in place, then every case saves the whole state, durably:

- ``satchel incremental``: ``CheckpointManager(root, incremental=True, keep_last=2)``;
- ``satchel full``: ``CheckpointManager(root, keep_last=2)``;
- ``torch.save + fsync``: one file per step (the one from two steps ago deleted untimed);
- ``DCP save``: ``torch.distributed.checkpoint.save`` without a process group, one folder per
  step (its writer fsyncs its files), the one from two steps ago deleted untimed.

For each save: the seconds it took and the bytes it added to its root (the sizes of the files
that did not exist before it). Cases run interleaved, their order rotated every step, so a
change in the machine's load hits each alike. A second table measures what confirming a
candidate costs (SPEC 8.17): comparing 256 MiB with a page-cached mapping of stored bytes,
against hashing them a second time. Prints markdown on stdout; nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

import satchel
from measure import fsync_file
from run import machine_info, warn_if_memory_backed
from satchel._checkpoint.incremental import _same_bytes
from workloads import transformer_state

MIB = 1 << 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p)] = (st.st_ino, st.st_size)
    return out


def fine_tuning_state(size: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    backbone = transformer_state(size).state
    gen = torch.Generator().manual_seed(1)
    adapter = {}
    for key, t in backbone.items():
        if key.endswith("attn.proj.weight"):  # a rank-8 A and B on every attention projection
            adapter[f"{key}.lora_a"] = torch.randn(8, t.shape[1], generator=gen) * 0.01
            adapter[f"{key}.lora_b"] = torch.zeros(t.shape[0], 8)
    model = {**backbone, **adapter}
    opt = {
        "state": {
            k: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
            for k, v in adapter.items()
        },
        "step": 0,
    }
    return model, opt


def train_step(model: dict[str, torch.Tensor], opt: dict[str, Any], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for k, s in opt["state"].items():
        g = torch.randn(model[k].shape, generator=gen) * 0.01
        s["exp_avg"].mul_(0.9).add_(g, alpha=0.1)
        s["exp_avg_sq"].mul_(0.999).addcmul_(g, g, value=0.001)
        model[k].sub_(s["exp_avg"] / (s["exp_avg_sq"].sqrt() + 1e-8), alpha=1e-3)
    opt["step"] = step


class Case:
    def __init__(self, name: str, root: Path, save: Callable[[int], None]) -> None:
        self.name, self.root, self.save = name, root, save
        self.seconds: list[float] = []
        self.added: list[int] = []

    def run(self, step: int) -> None:
        before = files_of(self.root)
        t0 = time.perf_counter()
        self.save(step)
        self.seconds.append(time.perf_counter() - t0)
        after = files_of(self.root)
        self.added.append(
            sum(size for p, (ino, size) in after.items() if before.get(p, (None,))[0] != ino)
        )


def cases(work: Path, model: dict[str, torch.Tensor], opt: dict[str, Any]) -> list[Case]:
    import torch.distributed.checkpoint as dcp

    inc = satchel.CheckpointManager(work / "incremental", incremental=True, keep_last=2)
    full = satchel.CheckpointManager(work / "full", keep_last=2)
    (work / "torch").mkdir()
    (work / "dcp").mkdir()

    def torch_save(step: int) -> None:
        path = work / "torch" / f"step_{step}.pt"
        torch.save({"model": model, "optimizer": opt}, path)
        fsync_file(path)

    def dcp_save(step: int) -> None:
        dcp.save({"model": model, "optimizer": opt}, checkpoint_id=work / "dcp" / f"step_{step}")

    return [
        Case(
            "satchel incremental",
            work / "incremental",
            lambda s: inc.save(s, model=model, optimizer=opt),
        ),
        Case("satchel full", work / "full", lambda s: full.save(s, model=model, optimizer=opt)),
        Case("torch.save + fsync", work / "torch", torch_save),
        Case("DCP save (no process group)", work / "dcp", dcp_save),
    ]


def prune(work: Path, step: int) -> None:
    """Keep two steps of the peers without retention, as keep_last=2 does (untimed)."""
    old = step - 2
    with_old = [work / "torch" / f"step_{old}.pt", work / "dcp" / f"step_{old}"]
    for p in with_old:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def confirm_costs(work: Path) -> list[tuple[str, float]]:
    """Seconds to confirm 256 MiB: compare with a mapping of stored bytes, or hash again."""
    n = 256 * MIB
    a = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    path = work / "stored.bin"
    a.tofile(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        b = np.frombuffer(mm, dtype=np.uint8)

        def compare() -> bool:
            return _same_bytes(a, b)  # what a save runs on each candidate

        tries: list[tuple[str, Callable[[], object]]] = [
            ("byte comparison with the page-cached stored bytes (satchel)", compare),
            (
                "xxh3-128 (shares xxh3-64's accumulators: not independent)",
                lambda: xxhash.xxh3_128_hexdigest(a),
            ),
            ("crc32 (zlib)", lambda: zlib.crc32(a)),
            ("sha1", lambda: hashlib.sha1(a).digest()),
            ("blake2b", lambda: hashlib.blake2b(a).digest()),
        ]
        out = []
        for name, fn in tries:
            fn()  # warm
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out.append((name, min(times)))
    path.unlink()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="satchel-incremental-", dir=args.workdir))
    warn_if_memory_backed(work)
    try:
        model, opt = fine_tuning_state(args.size_mib * MIB)
        state_bytes = sum(t.nbytes for t in model.values()) + sum(
            t.nbytes for s in opt["state"].values() for t in s.values()
        )
        frozen = sum(t.nbytes for k, t in model.items() if "lora" not in k)
        log(f"state {state_bytes / MIB:.0f} MiB, frozen {100 * frozen / state_bytes:.1f}%")
        runs = cases(work, model, opt)
        load0 = os.getloadavg()[0]
        for step in range(args.steps):
            train_step(model, opt, step)
            order = runs[step % len(runs) :] + runs[: step % len(runs)]
            for case in order:
                case.run(step)
            prune(work, step)
            log(f"step {step} done")
        load1 = os.getloadavg()[0]
        costs = confirm_costs(work)
        report(runs, state_bytes, frozen, args, (load0, load1), costs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(  # noqa: PLR0917 - one printer for the run's results
    runs: list[Case],
    state: int,
    frozen: int,
    args: argparse.Namespace,
    load: tuple[float, float],
    costs: list[tuple[str, float]],
    work: Path,
) -> None:
    print("## Incremental checkpoints (a fine-tuning run)\n")
    print(
        f"State {state / MIB:.0f} MiB: a frozen fp32 backbone ({100 * frozen / state:.1f}% of "
        "the bytes) and a rank-8 adapter on every attention projection with its Adam state; "
        f"{args.steps} steps, each changing the adapter and its optimizer state, saved by every "
        "case (interleaved, order rotated), durably. `later` is the median over steps 1 on. "
        f"Load average {load[0]:.1f} before, {load[1]:.1f} after.\n"
    )
    print(
        "| case | first save (s) | later saves (s) | later vs full satchel | first adds (MiB) "
        "| later add (MiB) | later add / state |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    full = statistics.median(runs[1].seconds[1:])
    for c in runs:
        later_s = statistics.median(c.seconds[1:])
        later_b = statistics.median(c.added[1:])
        print(
            f"| {c.name} | {c.seconds[0]:.3f} | {later_s:.3f} | {later_s / full:.2f}x "
            f"| {c.added[0] / MIB:.1f} | {later_b / MIB:.2f} | {100 * later_b / state:.2f}% |"
        )
    print(
        "\nConfirming a candidate (same length and xxh3-64) before reusing it, 256 MiB, "
        "fastest of 3:\n"
    )
    print("| how | ms | GB/s |")
    print("|---|---:|---:|")
    for name, s in costs:
        print(f"| {name} | {1000 * s:.0f} | {256 * MIB / s / 1e9:.1f} |")
    print()
    for k, v in machine_info(work).items():
        print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
