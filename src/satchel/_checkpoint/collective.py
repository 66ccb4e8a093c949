"""``CheckpointManager(root, process_group=group)``: save and restore as collectives (SPEC 10).

Rank 0 owns the root: it holds the writer lock, prepares the step's temporary folder, writes
the commit record once every rank's pieces are on disk, and renames the step into place. The
other ranks only write their pieces. Decisions travel over the group with torch.distributed's
own collectives (a broadcast of rank 0's word, an all-gather of what each rank wrote), so a
failure anywhere makes every rank raise and nothing is committed.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import _init_optim_state

from .._api import load
from .._dist.layout import (
    LAYOUT_FILE,
    MAX_LAYOUT,
    Layout,
    parse_layout,
    pool_file_of,
    pool_piece,
)
from .._dist.ranks import Pieces, read_into, take_pieces, write_pieces
from .._io.atomic import fsync_dir
from .._io.writer import write_plan
from .._plan import Plan, digests, plan_save
from .._shards.pool import POOL_DIR, pool_file_name
from .._tree import unflatten
from ..errors import CheckpointNotFoundError, SatchelError
from . import targets as _targets
from .files import open_folder, open_regular, read_at_most
from .incremental import Pool, make_pool_folder, newest_committed
from .layout import EXTRA_ITEM, step_name
from .record import FileRecord, ItemRecord, read_commit
from .view import CheckpointRoot, RestoreResult

__all__ = [
    "Placer",
    "fill_target",
    "pooled_pieces",
    "private_group",
    "referenced_pool",
    "restore_collective",
    "save_collective",
    "take_all",
]


def _word(value: Any, group: Any) -> Any:
    """Rank 0's ``value`` on every rank (a broadcast over the group)."""
    box = [value]
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def save_collective(
    mgr: Any,  # the CheckpointManager of rank 0 (its _begin and _finish)
    step: int,
    items: dict[str, Any],
    *,
    metrics: dict[str, float],
    overwrite: bool,
    group: Any,
    taken: dict[str, Pieces] | None = None,
    incremental: bool = False,
) -> None:
    """Every rank: write its pieces of every item; rank 0 commits (SPEC 10.1-10.3).

    ``taken`` are the items' pieces already copied to host memory (an async save takes them
    on the caller's thread, then runs this in the background on the manager's own group).
    """
    rank = dist.get_rank(group)
    tmp: Path | None = None
    prepared: Any
    said: Any = None
    if rank == 0:
        try:
            prepared = mgr._begin(step, metrics, overwrite)
            tmp = prepared[0]
            for name in items:
                os.mkdir(tmp / name)
            newest = newest_committed(prepared[1]) if incremental else None
            if incremental:
                make_pool_folder(mgr.root)  # once, before any rank writes into it
            said = (str(tmp), None if newest is None else str(newest[0]))
        except Exception as e:  # the others must hear of it before they write anything
            said = f"rank 0: {type(e).__name__}: {e}"
    word = _word(said, group)
    if isinstance(word, str):
        raise SatchelError(f"distributed save of step {step} failed, nothing committed: {word}")
    folder = Path(word[0])
    placers: list[Placer] = []
    try:
        records = {}
        for name, value in items.items():
            placer = None
            if incremental:
                placer = Placer(folder.parent, step, word[1], name, rank)
                placers.append(placer)
            if taken is None:
                pieces = take_pieces(value, rank=rank, world=dist.get_world_size(group), copy=False)
            else:
                pieces = taken[name]
            written = write_pieces(pieces, folder / name, group=group, pool=placer)
            files = tuple(FileRecord(w.name, w.size, w.xxh3) for w in written)
            records[name] = ItemRecord(files, name)
    except BaseException:
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    outcome = None
    if rank == 0:
        assert isinstance(prepared, tuple)
        try:
            for name in items:
                fsync_dir(folder / name)
            pool = referenced_pool(placers)
            if pool:
                fsync_dir(folder.parent / POOL_DIR)  # every rank's pool files, durably named
            mgr._finish(step, folder, records, metrics, prepared[1], prepared[2], pool)
        except Exception as e:
            shutil.rmtree(folder, ignore_errors=True)
            outcome = f"rank 0: {type(e).__name__}: {e}"
    outcome = _word(outcome, group)
    if outcome is not None:
        raise SatchelError(f"distributed save of step {step} failed, nothing committed: {outcome}")


