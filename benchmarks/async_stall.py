"""How long an async CheckpointManager.save stalls the training loop: first save and later ones.

Every measurement runs in a fresh interpreter (one subprocess each, torch and NumPy states
interleaved), because what makes the first save slow is fresh memory: the pages its snapshot
touches for the first time. On the same ~1 GiB transformer-shaped fp32 state, as torch tensors
and as NumPy arrays:

- ``plain copy``: ``{k: v.clone()}`` / ``{k: np.copy(v)}`` timed in a fresh process, right after
  the state is built: the copy any snapshot that lets the loop go on must make, fresh pages
  included (and the copy satchel's first save made before it had staging memory of its own);
  ``warm copy``: the same copy again, into those now-faulted buffers (``copy_``/``copyto``);
- ``first stall``: the time the first ``mgr.save(step, blocking=False, ...)`` of a fresh process
  takes to return; ``later stalls``: the following async saves (each after ``wait()``), which
  copy into the previous snapshot's buffers; ``blocking``: one blocking save, for scale.

Targets: first stall within 1.5x of the plain copy; later stalls within 1.5x of the warm copy;
a blocking save at least 5x a later stall. Prints a markdown section for docs/benchmarks.md.

    python benchmarks/async_stall.py [--size-gib 1.0] [--repeat 3] [--later 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GIB = 1 << 30
KINDS = ("torch", "numpy")
ROOT = Path(__file__).parent.parent


def _faults() -> int | None:
    """Minor page faults of this process so far (Linux), to show where the time goes."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[7])  # minflt: field 10 of proc(5), the 8th after the command name


