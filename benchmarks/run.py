"""Benchmark satchel against torch, safetensors and numpy on this machine, in one run.

Usage: python benchmarks/run.py [--out docs/benchmarks.md] [--size-gib 1.0] [--quick]

Writes the whole markdown report (machine, absolute times, same-run ratios against the
targets); without --out it prints it. Numbers are what they are: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import xxhash

from measure import (
    Case,
    Limits,
    Samples,
    evict,
    proc_status_bytes,
    remove_and_settle,
    reset_peak_rss,
    run_rounds,
    touch,
    warm,
)
from peers import (
    LIB_LOADERS,
    SATCHEL_UNVERIFIED,
    SATCHEL_VERIFIED,
    SAVERS,
    SUFFIX,
    TORCH_MMAP,
    Loader,
    OneReader,
    Saver,
    one_readers,
    raw_loader,
    satchel,
    saver,
)
from report import COPY_REF, HASH_REF, ST_LOAD, Memory, Results, extract_notes, render
from workloads import GIB, Payload, one_tensor_name, small_state, transformer_state

MEMORY_PEERS = ["satchel", "safetensors", "torch"]


@dataclass(frozen=True)
class Config:
    size_bytes: int
    small_count: int
    reps: int
    warm_reps: int
    workdir: Path | None
    command: str
    limits: Limits

    def rounds(
        self, cases: list[Case], *, reps: int | None = None, warmup: bool = False
    ) -> dict[str, Samples]:
        """Time `cases` with this run's repetitions and budget."""
        count = self.reps if reps is None else reps
        return run_rounds(cases, count, log, warmup=warmup, limits=self.limits)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="markdown file to write (default: stdout)")
    parser.add_argument("--size-gib", type=float, help="big state size (default 1.0; quick 1/16)")
    parser.add_argument("--small-count", type=int, help="small tensors (default 50000; quick 5000)")
    parser.add_argument("--reps", type=int, help="repetitions per case (default 7; quick 1)")
    parser.add_argument(
        "--budget", type=float, default=20.0, help="seconds; slower cases run once (default 20)"
    )
    parser.add_argument(
        "--abort", type=float, default=60.0, help="seconds; a run is stopped here (default 60)"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument(
        "--workdir", type=Path, help="where temp files go; must be a real disk, not tmpfs"
    )
    # Internal: measure one library's peak memory while saving, in a fresh process.
    parser.add_argument("--child-peak", choices=MEMORY_PEERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace, argv: list[str]) -> Config:
    size_gib = args.size_gib if args.size_gib is not None else (1 / 16 if args.quick else 1.0)
    small = args.small_count if args.small_count is not None else (5000 if args.quick else 50000)
    reps = args.reps if args.reps is not None else (1 if args.quick else 7)
    command = shlex.join(["python", "benchmarks/run.py", *argv])
    warm_reps = 5 if args.quick else 20
    limits = Limits(args.budget, args.abort)
    return Config(int(size_gib * GIB), small, reps, warm_reps, args.workdir, command, limits)


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(device, fstype, mountpoint) of the deepest mount holding `path`."""
    best = ("?", "?", "")
    resolved = str(path.resolve())
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            device, mountpoint, fstype = line.split()[:3]
            prefix = mountpoint.rstrip("/") + "/"
            inside = resolved == mountpoint or resolved.startswith(prefix)
            if inside and len(mountpoint) >= len(best[2]):
                best = (device, fstype, mountpoint)
    return best


def filesystem_of(path: Path) -> str:
    device, fstype, mountpoint = _mount_of(path)
    return f"{device} ({fstype}, mounted at {mountpoint})"


def warn_if_memory_backed(path: Path) -> None:
    # On tmpfs "disk" reads and fsyncs are memcpy and no-ops: the raw limits would mean nothing.
    if _mount_of(path)[1] in {"tmpfs", "ramfs"}:
        log(f"WARNING: {path} is memory-backed; pass --workdir on a real disk")


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(where: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(where), *args], check=False, capture_output=True)
    return proc.stdout.decode().strip() if proc.returncode == 0 else ""


def satchel_source() -> str:
    """The commit of the satchel code measured: the code changes faster than its version."""
    try:
        module = satchel()
    except ImportError as exc:  # still benchmark the peers; satchel rows will show the error
        return f"import failed ({exc})"
    package = Path(module.__file__ or "").parent
    where = f"{getattr(module, '__version__', '?')} from {package}"
    commit = _git(package, "rev-parse", "--short", "HEAD")
    if not commit:
        return f"{where} (not a git checkout)"
    dirty = _git(package, "status", "--porcelain", "--", ".")
    return f"{where}, commit {commit}" + (" plus uncommitted changes" if dirty else "")


def machine_info(workdir: Path) -> dict[str, str]:
    import torch

    return {
        "Date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _cpu_model(),
        "Cores": f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable)",
        "RAM": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Disk under test": filesystem_of(workdir),
        "Python": platform.python_version(),
        "Versions": (
            f"torch {torch.__version__}, numpy {np.__version__},"
            f" safetensors {_version('safetensors')}, xxhash {xxhash.VERSION}"
        ),
        "satchel measured": satchel_source(),
    }


def file_for(tmp: Path, payload: Payload, kind: str) -> Path:
    return tmp / f"{payload.name}-{kind}{SUFFIX[kind]}"


def _save_case(s: Saver, payload: Payload, path: Path) -> Case:
    return Case(s.label, lambda: s.save(payload, path), lambda: remove_and_settle(path))


def _cold_load_case(loader: Loader, path: Path) -> Case:
    return Case(loader.label, lambda: touch(loader.load(path)), lambda: evict(path))


def _cold_one_case(reader: OneReader, path: Path, name: str) -> Case:
    return Case(reader.label, lambda: reader.read(path, name), lambda: evict(path))


def _warm_case(loader: Loader, path: Path) -> Case:
    # Nothing touched: this measures what the load call itself costs when data is cached.
    return Case(loader.label, lambda: loader.load(path))


def _loader(label: str) -> Loader:
    return next(loader for loader in LIB_LOADERS if loader.label == label)


def save_phase(payload: Payload, tmp: Path, config: Config) -> dict[str, Samples]:
    """Saves, after an untimed warm-up round: in trial runs the first round of 1 GiB writes was
    2-4x slower for every peer alike (the VM host settling), which says nothing about them."""
    cases = [_save_case(s, payload, file_for(tmp, payload, s.file)) for s in SAVERS]
    return config.rounds(cases, warmup=True)


def cold_load_phase(payload: Payload, tmp: Path, config: Config) -> dict[str, Samples]:
    """Loads with the file evicted from this kernel's page cache.

    On a VM the host also caches the disk image: the first read of a freshly written file can
    take several times longer than later ones, and by how much varies run to run. An untimed
    warm-up round gives every peer the same history, so "cold" means: not in this kernel's page
    cache, and the disk path as it is after one earlier read.
    """
    loaders = [raw_loader(payload.nbytes), *LIB_LOADERS]
    cases = [_cold_load_case(ld, file_for(tmp, payload, ld.file)) for ld in loaders]
    return config.rounds(cases, warmup=True)


def one_tensor_phase(payload: Payload, tmp: Path, name: str, config: Config) -> dict[str, Samples]:
    readers = one_readers(payload.spans)
    cases = [_cold_one_case(rd, file_for(tmp, payload, rd.file), name) for rd in readers]
    return config.rounds(cases)


def warm_phase(payload: Payload, tmp: Path, config: Config) -> dict[str, Samples]:
    """The lazy-load target (many runs: it is short) plus cached loads of peers for context."""
    lazy = _loader(SATCHEL_UNVERIFIED)
    context = [_loader(label) for label in (SATCHEL_VERIFIED, ST_LOAD, TORCH_MMAP)]
    for loader in [lazy, *context]:
        warm(file_for(tmp, payload, loader.file))
    # One set of rounds for all: the lazy load is compared with safetensors' (issue 12), so
    # they interleave, each round starting at the next peer.
    cases = [_warm_case(ld, file_for(tmp, payload, ld.file)) for ld in [lazy, *context]]
    return config.rounds(cases, reps=config.warm_reps)


def reference_phase(payload: Payload, config: Config) -> dict[str, Samples]:
    """In-RAM costs of hashing and copying the payload: what the disk numbers build on."""
    flat = payload.flat
    target = np.ones_like(flat)  # ones, not empty: pages faulted in before timing
    cases = [
        Case(HASH_REF, lambda: xxhash.xxh3_64_intdigest(flat.data)),
        Case(COPY_REF, lambda: np.copyto(target, flat)),
    ]
    return config.rounds(cases)


def big_phases(config: Config, tmp: Path) -> tuple[dict[str, dict[str, Samples]], Payload, str]:
    started = time.perf_counter()
    big = transformer_state(config.size_bytes).materialize()
    elapsed = time.perf_counter() - started
    log(f"built {big.count} tensors, {big.nbytes / GIB:.2f} GiB in {elapsed:.1f} s")
    name = one_tensor_name(big)
    sections = {
        "big_save": save_phase(big, tmp, config),
        "big_load": cold_load_phase(big, tmp, config),
        "big_one": one_tensor_phase(big, tmp, name, config),
        "big_warm": warm_phase(big, tmp, config),
        "reference": reference_phase(big, config),
    }
    return sections, big, name


def small_phases(config: Config, tmp: Path) -> tuple[dict[str, dict[str, Samples]], Payload]:
    small = small_state(config.small_count).materialize()
    log(f"built {small.count} small tensors")
    sections = {
        "small_save": save_phase(small, tmp, config),
        "small_load": cold_load_phase(small, tmp, config),
    }
    return sections, small


def child_peak(kind: str, size_bytes: int, tmp: Path) -> dict[str, int]:
    """Runs in a fresh process: RSS high-water mark of one save of the big state."""
    payload = transformer_state(size_bytes)
    if kind == "satchel":
        satchel()  # import before the baseline: module memory is not the save's cost
    gc.collect()
    if not reset_peak_rss():
        raise RuntimeError("cannot reset VmHWM through /proc/self/clear_refs")
    baseline = proc_status_bytes("VmRSS")
    path = tmp / f"memory-{kind}{SUFFIX[kind]}"
    saver(kind).save(payload, path)
    peak = proc_status_bytes("VmHWM")
    path.unlink()
    return {"baseline": baseline, "peak": peak, "state": payload.nbytes}


def _child_memory(kind: str, config: Config, tmp: Path) -> Memory:
    label = saver(kind).label
    size_gib = repr(config.size_bytes / GIB)
    cmd = [sys.executable, __file__, "--child-peak", kind, "--size-gib", size_gib, "--workdir"]
    # check=False: a failing child becomes an error row, the other peers still get measured.
    proc = subprocess.run([*cmd, str(tmp)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"  memory {kind}: FAILED {last}")
        return Memory(label, error=last)
    memory = Memory(label, **json.loads(proc.stdout.strip().splitlines()[-1]))
    log(f"  memory {kind}: peak {memory.ratio:.2f}x state above baseline")
    return memory


def _loadavg() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def run_all(config: Config, tmp: Path) -> Results:
    started = time.perf_counter()
    machine = machine_info(tmp)
    load_before = _loadavg()
    if os.getloadavg()[0] > 0.5:
        # Other work on the machine shifts every number; the report records it either way.
        log(f"WARNING: load average {load_before} before starting; results will be noisy")
    big_sections, big, name = big_phases(config, tmp)
    meta = {"big_bytes": big.nbytes, "big_count": big.count, "one_bytes": big.spans[name][1]}
    del big  # frees ~2x the state before the small phase and the memory children
    gc.collect()
    small_sections, small = small_phases(config, tmp)
    memory = [_child_memory(kind, config, tmp) for kind in MEMORY_PEERS]
    log(f"total {time.perf_counter() - started:.0f} s")
    # Load from other processes skews every number; readers need to see it to trust the run.
    machine["Load average (1, 5, 15 min)"] = f"before: {load_before}; after: {_loadavg()}"
    return Results(
        command=config.command,
        machine=machine,
        reps=config.reps,
        warm_reps=config.warm_reps,
        small_bytes=small.nbytes,
        small_count=small.count,
        one_name=name,
        sections=big_sections | small_sections,
        memory=memory,
        **meta,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child_peak:
        result = child_peak(args.child_peak, int(args.size_gib * GIB), args.workdir)
        print(json.dumps(result))
        return 0
    config = make_config(args, argv)
    previous = args.out.read_text(encoding="utf-8") if args.out and args.out.exists() else None
    with tempfile.TemporaryDirectory(prefix="satchel-bench-", dir=config.workdir) as name:
        warn_if_memory_backed(Path(name))
        results = run_all(config, Path(name))
    text = render(results, extract_notes(previous))
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