def restore_collective(
    view: CheckpointRoot, step: int | None, targets: dict[str, Any], group: Any
) -> RestoreResult:
    """Every rank: read the step rank 0 chose, only the pieces its targets need (SPEC 10.4)."""
    rank = dist.get_rank(group)
    chosen: Any = None
    if rank == 0:
        try:
            chosen = _choose(view, step)
        except SatchelError as e:
            chosen = str(e)
    chosen = _word(chosen, group)
    if not isinstance(chosen, int):
        raise CheckpointNotFoundError(str(chosen))
    folder = view.root / step_name(chosen)
    record = read_commit(folder, expected_step=chosen)
    error = None
    items: dict[str, Any] = {}
    try:
        rest: dict[str, Any] = {}
        for name, target in targets.items():
            rec = record.items.get(name)
            if rec is None:
                raise CheckpointNotFoundError(f"{folder}: has no item {name!r}")
            distributed = rec.folder is not None and (folder / rec.folder / LAYOUT_FILE).is_file()
            if distributed and _into(target, folder / str(rec.folder)):
                continue
            rest[name] = target
        for name, rec in record.items.items():
            if name in rest or name == EXTRA_ITEM:
                items[name] = load(folder / rec.file)
        reports = _targets.apply({n: items[n] for n in rest}, rest)
    except Exception as e:  # every rank must know, or the ones that succeeded would go on
        error = f"rank {rank}: {type(e).__name__}: {e}"
        reports = {}
    errors: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(errors, error, group=group)
    failed = [e for e in errors if e is not None]
    if failed:
        raise SatchelError(f"distributed restore of step {chosen} failed: " + "; ".join(failed))
    extra = items.pop(EXTRA_ITEM, None)
    return RestoreResult(chosen, folder, extra, record.metrics, items, reports, ())


def _choose(view: CheckpointRoot, step: int | None) -> int:
    """The newest committed step whose files are all there with their recorded sizes (each
    rank verifies the pieces it reads: rank 0 does not read every byte of the checkpoint)."""
    for info in reversed(view.checkpoints(verify=False)):
        if step is not None and info.step != step:
            continue
        if info.record is None:
            continue
        if all(_sizes_ok(info.path, rec) for rec in info.record.items.values()):
            return info.step
    raise CheckpointNotFoundError(f"{view.root}: no committed checkpoint to restore")


def _sizes_ok(step_folder: Path, rec: ItemRecord) -> bool:
    base = step_folder / rec.folder if rec.folder else step_folder
    try:
        return all(os.stat(base / f.file).st_size == f.size for f in rec.files)
    except OSError:
        return False


def _into(target: Any, item: Path) -> bool:
    """Read a distributed item into a model or optimizer in place; False for other targets."""
    layout = parse_layout((item / LAYOUT_FILE).read_bytes(), where=str(item / LAYOUT_FILE))
    return fill_target(target, layout, item)


def fill_target(
    target: Any,
    layout: Layout,
    item: Path | str,
    open_piece: Callable[[str], Any] | None = None,
) -> bool:
    """:func:`_into` for a parsed layout; ``open_piece`` opens the pieces where ``item`` is not
    a local folder (its URL)."""
    if hasattr(target, "named_parameters"):
        read_into(target.state_dict(), layout, item, open_piece=open_piece)
        return True
    if hasattr(target, "param_groups") and hasattr(target, "load_state_dict"):
        if not target.state_dict()["state"]:
            _init_state(target)
        state = target.state_dict()
        read_into(state["state"], layout, item, prefix="state", open_piece=open_piece)
        saved = unflatten(layout.skeleton, lambda i: None, where=str(item))
        state["param_groups"] = saved["param_groups"]
        target.load_state_dict(state)
        return True
    return False


def _init_state(opt: Any) -> None:
    """An optimizer that has not stepped has no state to fill: make it, as DCP does."""
    _init_optim_state(opt)


def private_group(group: Any) -> Any:
    """A gloo group of the same ranks, for a background save's collectives: they must never
    interleave with the training's own collectives on ``group`` (SPEC 10.6). Made once per
    group and kept, as torch keeps its groups: creating one is itself a collective."""
    made = _PRIVATE.get(id(group))
    if made is not None and made[0] is group:
        return made[1]
    ranks = dist.get_process_group_ranks(group)
    if len(ranks) == dist.get_world_size():
        new = dist.new_group(ranks=ranks, backend="gloo")
    else:  # a subgroup: only its members call this, so they alone must agree on it
        new = dist.new_group(ranks=ranks, backend="gloo", use_local_synchronization=True)
    _PRIVATE[id(group)] = (group, new)
    return new


