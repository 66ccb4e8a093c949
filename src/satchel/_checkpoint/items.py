"""The files of one item in a step folder: planned, then written (SPEC 8.2, 8.15).

An item is one file ``<item>.satchel`` (sections 1-7), unless ``max_shard_size`` is set and its
stored tensors do not fit in one shard: then it is a folder ``<item>/`` in the Hugging Face
layout (section 9): shards ``model-<i>-of-<n>.safetensors`` and the index
``model.safetensors.index.json``. An item that fits in one shard stays one file, as
transformers' ``save_pretrained`` writes one ``model.safetensors`` then.

Planning decides (and, for a sharded item, hashes every stored tensor once); writing acts, in
the step's temporary folder: the whole step is committed by its rename (SPEC 8.5), so the
index is not the commit here, only the last file of its folder. The shards of an item are
written by parallel workers (``workers``), each returning its size and whole-file xxh3-64 for
the commit record.

With ``incremental`` an item that holds tensors is *pooled* (SPEC 8.17, ``incremental``): its
folder holds only the index, whose tensors are entries of pool files in the root's ``blobs/``,
those the previous step stored reused, the others written by this save.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._format.validate import xxh3_hex
from .._io.atomic import atomic_file, fsync_dir, write_all
from .._io.writer import write_plan
from .._plan import Plan, plan_save
from .._shards.writer import Shard, ShardedPlan, plan_sharded, split_stored
from . import workers
from .layout import SHARD_INDEX, SHARD_PREFIX, item_file
from .record import FileRecord, ItemRecord

if TYPE_CHECKING:
    from .incremental import Pool

__all__ = ["ItemPlan", "plan_item", "write_item"]


@dataclass(frozen=True)
class ItemPlan:
    """What one item becomes: one file (``single``), a sharded folder (``sharded``) or a
    pooled folder (``pooled``: the item's plan, split between reused and new pool entries when
    it is written, with pool files of at most ``limit`` bytes)."""

    name: str
    single: Plan | None
    sharded: ShardedPlan | None
    pooled: Plan | None = None
    limit: int | None = None


def plan_item(
    name: str, value: Any, *, max_shard_size: int | None, incremental: bool = False
) -> ItemPlan:
    """Plan item ``name``: pooled iff ``incremental`` and it holds tensors; else sharded iff
    ``max_shard_size`` is set and it needs several shards.

    Raises:
        UnsupportedObjectError: ``value`` holds something satchel cannot store.
    """
    plan = plan_save(value)
    if incremental and plan.stored:
        return ItemPlan(name, None, None, plan, max_shard_size)
    if max_shard_size is None or len(split_stored(plan, max_shard_size)) <= 1:
        return ItemPlan(name, plan, None)
    sharded = plan_sharded(plan, max_shard_size, prefix=SHARD_PREFIX)
    assert sharded.index_name == SHARD_INDEX
    return ItemPlan(name, None, sharded)


def write_item(item: ItemPlan, folder: Path, *, pool: Pool | None = None) -> ItemRecord:
    """Write ``item`` into the step's temporary ``folder``; every file fsynced, and a sharded
    item's folder too. Returns what the commit record lists of it. A pooled item's new pool
    files go through ``pool`` (which the caller finishes before the commit record).

    Raises:
        OSError: the disk failed; what was written stays in ``folder`` (the caller removes it).
    """
    if item.single is not None:
        file = item_file(item.name)
        written = write_plan(item.single, folder / file, file_digest=True)
        return ItemRecord.single(file, written.size, written.xxh3)
    if item.pooled is not None:
        assert pool is not None
        pooled = pool.plan(item.name, item.pooled, max_shard_size=item.limit)
        pool.write(pooled)
        return _write_index(folder / item.name, item.name, pooled.index, [])
    assert item.sharded is not None
    sub = folder / item.name
    os.mkdir(sub)

    def write_shard(shard: Shard) -> FileRecord:
        # The folder's fsync comes once, after the index (below), not once per shard.
        out = write_plan(
            shard.plan, sub / shard.name, sums=shard.sums, file_digest=True, sync_folder=False
        )
        return FileRecord(shard.name, out.size, out.xxh3)

    files = workers.each(write_shard, item.sharded.shards, workers=workers.WRITE_WORKERS)
    return _write_index(sub, item.name, item.sharded.index, files)


def _write_index(sub: Path, name: str, index: bytes, files: list[FileRecord]) -> ItemRecord:
    """The index, last in the item's folder (made here when it holds nothing else), then the
    folder synced: the item as its commit record entry lists it (SPEC 8.16)."""
    if not files:
        os.mkdir(sub)
    with atomic_file(sub / SHARD_INDEX, sync_folder=False) as fd:
        write_all(fd, index)
    files.append(FileRecord(SHARD_INDEX, len(index), xxh3_hex(index)))
    fsync_dir(sub)
    return ItemRecord(tuple(files), name)
