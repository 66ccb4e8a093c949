"""The threads that write (and could check) the files of a sharded item (SPEC 8.15).

Measured on this project's 2-core VM (docs/checkpoints.md#sharded-items, with
benchmarks/manager_sharded.py), for a 1 GiB item in 5 and 10 shards:

- writing with two threads pays: one shard's fsync (the disk) overlaps the next shard's writes
  and checksum (the CPU); one thread took 1.2-2.2x as long (:data:`WRITE_WORKERS`);
- checking with two threads does not, reliably: reading the files back is bound by the disk
  and hashing them is fast, and the medians of one and two threads moved by up to a third
  either way from run to run, so ``check`` (and so a verified ``restore``) stays one sequential
  pass that stops at the first bad file (:data:`CHECK_WORKERS`).

Both release the GIL (``os.write``, ``os.fsync``, ``os.preadv``, xxhash on large buffers); more
threads than the two cores would only interleave the same work. Single-file items keep their
one sequential pass: a step of one model and one optimizer file has little to overlap, and the
fault-injection tests pin the exact order of their system calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

__all__ = ["CHECK_WORKERS", "WRITE_WORKERS", "each"]

# See the module docstring; tests and the benchmark set them to compare.
WRITE_WORKERS = 2
CHECK_WORKERS = 1

_T = TypeVar("_T")
_R = TypeVar("_R")


def each(fn: Callable[[_T], _R], args: Sequence[_T], *, workers: int) -> list[_R]:
    """``[fn(a) for a in args]``, on up to ``workers`` threads; results in ``args`` order.

    After a failure no further call starts; every call started has finished when this returns
    or raises (so the caller may then remove what they wrote). The error raised is that of the
    first failing ``args`` in order.
    """
    if workers <= 1 or len(args) <= 1:
        return [fn(a) for a in args]
    pool = ThreadPoolExecutor(max_workers=min(workers, len(args)), thread_name_prefix="satchel")
    try:
        futures = [pool.submit(fn, a) for a in args]
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    # Calls start in order, so any call cancelled comes after the one that failed.
    return [f.result() for f in futures]
