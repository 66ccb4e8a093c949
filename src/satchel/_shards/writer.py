"""Writing a sharded checkpoint, atomic as a whole (SPEC 9.3).

The order is what makes a crash harmless: new shards go to names the current index does not
reference (each written atomically: temp file, fsync, rename), then the new index replaces the
old one in one atomic rename — the commit — and only then are the old shards deleted. Before
the commit, readers (satchel, transformers, huggingface_hub: all go through the index) see the
whole old checkpoint; after it, the whole new one. A failed save removes the shards it wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._format.manifest import Manifest, Stored, encode_manifest
from .._gcpause import paused_gc
from .._io.atomic import atomic_file, fsync_dir, write_all
from .._io.writer import write_plan
from .._plan import Plan, StoredTensor, digests, header_len, plan_flat, plan_save
from .._progress import ProgressArg, reporter
from ..errors import SatchelFileNotFoundError, UsageError
from .index import MAX_INDEX, encode_index, parse_index
from .names import SAFE_SUFFIX, check_prefix, index_name, is_shard_name, parse_size, shard_names

__all__ = ["Shard", "ShardedPlan", "plan_sharded", "save_sharded", "split_stored"]

# transformers refuses a safetensors shard whose metadata lacks a known "format" ("pt" for torch).
_HF_FORMAT = {"format": "pt"}


@dataclass(frozen=True)
class Shard:
    """One shard file: its name, its plan and its stored tensors' digests."""

    name: str
    plan: Plan
    sums: tuple[str, ...]


@dataclass(frozen=True)
class ShardedPlan:
    """Everything a sharded save writes, as data: the shards, then the index (the commit)."""

    shards: tuple[Shard, ...]
    index_name: str
    index: bytes


def split_stored(plan: Plan, limit: int) -> list[list[StoredTensor]]:
    """Stored tensors in structure order, greedily packed into groups of at most ``limit``
    bytes; a tensor is never split, and one larger than ``limit`` is a group of its own."""
    by_name = {s.name: s for s in plan.stored}
    order = list(dict.fromkeys(leaf.data for leaf in plan.leaves))
    groups: list[list[StoredTensor]] = []
    current: list[StoredTensor] = []
    size = 0
    for name in order:
        s = by_name[name]
        if current and size + s.data.nbytes > limit:
            groups.append(current)
            current, size = [], 0
        current.append(s)
        size += s.data.nbytes
    if current:
        groups.append(current)
    return groups


def plan_sharded(
    plan: Plan, limit: int, *, prefix: str, taken: frozenset[str] = frozenset()
) -> ShardedPlan:
    """Split ``plan`` into shards of at most ``limit`` bytes named so none is in ``taken``.

    Every stored tensor is hashed once; the shards' headers and the index carry the digests.
    """
    sums = dict(zip((s.name for s in plan.stored), digests(plan), strict=True))
    frameworks: dict[str, str] = {}
    for leaf in plan.leaves:
        frameworks.setdefault(leaf.data, leaf.framework)
    groups = split_stored(plan, limit) or [[]]
    names = shard_names(prefix, len(groups), taken=taken)
    shard_meta = {**plan.metadata, **_HF_FORMAT}  # loaders check it: "pt" wins
    shards = []
    weight_map: dict[str, str] = {}
    for name, group in zip(names, groups, strict=True):
        sub = plan_flat(group, frameworks, metadata=shard_meta)
        shards.append(Shard(name, sub, tuple(sums[s.name] for s in sub.stored)))
        weight_map.update((s.name, name) for s in group)
    stored = {s.name: Stored(s.dtype, s.shape, sums[s.name]) for s in plan.stored}
    manifest = encode_manifest(
        Manifest(plan.skeleton, plan.leaves, stored, dict(plan.metadata), plan.module)
    )
    index = encode_index(
        weight_map, total_size=plan.data_len, manifest=manifest, metadata=_HF_FORMAT
    )
    return ShardedPlan(tuple(shards), index_name(prefix), index)


def save_sharded(
    obj: Any,
    folder: Path,
    *,
    max_shard_size: int | str,
    prefix: str = "model",
    metadata: Mapping[str, str] | None = None,
    module: str | None = None,
    progress: ProgressArg = None,
) -> None:
    """``satchel.save(obj, folder, max_shard_size=...)``: see the module docstring."""
    limit = parse_size(max_shard_size)
    check_prefix(prefix)
    with paused_gc():
        plan = plan_save(obj, metadata=metadata, module=module)
    if not folder.parent.is_dir():
        raise SatchelFileNotFoundError(f"{folder}: folder {folder.parent} does not exist")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: is a file; a sharded save writes a folder")
    if not folder.exists():
        folder.mkdir()
        fsync_dir(folder.parent)
    sharded = plan_sharded(plan, limit, prefix=prefix, taken=_referenced(folder, prefix))
    total = sum(header_len(s.plan) + s.plan.data_len for s in sharded.shards) if progress else 0
    report = reporter(progress, total, f"saving {folder.name}") if progress else None
    write_sharded(sharded, folder, progress=report)


def write_sharded(sharded: ShardedPlan, folder: Path, *, progress: Any = None) -> None:
    """Execute ``sharded`` in ``folder``: shards, the index (the commit), then old shards go."""
    written: list[Path] = []
    done = 0
    try:
        for shard in sharded.shards:
            path = folder / shard.name
            base = done

            def step(n: int, base: int = base) -> None:
                progress(base + n)

            out = write_plan(
                shard.plan,
                path,
                sums=shard.sums,
                progress=step if progress else None,
                sync_folder=False,  # one folder fsync for all shards, just below
            )
            written.append(path)
            done += out.size
        fsync_dir(folder)  # every shard durable under its name before the index names it
        with atomic_file(folder / sharded.index_name) as fd:  # SPEC 9.3: the commit
            write_all(fd, sharded.index)
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise
    prefix = sharded.index_name.removesuffix(f"{SAFE_SUFFIX}.index.json")
    _remove_old(folder, prefix, keep={s.name for s in sharded.shards})


def _referenced(folder: Path, prefix: str) -> frozenset[str]:
    """Shard names the folder's current index uses (they must survive until the commit)."""
    path = folder / index_name(prefix)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_INDEX + 1)
        return frozenset(parse_index(raw, where=str(path)).files)
    except (OSError, ValueError):
        # No index, or one satchel cannot read: keep every name that looks like a shard.
        return frozenset(p.name for p in folder.iterdir() if is_shard_name(p.name, prefix))


def _remove_old(folder: Path, prefix: str, *, keep: set[str]) -> None:
    """After the commit: shards of ``prefix`` the new index does not name, and a single-file
    ``<prefix>.safetensors`` (transformers would load it instead of the index)."""
    removed = False
    for p in folder.iterdir():
        name = p.name
        if name in keep:
            continue
        if is_shard_name(name, prefix) or name == f"{prefix}{SAFE_SUFFIX}":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                removed = True
    if removed:
        fsync_dir(folder)
