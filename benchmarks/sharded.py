"""Sharded checkpoints: satchel against huggingface_hub + safetensors, and against one file.

Usage: python benchmarks/sharded.py [--size-gib 2.0] [--shards 4] [--reps 5] [--workdir DIR]

One run, on one ~2 GiB transformer-shaped fp32 state (``workloads.transformer_state``), split
at ``max_shard_size`` = state / ``--shards`` (~500 MiB at 2 GiB: 4-5 shards, as both writers
pack tensors greedily and never split one):

- save: ``satchel.save(folder, max_shard_size=...)`` (fsyncs every shard, the index and the
  folder itself) against ``huggingface_hub.save_torch_state_dict`` followed by our fsync of each
  file and the folder, and against the single-file saves of satchel and safetensors;
- cold load: ``satchel.load(folder)`` against ``safetensors.torch.load_file`` of every shard
  (what transformers and huggingface_hub call per shard) and against ``satchel.load(file)``.
  Both map the files (safetensors 0.8 ``load_file`` returns tensors over a private mapping), and
  ``satchel.load`` with ``verify=True`` also reads every byte to check it: each load is timed
  twice, as the plain call and with one byte of every page of every tensor read ("touched"),
  so the touched rows compare the same work.

Targets (same run, medians): no slower than the peers; within 1.1x of the single-file figures.
Prints a markdown section for docs/benchmarks.md (``make bench`` appends it); progress goes to
stderr. Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import Case, Limits, Samples, evict, fsync_dir, fsync_file, run_rounds, touch
from peers import LIB_LOADERS, SATCHEL_UNVERIFIED, SATCHEL_VERIFIED, SUFFIX, Loader, satchel, saver
from report import ST_LOAD, ST_SAVE, fmt_bytes, fmt_samples, fmt_time
from run import machine_info, warn_if_memory_backed
from workloads import GIB, Payload, transformer_state

SAVE_SHARDED = "satchel.save(folder, max_shard_size) (fsyncs itself)"
SAVE_HUB = "huggingface_hub save_torch_state_dict + fsync"
SAVE_ONE = "satchel.save(file) (fsyncs itself)"
LOAD_SHARDED = "satchel.load(folder)"
LOAD_SHARDED_LAZY = "satchel.load(folder, verify=False)"
LOAD_ST = "safetensors load_file of every shard"
LOAD_ONE = "satchel.load(file)"
LOAD_ONE_LAZY = "satchel.load(file, verify=False)"
TOUCHED = ", every page touched"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Layout:
    """Where each variant lives: two shard folders and two single files."""

    root: Path
    limit: int  # max_shard_size in bytes, the same for satchel and huggingface_hub

    @property
    def sharded(self) -> Path:
        return self.root / "satchel-shards"

    @property
    def hub(self) -> Path:
        return self.root / "hub-shards"

    def single(self, kind: str) -> Path:
        return self.root / f"single{SUFFIX[kind]}"


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def clear(path: Path) -> None:
    """Remove the previous copy and flush the deletion, untimed (see `remove_and_settle`)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    os.sync()


def evict_all(path: Path) -> None:
    for p in files_in(path) if path.is_dir() else [path]:
        evict(p)


def save_sharded(p: Payload, folder: Path, limit: int) -> None:
    satchel().save(p.state, folder, max_shard_size=limit)  # fsyncs shards, index and folder


def save_hub(p: Payload, folder: Path, limit: int) -> None:
    # It needs the folder and writes without fsync; made as durable as satchel's save: the new
    # folder's entry, every file, the folder's entries.
    folder.mkdir()
    huggingface_hub.save_torch_state_dict(p.state, folder, max_shard_size=limit)
    for f in files_in(folder):
        fsync_file(f)
    fsync_dir(folder.parent)


