"""Distributed checkpoints: satchel against torch.distributed.checkpoint (DCP), 2 and 4 ranks.

Usage: python benchmarks/distributed.py [--size-mib 1024] [--reps 5] [--workdir DIR]

One run, on one model-like fp32 state (``workloads.transformer_shapes``: embedding, GPT blocks,
every tensor a DTensor sharded ``Shard(0)`` over the ranks) plus a few plain tensors every rank
holds whole (step, RNG state, loss scale, position ids). Real gloo process groups on CPU, one
process per rank, as tests/dist_worker.py starts them. Three jobs, in this order:

1. 2 ranks: save, load (warm and cold page cache), async-save stall;
2. 4 ranks: the same, plus reshard-load of the checkpoints job 1 left (2 -> 4);
3. 2 ranks: reshard-load of the checkpoints job 2 left (4 -> 2).

Each operation is timed from the first rank's start to the last rank's end: a barrier, every
rank reads the monotonic clock (one clock for the whole machine), runs the call, reads it
again, and the times are gathered; the figure is max(end) - min(start). Peers alternate (the
order flips every round) after one untimed warm-up round. Calls:

- save: ``satchel._dist.ranks.write_item`` (every rank writes its pieces atomically, fsyncs file
  and folder; rank 0 the layout) against ``dcp.save(state, checkpoint_id=folder)``, whose
  FileSystemWriter fsyncs every file (``sync_files=True``, the default) but not the folder,
  so rank 0 fsyncs the folder after it. Before each save the previous copy is deleted and the
  deletion synced; the empty folder is made beforehand for both;
- load: ``read_into`` (after parsing layout.json) against ``dcp.load``, both in place into
  DTensors allocated and faulted in once; *warm*: the files were just written or read, so their
  pages are cached; *cold*: every file of the checkpoint is evicted from the page cache first
  (``posix_fadvise(DONTNEED)``; checked with fincore). satchel checks each piece's xxh3 as it
  reads it; DCP checks nothing;
- async-save stall: ``dcp.async_save`` (default thread executor and stager) until it returns
  its future, then (untimed) until the future is done; satchel has no distributed async save
  yet (``satchel_async_save`` below is the one function to fill in).

Target: satchel no slower than DCP on any row (same run, medians). Prints a markdown section
for docs/benchmarks.md (``make bench`` appends it); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, Shard, init_device_mesh
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

import satchel
from satchel._dist.layout import LAYOUT_FILE, parse_layout
from satchel._dist.ranks import read_into, write_item

sys.path.insert(0, str(Path(__file__).parent))
from measure import evict, fsync_dir
from report import fmt_bytes, fmt_time
from run import machine_info, warn_if_memory_backed
from workloads import FP32, transformer_shapes

MIB = 1 << 20
PEERS = ("satchel", "dcp")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the state: deterministic values, so any rank can check any box after a reshard ----


def pattern(
    offsets: tuple[int, ...], sizes: tuple[int, ...], shape: tuple[int, ...]
) -> torch.Tensor:
    """The values of the box ``offsets``/``sizes`` of a tensor of global ``shape`` (only rows
    are boxed: Shard(0)); a function of the global element index, cheap, not compressible."""
    cols = math.prod(shape[1:])
    first = offsets[0] * cols if shape else 0
    count = sizes[0] * cols if shape else 1
    idx = torch.arange(first, first + count, dtype=torch.int64)
    values = ((idx * 2654435761) % 65521).to(torch.float32) / 65521 - 0.5
    return values.reshape(sizes)


def plain_shapes() -> dict[str, tuple[tuple[int, ...], str]]:
    """The plain tensors every rank holds whole, as a training loop's extras are."""
    return {
        "step": ((), "int64"),
        "rng": ((5056,), "uint8"),
        "loss_scale": ((), "float32"),
        "position_ids": ((8192,), "int64"),
    }


def build_state(mesh: Any, size: int, *, fill: bool) -> dict[str, Any]:
    """This rank's part of the state: every model tensor a DTensor Shard(0), built from its own
    rows only (no rank ever holds a whole tensor); ``fill=False`` gives zeroed load targets."""
    model = {}
    for name, shape in transformer_shapes(size).items():
        sizes, offsets = compute_local_shape_and_global_offset(shape, mesh, [Shard(0)])
        local = pattern(tuple(offsets), tuple(sizes), shape) if fill else torch.zeros(sizes)
        stride = torch.empty(shape, device="meta").stride()
        model[name] = DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=torch.Size(shape), stride=stride
        )
    extra = {}
    for name, (shape, dtype) in plain_shapes().items():
        x = pattern((0,) * len(shape), shape, shape) * 1000 if fill else torch.zeros(shape)
        if dtype != "float32":  # through int64: the narrowing to uint8 wraps, defined
            x = x.round().to(torch.int64)
        extra[name] = x.to(getattr(torch, dtype))
    return {"model": model, "train": extra}


