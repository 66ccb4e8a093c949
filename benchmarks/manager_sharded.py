"""CheckpointManager with sharded items: one worker against two (docs/checkpoints.md).

Usage: python benchmarks/manager_sharded.py [--size-gib 1.0] [--reps 5] [--read-reps 3]
                                           [--workdir DIR]

One ~1 GiB transformer-shaped fp32 state (``workloads.transformer_state``) saved as the item
``model`` of a step, as one file and as about 4 and 8 shards (``max_shard_size`` = state / n;
greedy packing may need one more), each
sharded layout with 1 and 2 workers (``satchel._checkpoint.workers``: both ``WRITE_WORKERS``, used
by the save, and ``CHECK_WORKERS``, used by the check, are set to that number):

- save: ``mgr.save(step, model=state)``, which fsyncs every file and folder; the previous copy
  is deleted and the deletion flushed (``os.sync``) untimed before each save;
- check: ``root.check(step)`` with the files evicted from the page cache first: every file's
  size and whole-file xxh3-64 against the commit record, read from the disk;
- verified restore: ``root.restore()`` cold (files evicted), every page of every tensor read:
  the check above, then the items loaded with their per-tensor checksums.

Each round saves once and checks and restores ``--read-reps`` times (reads vary more).

Cases run interleaved (round robin, ``--reps`` rounds) so a change in the machine's load hits
every case alike; the load average is printed before and after. Prints a markdown table
(medians, and the fastest run) on stdout; nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import satchel
from measure import evict
from run import machine_info, warn_if_memory_backed
from satchel._checkpoint import workers
from satchel._plan import plan_save
from satchel._shards.writer import split_stored
from workloads import GIB, transformer_state


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def files_of(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def cold(folder: Path, fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes with every file of ``folder`` evicted from the page cache first.

    The previous restore's arrays are collected first: a page a live mapping holds is not
    evicted.
    """
    gc.collect()
    for f in files_of(folder):
        evict(f)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def touch_all(value: object) -> float:
    """Read one value per page of every array (the restore maps, so this reads the disk)."""
    total = 0.0
    if isinstance(value, dict):
        for v in value.values():
            total += touch_all(v)
    elif hasattr(value, "numpy") or isinstance(value, np.ndarray):
        a = np.asarray(value).reshape(-1).view(np.uint8)
        total += float(a[::4096].sum())
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--read-reps", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="satchel-mgr-shards-", dir=args.workdir))
    warn_if_memory_backed(work)
    state = transformer_state(int(args.size_gib * GIB)).state
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    # (label, max_shard_size, workers)
    layouts: list[tuple[str, int | None, int]] = [("one file", None, 1)]
    plan = plan_save(state)
    for n in (4, 8):
        limit = -(-nbytes // n)
        count = len(split_stored(plan, limit))  # greedy packing: n or a few more
        for w in (1, 2):
            layouts.append((f"{count} shards, {w} worker{'s' * (w > 1)}", limit, w))
    times: dict[tuple[str, str], list[float]] = {}
    load_before = os.getloadavg()
    defaults = workers.WRITE_WORKERS, workers.CHECK_WORKERS
    try:
        for rep in range(args.reps):
            for label, limit, n_workers in layouts:
                workers.WRITE_WORKERS = workers.CHECK_WORKERS = n_workers
                root = work / label.replace(" ", "_").replace(",", "")
                shutil.rmtree(root, ignore_errors=True)
                os.sync()
                with satchel.CheckpointManager(root, max_shard_size=limit) as mgr:
                    t0 = time.perf_counter()
                    mgr.save(1, model=state)
                    record("save", label, time.perf_counter() - t0, times)
                view = satchel.CheckpointRoot(root)
                step = root / "step_00000001"
                shards = len(files_of(step / "model")) - 1 if (step / "model").is_dir() else 0
                assert shards == (0 if limit is None else int(label.split()[0])), (label, shards)
                for _ in range(args.read_reps):
                    check_s = cold(step, lambda v=view: v.check(1))
                    restore_s = cold(step, lambda v=view: touch_all(v.restore().items))
                    record("check", label, check_s, times)
                    record("restore", label, restore_s, times)
                log(f"round {rep + 1}/{args.reps} {label}: load {os.getloadavg()[0]:.2f}")
    finally:
        workers.WRITE_WORKERS, workers.CHECK_WORKERS = defaults
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"\n### CheckpointManager, sharded items: 1 worker against 2 ({nbytes / GIB:.2f} GiB)\n")
    for k, v in machine_info(Path(args.workdir or tempfile.gettempdir())).items():
        print(f"- {k}: {v}")
    print(
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)};"
        f" after: {', '.join(f'{x:.2f}' for x in load_after)}"
    )
    print(
        f"- {args.reps} interleaved rounds ({args.read_reps} checks and restores in each);"
        " median (fastest) seconds\n"
    )
    print("| layout | save + fsync | check, cold | verified restore, cold |")
    print("|---|---|---|---|")
    for label, _, _ in layouts:
        cells = [
            f"{statistics.median(times[(op, label)]):.2f} ({min(times[(op, label)]):.2f})"
            for op in ("save", "check", "restore")
        ]
        print(f"| {label} | {' | '.join(cells)} |")


def record(op: str, label: str, seconds: float, times: dict[tuple[str, str], list[float]]) -> None:
    times.setdefault((op, label), []).append(seconds)


if __name__ == "__main__":
    main()