_PRIVATE: dict[int, tuple[Any, Any]] = {}  # user group -> its private group, per process


def take_all(items: dict[str, Any], group: Any) -> dict[str, Pieces]:
    """Every item's pieces on this rank, copied to host memory (no collective)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    return {name: take_pieces(v, rank=rank, world=world, copy=True) for name, v in items.items()}


class Placer:
    """One rank's incremental placement of one item's pieces (SPEC 10.7): a piece the newest
    committed step stored in the pool under the same key, with the same bytes, is reused;
    the others go into one new pool file of this rank."""

    def __init__(self, root: Path, step: int, newest: str | None, item: str, rank: int) -> None:
        known = None
        previous: dict[str, str] = {}
        if newest is not None:
            folder = Path(newest)
            try:
                record = read_commit(folder, expected_step=None)
                raw = _layout_bytes(folder / item / LAYOUT_FILE)
                layout = parse_layout(raw, where=str(folder / item / LAYOUT_FILE))
            except (SatchelError, OSError):
                pass  # nothing to reuse from a step this rank cannot read
            else:
                known = (folder, record)
                previous = pooled_pieces(layout)
        self._setup(Pool(root, step, known), step, rank, previous)

    def _setup(self, pool: Pool, step: int, rank: int, previous: dict[str, str]) -> None:
        """The state :meth:`place` decides from (an object-store placer, whose ``__init__``
        reads the newest step from the store, calls this too)."""
        self.step, self.rank, self.pool, self.previous = step, rank, pool, previous
        self.written: list[tuple[str, int, str]] = []
        self.reused: set[str] = set()

    def place(
        self, mine: dict[str, Any]
    ) -> tuple[dict[str, str], list[tuple[str, int, str]], list[str]]:
        plan = plan_save(mine)
        sums = dict(zip((s.name for s in plan.stored), digests(plan), strict=True))
        stored = {s.name: s for s in plan.stored}
        where: dict[str, str] = {}
        reused: set[str] = set()
        new: dict[str, Any] = {}
        for key, leaf in zip(mine, plan.leaves, strict=True):
            file = self.previous.get(key)
            whole = leaf.data == key and leaf.strides is None and leaf.offset == 0
            if file is not None and whole and self.pool.confirm(file, key, stored[key], sums[key]):
                where[key] = pool_piece(file)
                reused.add(file)
            else:
                new[key] = mine[key]
        written = []
        if new:
            name = pool_file_name(self.step, secrets.token_hex(4), self.rank + 1)
            size, digest = self._write_new(name, plan_save(new))
            written.append((name, size, digest))
            where.update((k, pool_piece(name)) for k in new)
        self.pool.close()
        return where, written, sorted(reused)

    def _write_new(self, name: str, plan: Plan) -> tuple[int, str]:
        """Write this rank's new pool file (fsynced; the folder is synced before the commit)."""
        out = write_plan(plan, self.pool.blobs / name, file_digest=True, sync_folder=False)
        return out.size, out.xxh3

    def gathered(self, written: list[tuple[str, int, str]], reused: set[str]) -> None:
        self.written, self.reused = written, reused

    def records(self) -> dict[str, FileRecord]:
        out = {name: FileRecord(name, size, digest) for name, size, digest in self.written}
        for file in self.reused:
            known = self.pool.known_file(file)
            if known is not None:
                out.setdefault(file, known)
        return out


def pooled_pieces(layout: Layout) -> dict[str, str]:
    """Piece key -> the pool file holding it, for the pieces ``layout`` has in the pool."""
    out = {}
    for t in layout.tensors:
        for p in t.pieces:
            file = pool_file_of(p.file)
            if file is not None:
                out[p.key] = file
    return out


def referenced_pool(placers: Sequence[Placer]) -> tuple[FileRecord, ...]:
    """Every pool file the step references, for its commit record (rank 0)."""
    out: dict[str, FileRecord] = {}
    for p in placers:
        out.update(p.records())
    return tuple(out[k] for k in sorted(out))


def _layout_bytes(path: Path) -> bytes:
    """An item's layout, opened as every file of a step (SPEC 8.12), bounded by its cap."""
    dir_fd = open_folder(path.parent, path.parent)
    try:
        fd = open_regular(dir_fd, path.name, str(path))
    finally:
        os.close(dir_fd)
    try:
        return read_at_most(fd, MAX_LAYOUT + 1)
    finally:
        os.close(fd)