def load_shards_st(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in files_in(folder):
        if f.suffix == ".safetensors":
            out.update(safetensors.torch.load_file(f))
    return out


def _lib_loader(label: str) -> Loader:
    return next(loader for loader in LIB_LOADERS if loader.label == label)


def save_cases(p: Payload, lay: Layout) -> list[Case]:
    one, st = saver("satchel").save, saver("safetensors").save
    calls: list[tuple[str, Path, Callable[[Payload, Path], None]]] = [
        (SAVE_SHARDED, lay.sharded, lambda p, path: save_sharded(p, path, lay.limit)),
        (SAVE_HUB, lay.hub, lambda p, path: save_hub(p, path, lay.limit)),
        (SAVE_ONE, lay.single("satchel"), one),
        (ST_SAVE, lay.single("safetensors"), st),
    ]
    return [Case(label, _saving(save, p, path), _clearer(path)) for label, path, save in calls]


def _saving(save: Callable[[Payload, Path], None], p: Payload, path: Path) -> Callable[[], None]:
    return lambda: save(p, path)


def _clearer(path: Path) -> Callable[[], None]:
    return lambda: clear(path)


def load_cases(lay: Layout) -> list[Case]:
    verified = _lib_loader(SATCHEL_VERIFIED).load
    lazy = _lib_loader(SATCHEL_UNVERIFIED).load
    calls: list[tuple[str, Path, Callable[[Path], object]]] = [
        (LOAD_SHARDED, lay.sharded, verified),
        (LOAD_SHARDED_LAZY, lay.sharded, lazy),
        (LOAD_ST, lay.hub, load_shards_st),
        (LOAD_ONE, lay.single("satchel"), verified),
        (LOAD_ONE_LAZY, lay.single("satchel"), lazy),
        (ST_LOAD + " (one file)", lay.single("safetensors"), safetensors.torch.load_file),
    ]
    cases = []
    for label, path, load in calls:
        cases.append(Case(label + TOUCHED, _touched(load, path), _evicter(path)))
        cases.append(Case(label, _plain(load, path), _evicter(path)))
    return cases


def _touched(load: Callable[[Path], object], path: Path) -> Callable[[], object]:
    return lambda: touch(load(path))


def _plain(load: Callable[[Path], object], path: Path) -> Callable[[], object]:
    return lambda: load(path)


def _evicter(path: Path) -> Callable[[], None]:
    return lambda: evict_all(path)


def check_loads(p: Payload, lay: Layout) -> None:
    """Untimed: the timed loads return exactly the saved tensors."""
    loads: list[tuple[str, Callable[[], dict[str, torch.Tensor]]]] = [
        (LOAD_SHARDED, lambda: satchel().load(lay.sharded)),
        (LOAD_ST, lambda: load_shards_st(lay.hub)),
        (LOAD_ONE, lambda: satchel().load(lay.single("satchel"))),
    ]
    for label, load in loads:
        got = load()
        if got.keys() != p.state.keys():
            raise AssertionError(f"{label}: other tensor names than saved")
        for name, tensor in p.state.items():
            if not torch.equal(got[name], tensor):
                raise AssertionError(f"{label}: {name} differs from what was saved")
        del got


@dataclass(frozen=True)
class Target:
    label: str
    ours: str
    reference: str
    limit: float


TARGETS = [
    Target("save+fsync vs huggingface_hub", SAVE_SHARDED, SAVE_HUB, 1.00),
    Target("cold load vs safetensors per shard", LOAD_SHARDED + TOUCHED, LOAD_ST + TOUCHED, 1.00),
    Target("lazy load (verify=False) vs safetensors per shard", LOAD_SHARDED_LAZY, LOAD_ST, 1.00),
    Target("save+fsync vs satchel, one file", SAVE_SHARDED, SAVE_ONE, 1.10),
    Target("cold load vs satchel, one file", LOAD_SHARDED + TOUCHED, LOAD_ONE + TOUCHED, 1.10),
    Target("cold load (plain call) vs one file", LOAD_SHARDED, LOAD_ONE, 1.10),
    Target("lazy load (verify=False) vs one file", LOAD_SHARDED_LAZY, LOAD_ONE_LAZY, 1.10),
]


def _rows(results: dict[str, Samples], nbytes: int) -> list[str]:
    lines = ["| Call | Median | Best | GiB/s (median) |", "|---|---:|---:|---:|"]
    for label, s in results.items():
        if not s.ok:
            lines.append(f"| `{label}` | failed: {s.error} | | |")
            continue
        lines.append(
            f"| `{label}` | {fmt_samples(s)} | {fmt_time(s.best)} | {nbytes / GIB / s.median:.2f} |"
        )
    return lines


def _verdicts(results: dict[str, Samples]) -> list[str]:
    lines = [
        "| Target | satchel | Reference | Ratio | Limit | Result | Best-of ratio |",
        "|---|---:|---|---:|---:|:---:|---:|",
    ]
    for t in TARGETS:
        ours, ref = results.get(t.ours), results.get(t.reference)
        if ours is None or ref is None or not (ours.ok and ref.ok):
            lines.append(f"| {t.label} | — | `{t.reference}` | — | ≤ {t.limit:.2f}x | n/a | — |")
            continue
        ratio = ours.median / ref.median
        verdict = "**PASS**" if ratio <= t.limit else "**MISS**"
        lines.append(
            f"| {t.label} | {fmt_time(ours.median)} | {fmt_time(ref.median)} (`{t.reference}`)"
            f" | {ratio:.2f}x | ≤ {t.limit:.2f}x | {verdict} | {ours.best / ref.best:.2f}x |"
        )
    return lines


@dataclass(frozen=True)
class Run:
    """One run's figures and what the report says about the setting."""

    payload: Payload
    limit: int
    shards: dict[str, int]  # how many shards each writer made
    saves: dict[str, Samples]
    loads: dict[str, Samples]
    meta: dict[str, str]


def markdown(r: Run) -> str:
    """The docs/benchmarks.md section for one run."""
    p, meta, shards = r.payload, r.meta, r.shards
    size = fmt_bytes(p.nbytes)
    head = [
        f"## Sharded checkpoints ({size}, `benchmarks/sharded.py`)",
        "",
        f"Command: `{meta['command']}`. {size} transformer state ({p.count} fp32 tensors),"
        f" `max_shard_size={r.limit}` ({fmt_bytes(r.limit)}): satchel wrote"
        f" {shards['satchel']} shards, huggingface_hub {shards['hub']}. Medians of"
        f" {meta['reps']} runs, round-robin, after one untimed warm-up round; before each save"
        " the previous copy is deleted and the deletion synced, before each load every file is"
        " evicted from the page cache. Load average (1, 5, 15 min): "
        f"{meta['load_before']} before, {meta['load_after']} after. Machine: {meta['cpu']};"
        f" disk {meta['disk']}; {meta['satchel']}.",
        "",
        "Saves end with every file and the folder fsynced: satchel does it itself (each shard"
        " atomically, then the index as the commit); huggingface_hub's `save_torch_state_dict`"
        " does not, so our fsync of each file and the folder follows it. Loads: both map the"
        " files (safetensors 0.8 `load_file` returns tensors over a private mapping);"
        " `satchel.load` with `verify=True` (the default) also reads every byte once to check"
        " its xxh3, `verify=False` only maps. Rows marked *every page touched* read one byte of"
        " every 4 KiB page of every returned tensor inside the timing, so every row brings all"
        " data in; plain rows time the call alone.",
    ]
    return "\n".join(
        [
            *head,
            "",
            "### Save + fsync",
            "",
            *_rows(r.saves, p.nbytes),
            "",
            "### Cold load",
            "",
            *_rows(r.loads, p.nbytes),
            "",
            "### Targets (same-run ratios, medians)",
            "",
            *_verdicts(r.saves | r.loads),
            "",
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=2.0, help="state size (default 2.0)")
    ap.add_argument("--shards", type=int, default=4, help="max_shard_size = state / this")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per case (default 5)")
    ap.add_argument("--workdir", type=Path, help="where the files go; a real disk, not tmpfs")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if os.getloadavg()[0] > 0.5:
        log(f"WARNING: load average {load_before} before starting; results will be noisy")
    payload = transformer_state(int(args.size_gib * GIB))
    limit = payload.nbytes // args.shards
    log(f"built {payload.count} tensors, {payload.nbytes / GIB:.2f} GiB; shards of <= {limit}")
    limits = Limits(budget=60.0, abort=180.0)
    with tempfile.TemporaryDirectory(prefix="satchel-bench-sharded-", dir=args.workdir) as name:
        lay = Layout(Path(name), limit)
        warn_if_memory_backed(lay.root)
        machine = machine_info(lay.root)
        saves = run_rounds(save_cases(payload, lay), args.reps, log, warmup=True, limits=limits)
        check_loads(payload, lay)
        shards = {
            "satchel": sum(f.suffix == ".safetensors" for f in files_in(lay.sharded)),
            "hub": sum(f.suffix == ".safetensors" for f in files_in(lay.hub)),
        }
        loads = run_rounds(load_cases(lay), args.reps, log, warmup=True, limits=limits)
    meta = {
        "command": shlex.join(["python", "benchmarks/sharded.py", *argv]),
        "reps": str(args.reps),
        "load_before": load_before,
        "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "cpu": f"{machine['CPU']}, {machine['Cores']}",
        "disk": machine["Disk under test"],
        "satchel": f"satchel {machine['satchel measured']}",
    }
    print(markdown(Run(payload, limit, shards, saves, loads, meta)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
