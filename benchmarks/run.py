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
    LOADERS,
    SATCHEL_UNVERIFIED,
    SATCHEL_VERIFIED,
    SAVERS,
    SUFFIX,
    one_readers,
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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="markdown file to write (default: stdout)")
    parser.add_argument("--size-gib", type=float, help="big state size (default 1.0; quick 1/16)")
    parser.add_argument("--small-count", type=int, help="small tensors (default 50000; quick 5000)")
    parser.add_argument("--reps", type=int, help="repetitions per case (default 3; quick 1)")
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
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    command = shlex.join(["python", "benchmarks/run.py", *argv])
    return Config(int(size_gib * GIB), small, reps, 5 if args.quick else 20, args.workdir, command)


def filesystem_of(path: Path) -> str:
    """`device (fstype)` of the mount holding `path`: the report should say what disk it hit."""
    best = ("?", "?", "")
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            device, mountpoint, fstype = line.split()[:3]
            inside = str(path).startswith(mountpoint.rstrip("/") + "/") or str(path) == mountpoint
            if inside and len(mountpoint) >= len(best[2]):
                best = (device, fstype, mountpoint)
    return f"{best[0]} ({best[1]}, mounted at {best[2]})"


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


def machine_info(workdir: Path) -> dict[str, str]:
    import torch

    satchel_version = getattr(satchel(), "__version__", None) or _version("satchel")
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
            f" safetensors {_version('safetensors')}, xxhash {xxhash.VERSION},"
            f" satchel {satchel_version}"
        ),
    }


def file_for(tmp: Path, payload: Payload, kind: str) -> Path:
    return tmp / f"{payload.name}-{kind}{SUFFIX[kind]}"


def save_cases(payload: Payload, tmp: Path) -> list[Case]:
    def case(s: object) -> Case:
        assert hasattr(s, "save")
        path = file_for(tmp, payload, s.file)  # type: ignore[attr-defined]
        return Case(
            s.label,  # type: ignore[attr-defined]
            lambda: s.save(payload, path),  # type: ignore[attr-defined]
            lambda: remove_and_settle(path),
        )

    return [case(s) for s in SAVERS]
