"""Timing, page-cache and memory helpers for the benchmark runner."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    note: str | None = None  # why there are fewer runs than asked for
    aborted: bool = False  # the one value is a lower bound: the run was stopped at the limit

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


@dataclass(frozen=True)
class Limits:
    """Keeps one pathological peer from stretching the whole run.

    A run longer than `budget` seconds is not repeated; a run still going after `abort`
    seconds is stopped and its time recorded as a lower bound.
    """

    budget: float = 20.0
    abort: float = 60.0


class _Aborted(Exception):
    pass


def _raise_aborted(signum: int, frame: object) -> None:
    raise _Aborted


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    # SIGALRM interrupts Python code between bytecodes: enough for a loader stuck in a slow
    # Python loop, which is what the limit is for.
    previous = signal.signal(signal.SIGALRM, _raise_aborted)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_rounds(
    cases: list[Case],
    reps: int,
    log: Callable[[str], None],
    *,
    warmup: bool = False,
    limits: Limits = Limits(),
) -> dict[str, Samples]:
    """Time every case `reps` times, round-robin, starting each round at the next case.

    Interleaving and rotating spread drift in disk speed (host caches warming, background
    writeback) over all peers instead of penalising whichever peer runs first or last.
    `warmup` adds an untimed first round (see `cold_load_phase` in run.py for why); a case that
    blows the budget keeps its one number even from the warm-up round, and is noted.
    """
    results = {case.key: Samples() for case in cases}
    for rep in range(-1 if warmup else 0, reps):
        start = rep % len(cases)
        for case in cases[start:] + cases[:start]:
            tag = "warm-up" if rep < 0 else f"{rep + 1}/{reps}"
            _record(case, results[case.key], tag, limits=limits, log=log)
    return results


def _record(
    case: Case, samples: Samples, tag: str, *, limits: Limits, log: Callable[[str], None]
) -> None:
    if samples.error is not None or samples.note is not None:
        return
    try:
        elapsed = _time_once(case, limits.abort)
    except _Aborted:
        samples.values, samples.aborted = [limits.abort], True
        samples.note = f"stopped after {limits.abort:g} s in round {tag}; the true time is longer"
        log(f"  [{tag}] {case.key}: {samples.note}")
        return
    except Exception as exc:  # a failing peer must not hide the other peers' numbers
        samples.error = f"{type(exc).__name__}: {exc}"
        log(f"  [{tag}] {case.key}: FAILED {samples.error}")
        return
    over = elapsed > limits.budget
    if tag == "warm-up" and not over:
        log(f"  [{tag}] {case.key}: {elapsed:.4f} s (discarded)")
        return
    samples.values.append(elapsed)
    log(f"  [{tag}] {case.key}: {elapsed:.4f} s")
    if over:
        samples.note = f"run once only: round {tag} took longer than the {limits.budget:g} s budget"


def _time_once(case: Case, abort: float) -> float:
    # Collect first: eviction only drops pages that no dead-but-uncollected mapping still holds.
    gc.collect()
    case.prepare()
    start = time.perf_counter()
    with _deadline(abort):
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
    view = buf.data.cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done : done + CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def read_into(path: Path, out: np.ndarray, offset: int = 0) -> np.ndarray:
    """Read `out.nbytes` bytes of the file, starting at `offset`, into `out`."""
    view = out.data.cast("B")
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done : done + CHUNK]], offset + done)
            if got == 0:
                raise EOFError(f"{path}: short read at {offset + done}")
            done += got
    finally:
        os.close(fd)
    return out


def prefaulted(nbytes: int) -> np.ndarray:
    """A buffer whose pages are already mapped in.

    Reading into freshly allocated memory faults its pages in during the copy; on this VM that
    made 1 GiB reads vary from 0.4 s to 2.7 s, while reads into mapped pages stayed at 0.4-0.5 s.
    The raw limits read into such a buffer so they measure the disk path, not the allocator.
    """
    return np.ones(nbytes, dtype=np.uint8)


def warm(path: Path) -> None:
    """Pull the whole file into the page cache."""
    read_into(path, np.empty(os.path.getsize(path), dtype=np.uint8))


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
