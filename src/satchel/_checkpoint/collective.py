"""``CheckpointManager(root, process_group=group)``: save and restore as collectives (SPEC 10).

Rank 0 owns the root: it holds the writer lock, prepares the step's temporary folder, writes
the commit record once every rank's pieces are on disk, and renames the step into place. The
other ranks only write their pieces. Decisions travel over the group with torch.distributed's
own collectives (a broadcast of rank 0's word, an all-gather of what each rank wrote), so a
failure anywhere makes every rank raise and nothing is committed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import _init_optim_state

from .._api import load
from .._dist.layout import LAYOUT_FILE, parse_layout
from .._dist.ranks import Pieces, read_into, take_pieces, write_item, write_pieces
from .._io.atomic import fsync_dir
from .._tree import unflatten
from ..errors import CheckpointNotFoundError, SatchelError
from . import targets as _targets
from .layout import EXTRA_ITEM, step_name
from .record import FileRecord, ItemRecord, read_commit
from .view import CheckpointRoot, RestoreResult

__all__ = ["private_group", "restore_collective", "save_collective", "take_all"]


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
) -> None:
    """Every rank: write its pieces of every item; rank 0 commits (SPEC 10.1-10.3).

    ``taken`` are the items' pieces already copied to host memory (an async save takes them
    on the caller's thread, then runs this in the background on the manager's own group).
    """
    rank = dist.get_rank(group)
    tmp: Path | None = None
    prepared: Any
    if rank == 0:
        try:
            prepared = mgr._begin(step, metrics, overwrite)
            tmp = prepared[0]
            for name in items:
                os.mkdir(tmp / name)
        except Exception as e:  # the others must hear of it before they write anything
            prepared = f"rank 0: {type(e).__name__}: {e}"
    else:
        prepared = None
    said = str(prepared[0]) if isinstance(prepared, tuple) else prepared
    word = _word(said if rank == 0 else None, group)
    if isinstance(word, str) and not word.startswith("/"):
        raise SatchelError(f"distributed save of step {step} failed, nothing committed: {word}")
    folder = Path(word)
    try:
        records = {}
        for name, value in items.items():
            if taken is None:
                written = write_item(value, folder / name, group=group)
            else:
                written = write_pieces(taken[name], folder / name, group=group)
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
            mgr._finish(step, folder, records, metrics, prepared[1], prepared[2])
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
    if hasattr(target, "named_parameters"):
        read_into(target.state_dict(), layout, item)
        return True
    if hasattr(target, "param_groups") and hasattr(target, "load_state_dict"):
        if not target.state_dict()["state"]:
            _init_state(target)
        state = target.state_dict()
        read_into(state["state"], layout, item, prefix="state")
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