def _state(kind: str, size_gib: float) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np

    from workloads import transformer_shapes

    shapes = transformer_shapes(int(size_gib * GIB))
    if kind == "torch":
        import torch

        gen = torch.Generator().manual_seed(0)
        return {
            k: torch.empty(s, dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
            for k, s in shapes.items()
        }
    # Arrays NumPy allocated itself, as a JAX/NumPy training loop holds them.
    rng = np.random.default_rng(0)
    return {
        k: rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for k, s in shapes.items()
    }


def child_copy(kind: str, size_gib: float) -> dict[str, Any]:
    """In a fresh process: the plain copy into fresh memory, then the same copy again."""
    import numpy as np

    state = _state(kind, size_gib)
    gc.collect()
    f0, t = _faults(), time.perf_counter()
    if kind == "torch":
        out = {k: v.clone() for k, v in state.items()}
    else:
        out = {k: np.copy(v) for k, v in state.items()}
    fresh = time.perf_counter() - t
    f1 = _faults()
    t = time.perf_counter()
    for k, v in state.items():
        if kind == "torch":
            out[k].copy_(v)
        else:
            np.copyto(out[k], v)
    warm = time.perf_counter() - t
    return {
        "plain_copy": fresh,
        "warm_copy": warm,
        "copy_faults": None if f0 is None or f1 is None else f1 - f0,
        "bytes": sum(int(v.nbytes) for v in out.values()),
    }


def child_save(kind: str, size_gib: float, later: int) -> dict[str, Any]:
    """In a fresh process: the first async save's stall, the later ones', a blocking save."""
    import satchel

    state = _state(kind, size_gib)
    gc.collect()
    stalls: list[float] = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        mgr = satchel.CheckpointManager(Path(tmp) / "run", keep_last=1)
        f0, t = _faults(), time.perf_counter()
        mgr.save(0, blocking=False, model=state)
        first = time.perf_counter() - t
        f1 = _faults()
        mgr.wait()
        for step in range(1, later + 1):
            t = time.perf_counter()
            mgr.save(step, blocking=False, model=state)
            stalls.append(time.perf_counter() - t)
            mgr.wait()
        t = time.perf_counter()
        mgr.save(later + 1, model=state)
        blocking = time.perf_counter() - t
        mgr.close()
    return {
        "first_stall": first,
        "first_faults": None if f0 is None or f1 is None else f1 - f0,
        "later_stalls": stalls,
        "blocking": blocking,
    }


def _run_child(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(size_gib: float, repeat: int, later: int) -> dict[str, dict[str, Any]]:
    """Per kind: medians over ``repeat`` fresh processes of each figure (seconds)."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    size = f"{size_gib}"
    for _ in range(repeat):
        for kind in KINDS:  # interleaved, so a noisy minute hits every row alike
            copy = _run_child(["copy", kind, size])
            save = _run_child(["save", kind, size, str(later)])
            runs[kind].append({**copy, **save})
    result: dict[str, dict[str, Any]] = {}
    for kind, rs in runs.items():
        med = statistics.median
        faults = [r["first_faults"] for r in rs if r["first_faults"] is not None]
        copy_faults = [r["copy_faults"] for r in rs if r["copy_faults"] is not None]
        result[kind] = {
            "plain_copy": med(r["plain_copy"] for r in rs),
            "warm_copy": med(r["warm_copy"] for r in rs),
            "first_stall": med(r["first_stall"] for r in rs),
            "first_stalls": [r["first_stall"] for r in rs],
            "plain_copies": [r["plain_copy"] for r in rs],
            "later_stall": med(s for r in rs for s in r["later_stalls"]),
            "blocking": med(r["blocking"] for r in rs),
            "first_faults": med(faults) if faults else None,
            "copy_faults": med(copy_faults) if copy_faults else None,
            "bytes": rs[0]["bytes"],
        }
    return result


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f} ms"


def _verdict(ratio: float, ok: bool) -> str:
    return f"{ratio:.2f}x | {'**PASS**' if ok else '**MISS**'}"


def markdown(r: dict[str, dict[str, Any]], *, repeat: int, later: int) -> str:
    """The docs/benchmarks.md section for these figures."""
    gib = r[KINDS[0]]["bytes"] / GIB
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    lines = [
        f"## Async checkpoint saves: first and later stalls ({gib:.2f} GiB state, "
        "`benchmarks/async_stall.py`)\n",
        f"Command: `python benchmarks/async_stall.py --repeat {repeat} --later {later}`. Every "
        "figure comes from a fresh interpreter (one subprocess per measurement, torch and "
        "NumPy interleaved); medians over the processes. *Plain copy*: `{k: v.clone()}` "
        "(torch) or `{k: np.copy(v)}` (NumPy) right after the state is built, fresh pages "
        "included; *warm copy*: the same copy again into those buffers. *First stall*: time "
        "until the first `CheckpointManager.save(blocking=False)` of the process returns; "
        "*later stalls*: the following async saves, which copy into the previous snapshot's "
        f"buffers. Page faults: minor faults during the call. Load average at the end: {load}.\n",
        "| State | Plain copy (fresh process) | First stall | Later stalls | Warm copy "
        "| Blocking save | Faults: plain copy / first save |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        x = r[kind]
        lines.append(
            f"| {kind} | {_ms(x['plain_copy'])} | {_ms(x['first_stall'])} | "
            f"{_ms(x['later_stall'])} | {_ms(x['warm_copy'])} | {x['blocking']:.2f} s | "
            f"{x['copy_faults']} / {x['first_faults']} |"
        )
    lines += ["", "| State | Target | Ratio | Result |", "|---|---|---:|:---:|"]
    for kind in KINDS:
        x = r[kind]
        first = x["first_stall"] / x["plain_copy"]
        steady = x["later_stall"] / x["warm_copy"]
        blocking = x["blocking"] / x["later_stall"]
        lines += [
            f"| {kind} | first stall / plain copy ≤ 1.50x | {_verdict(first, first <= 1.5)} |",
            f"| {kind} | later stalls / warm copy ≤ 1.50x | {_verdict(steady, steady <= 1.5)} |",
            f"| {kind} | blocking save / later stall ≥ 5x | {_verdict(blocking, blocking >= 5)} |",
        ]
    raw = "; ".join(
        f"{k}: plain copy {', '.join(_ms(s) for s in r[k]['plain_copies'])}, first stall "
        f"{', '.join(_ms(s) for s in r[k]['first_stalls'])}"
        for k in KINDS
    )
    lines += ["", f"Per process: {raw}.", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, kind, size = sys.argv[2], sys.argv[3], float(sys.argv[4])
        res = child_copy(kind, size) if what == "copy" else child_save(kind, size, int(sys.argv[5]))
        print(json.dumps(res))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per kind and row")
    ap.add_argument("--later", type=int, default=3, help="async saves after the first, each")
    args = ap.parse_args()
    print(
        markdown(
            measure(args.size_gib, args.repeat, args.later), repeat=args.repeat, later=args.later
        )
    )


if __name__ == "__main__":
    main()
