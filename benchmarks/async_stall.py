"""How long an async CheckpointManager.save stalls the training loop (issue: async saves).

Measures, in one run, on the same ~1 GiB transformer-shaped fp32 state:

- ``copy``: a plain in-memory copy of those bytes (``copy_`` of every tensor into buffers
  allocated beforehand), the floor for any snapshot that lets the loop change its tensors
  right away; ``clone`` (copying into fresh memory) is reported beside it;
- ``async stall``: the time ``mgr.save(step, blocking=False, model=...)`` takes to return, in
  steady state (after a first async save whose snapshot buffers are then reused), and the
  first save's stall, which allocates them;
- ``blocking``: a blocking ``mgr.save`` (write, fsync, commit record, rename).

Targets: stall within 1.5x of the copy, and at least 5x shorter than the blocking save. Prints
a markdown section; ``benchmarks/run.py`` includes it in docs/benchmarks.md.

    python benchmarks/async_stall.py [--size-gib 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import satchel

sys.path.insert(0, str(Path(__file__).parent))
from workloads import GIB, transformer_state


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def measure(size_gib: float, repeat: int) -> dict[str, float]:
    """Median seconds for the plain copy, the async stall, the async total, the blocking save."""
    state = transformer_state(int(size_gib * GIB)).state
    copies, clones, stalls, totals, blocking = [], [], [], [], []
    buffers = {k: torch.empty_like(v) for k, v in state.items()}
    for v in buffers.values():
        v.zero_()  # touch every page once, as the reused snapshot buffers are
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent.parent) as tmp:
        mgr = satchel.CheckpointManager(Path(tmp) / "run", keep_last=1)
        t = time.perf_counter()
        mgr.save(0, blocking=False, model=state)
        first = time.perf_counter() - t
        mgr.wait()
        for i in range(1, repeat + 1):
            t = time.perf_counter()
            for k, v in state.items():
                buffers[k].copy_(v)
            copies.append(time.perf_counter() - t)
            t = time.perf_counter()
            cloned = {k: v.clone() for k, v in state.items()}
            clones.append(time.perf_counter() - t)
            del cloned
            t = time.perf_counter()
            mgr.save(2 * i, blocking=False, model=state)
            stalls.append(time.perf_counter() - t)
            mgr.wait()
            totals.append(time.perf_counter() - t)
            t = time.perf_counter()
            mgr.save(2 * i + 1, model=state)
            blocking.append(time.perf_counter() - t)
        mgr.close()
    return {
        "copy": _median(copies),
        "clone": _median(clones),
        "first_stall": first,
        "stall": _median(stalls),
        "async_total": _median(totals),
        "blocking": _median(blocking),
        "bytes": float(sum(v.numel() * v.element_size() for v in state.values())),
    }


def markdown(r: dict[str, float]) -> str:
    """The docs/benchmarks.md section for these figures."""
    stall_vs_copy = r["stall"] / r["copy"]
    blocking_vs_stall = r["blocking"] / r["stall"]
    ok1 = "**PASS**" if stall_vs_copy <= 1.5 else "**MISS**"
    ok2 = "**PASS**" if blocking_vs_stall >= 5 else "**MISS**"
    gib = r["bytes"] / 2**30
    return (
        f"## Async checkpoint saves ({gib:.2f} GiB state, `benchmarks/async_stall.py`)\n\n"
        "Time the training loop is blocked by `CheckpointManager.save(blocking=False)` (the host "
        "snapshot), against a plain copy of the same bytes and a blocking save, same run, "
        "medians. The manager keeps the last snapshot's buffers and copies into them, so only "
        "the first async save pays for fresh memory (page faults, slow on this VM).\n\n"
        "| Measure | Time |\n|---|---:|\n"
        f"| plain in-memory copy (`copy_` into buffers allocated before) | "
        f"{r['copy'] * 1e3:.0f} ms |\n"
        f"| copy into fresh memory (`clone` of every tensor) | {r['clone'] * 1e3:.0f} ms |\n"
        f"| async save: stall until `save()` returns (steady state) | {r['stall'] * 1e3:.0f} ms |\n"
        f"| async save: stall of the first save (allocates the snapshot) | "
        f"{r['first_stall'] * 1e3:.0f} ms |\n"
        f"| async save: until written and committed (`wait()`) | {r['async_total']:.2f} s |\n"
        f"| blocking save | {r['blocking']:.2f} s |\n\n"
        "| Target | Ratio | Limit | Result |\n|---|---:|---:|:---:|\n"
        f"| stall vs plain copy | {stall_vs_copy:.2f}x | ≤ 1.50x | {ok1} |\n"
        f"| blocking save vs stall | {blocking_vs_stall:.1f}x | ≥ 5x | {ok2} |\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(markdown(measure(args.size_gib, args.repeat)))


if __name__ == "__main__":
    main()
