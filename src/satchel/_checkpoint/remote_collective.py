"""``CheckpointManager(url, process_group=group)``: collective saves to object storage (11.14).

The protocol is the local one (``collective.py``, SPEC 10): rank 0 owns the root (it removes
what interrupted saves left, decides retention, and writes the commit record); every rank
uploads its own pieces, or with ``incremental`` its new pool object, reusing the pieces the
newest step stored with the same bytes (``collective.Placer`` deciding, the store holding the
bytes); one ``all_gather`` agrees, and any failure makes every rank raise with nothing
committed. Only the destination differs: objects under ``<root>/step_<n>/<item>/`` published
one by one (no temporary folder, no rename), the commit record written last by rank 0 after
every rank's objects are complete. Restore reads on each rank only the pieces its targets'
boxes overlap, with ranged reads (SPEC 10.4, 11.2).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .._api import load
from .._dist.layout import LAYOUT_FILE, MAX_LAYOUT, parse_layout, pool_file_of
from .._dist.ranks import Pieces, take_pieces, write_pieces
from .._plan import Plan
from .._read.open import open_path
from .._remote.reader import pool_url
from .._remote.store import Store
from .._remote.url import join
from .._remote.writer import put_plan
from .._shards.pool import POOL_DIR
from ..errors import CheckpointExistsError, CheckpointNotFoundError, SatchelError
from . import targets as _targets
from .collective import (
    Placer,
    _word,
    fill_target,
    pooled_pieces,
    private_group,
    referenced_pool,
    take_all,
)
from .layout import EXTRA_ITEM, step_name
from .record import FileRecord, ItemRecord
from .remote_pool import RemotePool, read_record
from .view import RestoreResult

__all__ = ["restore", "save"]


def save(  # noqa: PLR0917 - the manager's save, as RemoteManager.save passes it on
    mgr: Any,
    step: int,
    items: dict[str, Any],
    metrics: dict[str, float],
    overwrite: bool,
    blocking: bool,
    incremental: bool,
) -> threading.Thread | None:
    """Every rank: save ``items`` as step ``step``; in the background (returned thread) unless
    ``blocking``, each rank's pieces first copied to host memory (SPEC 10.6)."""
    if blocking:
        _save(mgr, step, items, metrics, overwrite, mgr._group, incremental, None)
        return None
    if mgr._private is None:
        mgr._private = private_group(mgr._group)
    taken = take_all(items, mgr._group)

    def run() -> None:
        try:
            _save(mgr, step, items, metrics, overwrite, mgr._private, incremental, taken)
        except BaseException as e:  # raised by the next save/wait/close
            mgr._failed = e

    thread = threading.Thread(target=run, name=f"satchel-save-{step}", daemon=False)
    thread.start()
    return thread


def _save(  # noqa: PLR0917
    mgr: Any,
    step: int,
    items: dict[str, Any],
    metrics: dict[str, float],
    overwrite: bool,
    group: Any,
    incremental: bool,
    taken: dict[str, Pieces] | None,
) -> None:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    said: Any = None
    begun: Any = None
    if rank == 0:
        try:
            if not overwrite and mgr._committed(step):
                raise CheckpointExistsError(
                    f"{mgr.root}: step {step} exists; pass overwrite=True to replace it"
                )
            begun = mgr._begin(step, metrics, overwrite)
            newest = [i for i in begun[0] if i.record is not None][-1:]
            said = ("ok", join(mgr.root, str(newest[0].path)) if newest else None)
        except Exception as e:  # the others must hear of it before they upload anything
            said = f"rank 0: {type(e).__name__}: {e}"
    word = _word(said, group)
    if isinstance(word, str):
        raise SatchelError(f"distributed save of step {step} failed, nothing committed: {word}")
    folder = join(mgr.root, step_name(step))
    store: Store = mgr._store
    placers: list[_RemotePlacer] = []
    try:
        records = {}
        for name, value in items.items():
            placer = None
            if incremental:
                placer = _RemotePlacer(store, mgr.root, step, word[1], name, rank)
                placers.append(placer)
            if taken is None:
                pieces = take_pieces(value, rank=rank, world=world, copy=False)
            else:
                pieces = taken[name]
            written = write_pieces(
                pieces, _Prefix(store, join(folder, name)), group=group, pool=placer
            )
            records[name] = ItemRecord(
                tuple(FileRecord(w.name, w.size, w.xxh3) for w in written), name
            )
    except BaseException:
        _undo(mgr, folder, placers, rank)
        raise
    outcome: tuple[bool, str] | None = None
    if rank == 0:
        assert begun is not None
        committed = False
        try:
            mgr._commit(step, records, metrics, begun[1], referenced_pool(placers))
            committed = True
            mgr._after(step, begun[0], begun[1])
        except Exception as e:
            if not committed:
                _undo(mgr, folder, [], rank)
            outcome = (committed, f"rank 0: {type(e).__name__}: {e}")
    outcome = _word(outcome, group)
    if outcome is not None:
        committed, why = outcome
        if not committed:
            for p in placers:
                p.discard()
            raise SatchelError(f"distributed save of step {step} failed, nothing committed: {why}")
        raise SatchelError(f"distributed save of step {step} committed, then failed: {why}")