def check(targets: dict[str, Any], size: int, mesh: Any) -> None:
    """Every rank's boxes hold exactly the saved values (raises AssertionError if not)."""
    want = build_state(mesh, size, fill=True)
    for part in ("model", "train"):
        for name, x in targets[part].items():
            got, ref = _local(x), _local(want[part][name])
            assert got.dtype == ref.dtype and bool((got == ref).all()), f"{part}.{name}"


def _local(x: torch.Tensor) -> torch.Tensor:
    return x.to_local() if isinstance(x, DTensor) else x


def zero(targets: dict[str, Any]) -> None:
    for part in targets.values():
        for x in part.values():
            _local(x).zero_()


# ---- the calls under test ----


def satchel_save(state: dict[str, Any], folder: Path) -> None:
    write_item(state, folder, group=dist.group.WORLD)


def dcp_save(state: dict[str, Any], folder: Path) -> None:
    dcp.save(state, checkpoint_id=folder)  # fsyncs each file and .metadata, not the folder
    if dist.get_rank() == 0:
        fsync_dir(folder)  # as durable as satchel's save: the new names are on disk too


def satchel_load(targets: dict[str, Any], folder: Path) -> None:
    layout = parse_layout((folder / LAYOUT_FILE).read_bytes(), where=str(folder))
    read_into(targets, layout, folder)


def dcp_load(targets: dict[str, Any], folder: Path) -> None:
    dcp.load(targets, checkpoint_id=folder)


def satchel_async_save(state: dict[str, Any], folder: Path) -> Future[Any]:
    """Start a distributed save and return once the loop may change ``state`` again; the future
    is done when the checkpoint is durable (the manager's ``save(blocking=False)``)."""
    mgr = satchel.CheckpointManager(folder, process_group=dist.group.WORLD)
    mgr.save(1, model=state, blocking=False)
    done: Future[Any] = Future()

    def finish() -> None:
        try:
            mgr.close()  # waits for the background write, agreement and commit
            done.set_result(None)
        except BaseException as e:
            done.set_exception(e)

    threading.Thread(target=finish).start()
    return done


def dcp_async_save(state: dict[str, Any], folder: Path) -> Future[Any]:
    return dcp.async_save(state, checkpoint_id=folder)


SAVE = {"satchel": satchel_save, "dcp": dcp_save}
LOAD = {"satchel": satchel_load, "dcp": dcp_load}
ASYNC = {"satchel": satchel_async_save, "dcp": dcp_async_save}


# ---- one rank of a job ----


@dataclass(frozen=True)
class Step:
    """One timed collective call; ``prepare`` runs untimed on every rank before it."""

    row: str
    peer: str
    run: Callable[[], object]
    prepare: Callable[[], None]
    durable: str | None = None  # an async save: the row for the time until its future is done


