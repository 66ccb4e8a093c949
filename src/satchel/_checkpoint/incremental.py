"""Incremental saves: write only the tensors the previous step did not store (SPEC 8.17-8.19).

A save with ``incremental=True`` makes every item that holds tensors a *pooled* item: a folder
``<item>/`` with only the index ``model.safetensors.index.json`` (section 9's schema, satchel's
manifest of the whole item inside), whose ``weight_map`` gives each stored tensor as a pool
reference ``pool:<pool file>:<key>`` into the root's folder ``blobs/`` (``_shards.pool``).

The :class:`Pool` of one save knows what the newest committed step stored: for each stored
tensor its byte length and xxh3-64, and where it lies. A new tensor whose length and xxh3-64
match one of those is a candidate only; it is reused after its bytes compare equal to the
stored ones (read through the pool file's mapping), never on the 64-bit hash alone, so two
different tensors whose hashes collide are both stored. Everything else goes into new pool
files, one set per item (split by ``max_shard_size``), each a plain satchel file written and
fsynced before the commit record names it.

Why a byte comparison and not a second hash: measured on this project's VM for 256 MiB
(benchmarks/incremental.py), the comparison against the page-cached mapping ran at 11.6 GB/s;
the independent hashes at hand ran slower (crc32 3.7 GB/s, sha1 1.4, blake2b 0.6 GB/s) and
would need a second digest stored per tensor; xxh3-128 (31 GB/s) shares xxh3-64's accumulators
on long inputs, so it is not independent. The comparison is exact and needs nothing stored;
it reads the stored bytes, from the disk when they left the page cache (a save then costs
that read instead of a write).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._format.manifest import Manifest, Stored, encode_manifest
from .._io.atomic import fsync_dir
from .._io.reader import open_file
from .._io.writer import write_plan
from .._plan import Plan, StoredTensor, digests, plan_flat
from .._shards.index import MAX_INDEX, encode_index, parse_index
from .._shards.pool import POOL_DIR, pool_file_name, pool_ref
from ..errors import FormatError, SatchelError
from . import workers
from .files import open_folder, open_regular, read_at_most, step_folder
from .layout import SHARD_INDEX
from .record import CommitRecord, FileRecord

__all__ = ["Pool", "PooledItem", "make_pool_folder", "newest_committed"]

_HF_FORMAT = {"format": "pt"}  # as every shard: transformers checks it
# Bytes compared at a time, as 64-bit words: a temporary that stays in the cache. Measured for
# 256 MiB here: 12 GB/s in 1 MiB steps of words, 6 GB/s in 16 MiB steps of bytes.
_COMPARE_STEP = 1 << 20


@dataclass(frozen=True)
class PooledItem:
    """What a pooled item writes: new pool files (name, plan, digests) and its index."""

    name: str
    files: tuple[tuple[str, Plan, tuple[str, ...]], ...]
    index: bytes
    reused: frozenset[str]  # earlier pool files it references


@dataclass(frozen=True)
class _Known:
    """A tensor the newest committed step stored: in pool file ``file`` under ``key``."""

    file: str
    key: str


class Pool:
    """The root's pool as one save sees it: what can be reused, what was written.

    Made with the writer lock held (``CheckpointManager._begin``). :meth:`plan` decides an
    item, :meth:`write` writes its new pool files, :meth:`finish` makes them durable and
    returns every pool file the step references, for the commit record.
    """

    def __init__(self, root: Path, step: int, newest: tuple[Any, CommitRecord] | None) -> None:
        self.root = root
        self.step = step
        self.blobs: Any = root / POOL_DIR  # a URL (str) in the object-store subclass
        self._known: dict[tuple[int, str], list[_Known]] = {}
        self._records: dict[str, FileRecord] = {}  # the newest step's pool files
        self._open: dict[str, Any] = {}  # an Opened (or a remote one), None: unreadable
        self._entries: dict[str, dict[str, tuple[int, int]]] = {}  # file -> key -> byte range
        self.reused: set[str] = set()
        self.written: list[FileRecord] = []
        self.confirmed = 0  # tensors reused after their bytes compared equal
        self.collisions = 0  # same length and xxh3-64, other bytes: written again
        if newest is not None:
            self._learn(*newest)

    # -- what the newest committed step stored --------------------------------------------
    def _learn(self, folder: Any, record: CommitRecord) -> None:
        self._records = {f.file: f for f in record.pool}
        if not self._records:
            return  # not an incremental step: nothing to reuse
        for item in record.items.values():
            if item.folder is None or not any(f.file == SHARD_INDEX for f in item.files):
                continue
            try:
                index = self._read_index(folder, item.folder)
            except (SatchelError, OSError):
                continue  # an item that cannot be read offers nothing to reuse
            if index.manifest is None:
                continue
            for name, (file, key) in index.pool.items():
                stored = index.manifest.stored[name]
                if file in self._records:
                    self._known.setdefault((stored.nbytes, stored.xxh3), []).append(
                        _Known(file, key)
                    )

    # Where the stored bytes come from: the two hooks an object-store pool overrides
    # (``remote_pool.RemotePool``); every decision above and below stays the same.
    def _read_index(self, folder: Any, item: str) -> Any:
        """The pooled index of item ``item`` of the step at ``folder``."""
        return _read_index(folder, item)

    def _open_pool(self, file: str) -> Any:
        """Pool file ``file`` opened (``header``, ``manifest``, sliceable ``data``), or
        ``None`` when it cannot be read as a regular file."""
        path = self.blobs / file
        try:
            # A link is never followed (readers refuse one: the step would not be valid).
            regular = stat.S_ISREG(os.lstat(path).st_mode)
            return open_file(path) if regular else None
        except (SatchelError, OSError):
            return None

    def _entry(
        self, file: str, key: str, nbytes: int, xxh3: str
    ) -> tuple[int, np.ndarray[Any, Any]] | None:
        """Where ``file:key`` starts in the data section and its bytes, when the pool file
        records that length and xxh3."""
        if file not in self._open:
            self._open[file] = self._open_pool(file)
        f = self._open[file]
        if f is None or f.manifest is None:
            return None
        if file not in self._entries:
            self._entries[file] = {e.name: (e.start, e.end) for e in f.header.entries}
        stored = f.manifest.stored.get(key)
        entry = self._entries[file].get(key)
        if stored is None or entry is None or stored.xxh3 != xxh3:
            return None
        start, end = entry
        if end - start != nbytes:
            return None
        return start, f.data[start:end]

    def find(self, s: StoredTensor, xxh3: str, used: set[_Known]) -> _Known | None:
        """A stored tensor with the bytes of ``s``: same length and xxh3-64 (a candidate),
        then the same bytes (the proof). ``used`` are the entries this item already took:
        two tensors of one item never share one entry (they would share memory when loaded).
        """
        for known in self._known.get((s.data.nbytes, xxh3), ()):
            if known not in used and self.confirm(known.file, known.key, s, xxh3):
                return known
        return None

    def confirm(self, file: str, key: str, s: StoredTensor, xxh3: str) -> bool:
        """Whether entry ``key`` of pool file ``file`` (one the newest step lists) holds the
        bytes of ``s``: its recorded length and xxh3-64 match, it is aligned for ``s``'s
        leaves, and its bytes compare equal (SPEC 8.17: never the hash alone)."""
        if file not in self._records:
            return False
        found = self._entry(file, key, s.data.nbytes, xxh3)
        if found is None:
            return False
        start, stored = found
        if start % s.align:
            return False  # the reader needs the bytes aligned for every leaf viewing them
        if _same_bytes(stored, s.data):
            self.confirmed += 1
            return True
        self.collisions += 1
        return False

    # -- this save ------------------------------------------------------------------------
    def plan(self, name: str, plan: Plan, *, max_shard_size: int | None) -> PooledItem:
        """Decide which of ``plan``'s stored tensors are reused and which are written."""
        sums = digests(plan)
        used: set[_Known] = set()
        refs: dict[str, str] = {}
        new: list[tuple[StoredTensor, str]] = []
        reused: set[str] = set()
        for s, h in zip(plan.stored, sums, strict=True):
            hit = self.find(s, h, used)
            if hit is None:
                new.append((s, h))
            else:
                used.add(hit)
                reused.add(hit.file)
                refs[s.name] = pool_ref(hit.file, hit.key)
        frameworks: dict[str, str] = {}
        for leaf in plan.leaves:
            frameworks.setdefault(leaf.data, leaf.framework)
        token = secrets.token_hex(4)
        files = []
        for part, group in enumerate(_pack(new, max_shard_size), start=1):
            file = pool_file_name(self.step, token, part)
            sub = plan_flat([s for s, _ in group], frameworks, metadata=_HF_FORMAT)
            by_name = {s.name: h for s, h in group}
            files.append((file, sub, tuple(by_name[s.name] for s in sub.stored)))
            refs.update((s.name, pool_ref(file, s.name)) for s, _ in group)
        stored = {
            s.name: Stored(s.dtype, s.shape, h) for s, h in zip(plan.stored, sums, strict=True)
        }
        manifest = encode_manifest(
            Manifest(plan.skeleton, plan.leaves, stored, dict(plan.metadata), plan.module)
        )
        order = dict.fromkeys(leaf.data for leaf in plan.leaves)
        order.update(dict.fromkeys(s.name for s in plan.stored))
        weight_map = {n: refs[n] for n in order}
        index = encode_index(
            weight_map, total_size=plan.data_len, manifest=manifest, metadata=_HF_FORMAT
        )
        return PooledItem(name, tuple(files), index, frozenset(reused))

    def write(self, item: PooledItem) -> None:
        """Write ``item``'s new pool files (each atomically, the folder synced by
        :meth:`finish`); a file written is recorded even if a later one fails, so that the
        caller can remove it."""
        if item.files:
            make_pool_folder(self.root)

        def write_one(f: tuple[str, Plan, tuple[str, ...]]) -> FileRecord:
            file, plan, sums = f
            out = write_plan(
                plan, self.blobs / file, sums=sums, file_digest=True, sync_folder=False
            )
            rec = FileRecord(file, out.size, out.xxh3)
            self.written.append(rec)
            return rec

        workers.each(write_one, item.files, workers=workers.WRITE_WORKERS)
        self.reused |= item.reused

    def finish(self) -> tuple[FileRecord, ...]:
        """Make the new pool files durable; every pool file the step references, by name."""
        if self.written:
            fsync_dir(self.blobs)
        out = {f.file: f for f in self.written}
        for file in self.reused:
            out.setdefault(file, self._records[file])
        self.close()
        return tuple(out[k] for k in sorted(out))

    def discard(self) -> None:
        """After a failed save: remove the pool files it wrote (best effort; the next save's
        collection removes what is left, SPEC 8.19)."""
        self.close()
        for f in self.written:
            with contextlib.suppress(OSError):
                os.unlink(self.blobs / f.file)

    def close(self) -> None:
        self._open.clear()  # the mappings go with their last reference
        self._entries.clear()

    def known_file(self, file: str) -> FileRecord | None:
        """What the newest step's record says of pool file ``file``."""
        return self._records.get(file)