def _undo(mgr: Any, folder: str, placers: list[_RemotePlacer], rank: int) -> None:
    """After a failed save: each rank removes the pool objects it uploaded, rank 0 the step's
    objects (best effort: the next save removes what is left, SPEC 11.12-11.13)."""
    for p in placers:
        p.discard()
    if rank == 0:
        with contextlib.suppress(SatchelError):
            mgr._delete_prefix(folder)


class _Prefix:
    """A distributed item's objects under its prefix (``ranks.ItemSink``)."""

    def __init__(self, store: Store, url: str) -> None:
        self.store, self.url = store, url

    def piece(self, name: str, plan: Plan) -> tuple[int, str]:
        obj = put_plan(self.store, join(self.url, name), plan)
        return obj.size, obj.xxh3

    def layout(self, raw: bytes) -> None:
        self.store.put_small(join(self.url, LAYOUT_FILE), raw)


class _RemotePlacer(Placer):
    """One rank's incremental placement of one item's pieces, the pool in the store."""

    def __init__(  # noqa: PLR0917 - as Placer's
        self, store: Store, root: str, step: int, newest: str | None, item: str, rank: int
    ) -> None:
        self.store = store
        self.blobs = join(root, POOL_DIR)
        self.own: list[str] = []  # the pool objects this rank uploaded
        known = None
        previous: dict[str, str] = {}
        if newest is not None:
            try:
                record = read_record(store, newest, None)
                where = join(join(newest, item), LAYOUT_FILE)
                layout = parse_layout(store.read_all(where, MAX_LAYOUT), where=where)
            except SatchelError:
                pass  # nothing to reuse from a step this rank cannot read
            else:
                known = (newest, record)
                previous = pooled_pieces(layout)
        self._setup(RemotePool(store, root, step, known), step, rank, previous)

    def _write_new(self, name: str, plan: Plan) -> tuple[int, str]:
        self.own.append(name)
        obj = put_plan(self.store, join(self.blobs, name), plan)
        return obj.size, obj.xxh3

    def discard(self) -> None:
        for name in self.own:
            with contextlib.suppress(SatchelError):
                self.store.delete(join(self.blobs, name))


def restore(mgr: Any, step: int | None, targets: dict[str, Any]) -> RestoreResult:
    """Every rank: read the step rank 0 chose, only the pieces its targets need (SPEC 10.4)."""
    group = mgr._group
    rank = dist.get_rank(group)
    chosen: Any = None
    if rank == 0:
        chosen = _choose(mgr, step)
    chosen = _word(chosen, group)
    if not isinstance(chosen, int):
        raise CheckpointNotFoundError(str(chosen))
    folder = join(mgr.root, step_name(chosen))
    opts = mgr._options or None
    error = None
    items: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    record = None
    try:
        record = read_record(mgr._store, folder, chosen)
        rest: dict[str, Any] = {}
        for name, target in targets.items():
            rec = record.items.get(name)
            if rec is None:
                raise CheckpointNotFoundError(f"{folder}: has no item {name!r}")
            url = join(folder, str(rec.folder))
            if any(f.file == LAYOUT_FILE for f in rec.files) and _into(mgr, target, url, opts):
                continue
            rest[name] = target
        for name, rec in record.items.items():
            if name in rest or name == EXTRA_ITEM:
                items[name] = load(join(folder, rec.file), storage_options=opts)
        reports = _targets.apply({n: items[n] for n in rest}, rest)
    except Exception as e:  # every rank must know, or the ones that succeeded would go on
        error = f"rank {rank}: {type(e).__name__}: {e}"
    errors: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(errors, error, group=group)
    failed = [e for e in errors if e is not None]
    if failed:
        raise SatchelError(f"distributed restore of step {chosen} failed: " + "; ".join(failed))
    assert record is not None
    extra = items.pop(EXTRA_ITEM, None)
    path = Path(step_name(chosen))
    return RestoreResult(chosen, path, extra, record.metrics, items, reports, ())


def _choose(mgr: Any, step: int | None) -> int | str:
    """The newest committed step whose objects are all there with their recorded sizes (each
    rank verifies the pieces it reads), or why there is none."""
    try:
        for info in reversed(mgr._listing()):
            wanted = (step is None or info.step == step) and info.record is not None
            if wanted and mgr._problem(info.step, info.record, whole=False) is None:
                return int(info.step)
    except SatchelError as e:
        return str(e)
    which = "no committed checkpoint" if step is None else f"no valid step {step}"
    return f"{mgr.root}: {which} to restore"


def _into(mgr: Any, target: Any, url: str, opts: Any) -> bool:
    """A distributed item into a model or optimizer in place, this rank's boxes only."""
    where = join(url, LAYOUT_FILE)
    layout = parse_layout(mgr._store.read_all(where, MAX_LAYOUT), where=where)

    def open_piece(file: str) -> Any:
        pool = pool_file_of(file)
        piece = join(url, file) if pool is None else pool_url(url, pool)
        return open_path(piece, framework="torch", storage_options=opts)

    return fill_target(target, layout, url, open_piece)
