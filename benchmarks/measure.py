"""Timing, page-cache and memory helpers for the benchmark runner."""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PAGE = os.sysconf("SC_PAGE_SIZE")
CHUNK = 64 << 20  # large enough to amortise syscalls, small enough to stay under read/write caps


@dataclass
class Samples:
    """Wall-clock seconds of the repetitions of one case, or why the case could not run."""

    values: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def best(self) -> float:
        return min(self.values)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Case:
    """One timed operation: `prepare` runs untimed before every repetition, `run` is timed."""

    key: str
    run: Callable[[], object]
    prepare: Callable[[], None] = _nothing


def run_rounds(cases: list[Case], reps: int, log: Callable[[str], None]) -> dict[str, Samples]:
    """Time every case `reps` times, round-robin.

    Interleaving spreads drift in disk speed (host caches warming, background writeback) over
    all peers instead of penalising whichever peer happens to run last.
    """
    results = {case.key: Samples() for case in cases}
    for rep in range(reps):
        for case in cases:
            samples = results[case.key]
            if samples.error is not None:
                continue
            try:
                samples.values.append(_time_once(case))
            except Exception as exc:  # a failing peer must not hide the other peers' numbers
                samples.error = f"{type(exc).__name__}: {exc}"
                log(f"  {case.key}: FAILED {samples.error}")
                continue
            log(f"  [{rep + 1}/{reps}] {case.key}: {samples.values[-1]:.4f} s")
    return results


def _time_once(case: Case) -> float:
    # Collect first: eviction only drops pages that no dead-but-uncollected mapping still holds.
    gc.collect()
    case.prepare()
    start = time.perf_counter()
    out = case.run()
    elapsed = time.perf_counter() - start
    del out  # freeing the result (munmap, free) is not part of the loader's time
    return elapsed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a peer's freshly written file durable the same way satchel does: file, then dir."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache so the next read has to go to the disk.

    DONTNEED only drops clean pages that no live mapping holds; files are fsynced after saving
    and results are freed before this runs, so every page qualifies.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def remove_and_settle(path: Path) -> None:
    """Delete the previous copy before a timed save, and flush the deletion untimed.

    Overwriting would make the save pay for freeing the old blocks (and, on a `discard` mount,
    for trimming them); every peer starts from an absent file instead.
    """
    path.unlink(missing_ok=True)
    os.sync()


def write_raw(buf: np.ndarray, path: Path) -> None:
    """The raw limit for saving: one sequential write of the bytes, fsync file and directory."""
    view = memoryview(buf).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done : done + CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def read_raw(path: Path, offset: int = 0, nbytes: int | None = None) -> np.ndarray:
    """The raw limit for loading: read bytes into a fresh buffer, as a copying loader would."""
    size = os.path.getsize(path) - offset if nbytes is None else nbytes
    out = np.empty(size, dtype=np.uint8)
    view = memoryview(out)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < size:
            got = os.preadv(fd, [view[done : done + CHUNK]], offset + done)
            if got == 0:
                raise EOFError(f"{path}: short read at {offset + done}")
            done += got
    finally:
        os.close(fd)
    return out


def warm(path: Path) -> None:
    """Pull the whole file into the page cache."""
    read_raw(path)


def touch(obj: object) -> object:
    """Read one byte of every memory page of every tensor in `obj`, then return `obj`.

    Lazy loaders (mmap) return tensors whose bytes have not been read yet; touching makes every
    peer bring all data into memory, so their times compare. For eager loaders it costs little.
    """
    for ptr, nbytes in _buffers(obj):
        _touch_range(ptr, nbytes)
    return obj


def _buffers(obj: object) -> Iterator[tuple[int, int]]:
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _buffers(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _buffers(value)
    elif isinstance(obj, torch.Tensor):
        tensor = obj.contiguous()
        yield tensor.data_ptr(), tensor.numel() * tensor.element_size()
    elif isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        yield array.ctypes.data, array.nbytes
    else:
        raise TypeError(f"cannot touch {type(obj).__name__}")


def _touch_range(ptr: int, nbytes: int) -> int:
    if nbytes == 0:
        return 0
    # Up to one page of bytes spans at most two pages: its first and last byte reach both.
    # This keeps 50k tiny tensors cheap (no numpy call per tensor).
    if nbytes <= PAGE:
        return ctypes.string_at(ptr, 1)[0] + ctypes.string_at(ptr + nbytes - 1, 1)[0]
    view = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))
    return int(view[::PAGE].sum()) + int(view[-1])


def proc_status_bytes(key: str) -> int:
    """A `Vm*` line of /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True