def _same_bytes(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Whether two uint8 arrays hold the same bytes, a bounded slice at a time."""
    if a.nbytes != b.nbytes:
        return False
    step = _COMPARE_STEP
    if a.nbytes % 8 == 0:
        a, b, step = a.view(np.uint64), b.view(np.uint64), step // 8
    return all(np.array_equal(a[i : i + step], b[i : i + step]) for i in range(0, a.size, step))


def _pack(
    tensors: Sequence[tuple[StoredTensor, str]], limit: int | None
) -> list[list[tuple[StoredTensor, str]]]:
    """Tensors in structure order, in groups of at most ``limit`` bytes (one group without a
    limit); a tensor larger than ``limit`` is a group of its own (as SPEC 9.1 packs shards)."""
    groups: list[list[tuple[StoredTensor, str]]] = []
    current: list[tuple[StoredTensor, str]] = []
    size = 0
    for t in tensors:
        n = t[0].data.nbytes
        if current and limit is not None and size + n > limit:
            groups.append(current)
            current, size = [], 0
        current.append(t)
        size += n
    if current:
        groups.append(current)
    return groups


def _read_index(step: Path, item: str) -> Any:
    """The pooled index of ``step/item``, opened as every file of a step (SPEC 8.12)."""
    where = str(step / item / SHARD_INDEX)
    with step_folder(step) as dir_fd:
        sub = open_folder(item, step / item, dir_fd=dir_fd)
        try:
            fd = open_regular(sub, SHARD_INDEX, where)
        finally:
            os.close(sub)
    try:
        raw = read_at_most(fd, MAX_INDEX + 1)
    finally:
        os.close(fd)
    return parse_index(raw, where=where, pool=True)


def make_pool_folder(root: Path) -> None:
    """The root's pool folder, made (durably) if missing.

    Raises:
        FormatError: ``blobs`` is a link or not a folder; it is never followed or replaced.
    """
    path = root / POOL_DIR
    if not os.path.lexists(path):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        fsync_dir(root)
    if os.path.islink(path) or not path.is_dir():
        raise FormatError(
            f"{path}: the checkpoint root's pool must be a folder, not a link or a file; move "
            "it away",
            path=str(path),
        )


def newest_committed(infos: Iterable[Any]) -> tuple[Path, CommitRecord] | None:
    """The folder and record of the newest committed step among ``infos`` (oldest first)."""
    committed = [(i.path, i.record) for i in infos if i.record is not None]
    return committed[-1] if committed else None