class Rank:
    """What one rank of a job holds: the group, the state, the load targets, the results."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
            rank=self.rank,
            world_size=self.world,
            timeout=timedelta(seconds=900),
        )
        self.mesh = init_device_mesh("cpu", (self.world,))
        self.size = int(spec["size"])
        self.root = Path(spec["root"])
        self.state = build_state(self.mesh, self.size, fill=True)
        self.targets = build_state(self.mesh, self.size, fill=False)  # zeroed: faulted in
        self.results: dict[str, dict[str, Any]] = {}

    def log(self, message: str) -> None:
        if self.rank == 0:
            log(f"[{self.world} ranks] {message}")

    def on_zero(self, action: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if self.rank == 0:
                action()
            dist.barrier()

        return run

    def timed(self, step: Step) -> tuple[float, float] | None:
        """Seconds from the first rank's start to the last rank's end, and (for an async save)
        to the last rank's background write done; None if the peer has no such call (every
        rank learns it at once: the call raises on all of them)."""
        step.prepare()
        gc.collect()
        dist.barrier()
        start = time.monotonic()
        try:
            out = step.run()
        except NotImplementedError:
            return None
        end = done = time.monotonic()
        if isinstance(out, Future):
            out.result()  # the background save must finish before the next collective
            done = time.monotonic()
        spans: list[Any] = [None] * self.world
        dist.all_gather_object(spans, (start, end, done))
        first = min(s[0] for s in spans)
        return max(s[1] for s in spans) - first, max(s[2] for s in spans) - first

    def rounds(self, steps: list[Step], reps: int) -> None:
        """Every step ``reps`` times after one warm-up round; the order flips every round."""
        for rep in range(-1, reps):
            order = steps if rep % 2 == 0 else steps[::-1]
            for step in order:
                row = self.results.setdefault(step.row, {})
                if row.get(step.peer) == "not implemented yet":
                    continue
                took = self.timed(step)
                tag = "warm-up" if rep < 0 else f"{rep + 1}/{reps}"
                if took is None:
                    row[step.peer] = "not implemented yet"
                    if step.durable is not None:
                        self.results.setdefault(step.durable, {})[step.peer] = row[step.peer]
                    self.log(f"  [{tag}] {step.row}, {step.peer}: not implemented yet")
                    continue
                self.log(f"  [{tag}] {step.row}, {step.peer}: {took[0]:.3f} s")
                if rep >= 0:
                    row.setdefault(step.peer, []).append(took[0])
                    if step.durable is not None:
                        total = self.results.setdefault(step.durable, {})
                        total.setdefault(step.peer, []).append(took[1])

    def folder(self, world: int, peer: str, what: str = "ckpt") -> Path:
        return self.root / f"w{world}-{peer}-{what}"

    def fresh(self, folder: Path) -> Callable[[], None]:
        def make() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            os.sync()  # the deletion is flushed before the timed save, not during it

        return self.on_zero(make)

    def cold(self, folder: Path) -> Callable[[], None]:
        def drop() -> None:
            os.sync()
            for f in sorted(p for p in folder.rglob("*") if p.is_file()):
                evict(f)

        return self.on_zero(drop)

    def save_phase(self, reps: int) -> None:
        self.log("save")
        steps = []
        for peer in PEERS:
            folder = self.folder(self.world, peer)
            run = _bind(SAVE[peer], self.state, folder)
            steps.append(Step("save", peer, run, self.fresh(folder)))
        self.rounds(steps, reps)

    def load_phase(self, saved_on: int, reps: int) -> None:
        what = "load" if saved_on == self.world else f"reshard-load {saved_on}→{self.world}"
        self.log(what)
        for peer in PEERS:  # untimed: each peer restores exactly what was saved
            zero(self.targets)
            LOAD[peer](self.targets, self.folder(saved_on, peer))
            check(self.targets, self.size, self.mesh)
        dist.barrier()
        for temp, evicted in (("warm", False), ("cold", True)):
            steps = []
            for peer in PEERS:
                folder = self.folder(saved_on, peer)
                prepare = self.cold(folder) if evicted else dist.barrier
                run = _bind(LOAD[peer], self.targets, folder)
                steps.append(Step(f"{what}, {temp}", peer, run, prepare))
            self.rounds(steps, reps)

    def async_phase(self, reps: int) -> None:
        self.log("async-save stall")
        steps = []
        for peer in PEERS:
            folder = self.folder(self.world, peer, "async")
            run = _bind(ASYNC[peer], self.state, folder)
            durable = "async save until written (future done)"
            steps.append(Step("async-save stall", peer, run, self.fresh(folder), durable))
        self.rounds(steps, reps)


def _bind(call: Callable[[Any, Path], object], state: Any, folder: Path) -> Callable[[], object]:
    return lambda: call(state, folder)


def worker(spec: dict[str, Any]) -> None:
    me = Rank(spec)
    for phase in spec["phases"]:
        if phase == "save":
            me.save_phase(spec["reps"])
        elif phase == "async":
            me.async_phase(spec["reps"])
        else:  # "load:<world it was saved on>"
            me.load_phase(int(phase.split(":")[1]), spec["reps"])
    if me.rank == 0:
        Path(spec["out"]).write_text(json.dumps(me.results))
    dist.barrier()  # gloo aborts a rank that tears down while a peer still talks to it
    dist.destroy_process_group()


# ---- the driver ----


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_job(world: int, phases: list[str], root: Path, size: int, reps: int) -> dict[str, Any]:
    out = root / f"results-{world}-{len(list(root.glob('results-*')))}.json"
    spec = {"phases": phases, "root": str(root), "size": size, "reps": reps, "out": str(out)}
    port, procs = _port(), []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_PORT": str(port)}
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=sys.stderr))
    codes = [p.wait(timeout=3600) for p in procs]
    if any(codes):
        raise SystemExit(f"a {world}-rank job failed: exit codes {codes}")
    return dict(json.loads(out.read_text()))


def _median(values: object) -> float | None:
    return statistics.median(values) if isinstance(values, list) and values else None


def _cell(values: object) -> str:
    m = _median(values)
    return fmt_time(m) if m is not None else str(values or "—")


def markdown(jobs: list[tuple[int, dict[str, Any]]], meta: dict[str, str]) -> str:
    lines = [
        "## Distributed checkpoints (2 and 4 ranks)",
        "",
        f"Command: `{meta['command']}`. `benchmarks/distributed.py`: {meta['state']}, on gloo"
        " (CPU), one process per rank on this machine; torch threads per rank ="
        f" cores / ranks. Each figure is the median of {meta['reps']} runs (after one untimed"
        " warm-up round, peers alternating) of the time from the first rank's start to the last"
        " rank's end. satchel: `write_item` / `read_into` of `satchel._dist.ranks`; DCP:"
        f" `torch.distributed.checkpoint` {meta['torch']}. Saves end durable on both sides"
        " (DCP's FileSystemWriter fsyncs every file by default, `sync_files=True`; rank 0 then"
        " fsyncs the folder, which satchel does too); the previous copy is deleted and synced"
        " before each save. Loads are in place into preallocated DTensors; *warm*: the files are"
        " in the page cache (just written or read); *cold*: every file of the checkpoint is"
        " evicted first (`posix_fadvise(DONTNEED)`; the host of a virtual disk may still cache"
        " them). satchel checks every piece's xxh3 as it"
        " reads it; DCP checks nothing. Async-save stall: time until `dcp.async_save` returns"
        " its future (default thread executor and stager, which copies the state)."
        f" Load average (1, 5, 15 min): {meta['load_before']} before, {meta['load_after']}"
        f" after. Machine: {meta['cpu']}, {meta['cores']}, {meta['ram']} RAM; disk"
        f" {meta['disk']}; {meta['satchel']}.",
        "",
        "| Operation | Ranks | satchel | DCP | satchel / DCP | Target ≤ 1.00x | Best-of ratio |",
        "|---|---:|---:|---:|---:|:---:|---:|",
    ]
    for world, rows in jobs:
        for row, peers in rows.items():
            ours, ref = peers.get("satchel"), peers.get("dcp")
            mo, mr = _median(ours), _median(ref)
            if mo is not None and mr is not None and isinstance(ours, list) and ref:
                ratio = mo / mr
                verdict = "**PASS**" if ratio <= 1.0 else "**MISS**"
                best = f"{min(ours) / min(ref):.2f}x"
                cells = f"{ratio:.2f}x | {verdict} | {best}"
            else:
                cells = "— | n/a | —"
            lines.append(f"| {row} | {world} | {_cell(ours)} | {_cell(ref)} | {cells} |")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="whole state (default 1024)")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per case (default 5)")
    ap.add_argument("--workdir", type=Path, help="where the files go; a real disk, not tmpfs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if os.getloadavg()[0] > 0.5:
        log(f"WARNING: load average {load_before} before starting; results will be noisy")
    size = args.size_mib * MIB
    shapes = transformer_shapes(size)
    nbytes = sum(FP32 * math.prod(s) for s in shapes.values())
    with tempfile.TemporaryDirectory(prefix="satchel-bench-dist-", dir=args.workdir) as name:
        root = Path(name)
        warn_if_memory_backed(root)
        machine = machine_info(root)
        jobs = [
            (2, run_job(2, ["save", "load:2", "async"], root, size, args.reps)),
            (4, run_job(4, ["save", "load:4", "load:2", "async"], root, size, args.reps)),
            (2, run_job(2, ["load:4"], root, size, args.reps)),
        ]
    meta = {
        "command": shlex.join(["python", "benchmarks/distributed.py", *argv]),
        "state": f"{fmt_bytes(nbytes)} of fp32 DTensors ({len(shapes)} tensors, Shard(0))"
        f" plus {len(plain_shapes())} small plain tensors",
        "reps": str(args.reps),
        "torch": torch.__version__,
        "load_before": load_before,
        "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "cpu": machine["CPU"],
        "cores": machine["Cores"],
        "ram": machine["RAM"],
        "disk": machine["Disk under test"],
        "satchel": machine["satchel measured"],
    }
    print(markdown(jobs, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
