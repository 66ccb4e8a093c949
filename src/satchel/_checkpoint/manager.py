"""CheckpointManager: one folder per step, committed by a record written last (SPEC 8).

Each step is built under a temp name, every file fsynced, the commit record written last, the
folder renamed into place and the root fsynced (SPEC 8.5). A manager holds the root's writer
lock from the moment it is made until ``close()`` (SPEC 8.6); reading goes through
:class:`CheckpointRoot`, which never locks.

A save that fails in the background is raised by the next ``save``/``wait``/``close``; if the
process ends first, it is reported on stderr at exit (SPEC 8.14, ``open_writers``). With
``max_shard_size``, items too large for one shard are written as folders of shards (SPEC 8.15,
``items``). With ``incremental=True`` a save writes only the tensors the newest committed step
did not store; the rest are referenced in the root's pool (SPEC 8.17-8.19, ``incremental``),
whose unreferenced files are collected under the lock (``collect``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .. import retention
from .._gcpause import paused_gc
from .._io.atomic import fsync_dir, replace_folder
from .._io.oserror import make_folder, os_errors
from .._remote.url import is_url
from .._shards.names import parse_size
from ..errors import CheckpointExistsError, SatchelError, UsageError
from . import open_writers
from .collect import collect
from .incremental import Pool, newest_committed
from .items import plan_item, write_item
from .layout import is_temp, step_name, temp_path, trash_path
from .lock import WriterLock
from .options import How, decide, flag, own_kept, policies_of, save_request
from .record import CommitRecord, FileRecord, ItemRecord, write_commit
from .remote import RemoteManager
from .snapshot import snapshot
from .view import CheckpointInfo, CheckpointRoot, RestoreResult, with_newest

__all__ = ["CheckpointManager"]


class CheckpointManager:
    """Periodic, crash-safe training checkpoints with retention and exact resume.

    A checkpoint survives retention when any policy keeps it: ``keep_last``, ``keep_every``,
    ``keep_best`` and the :class:`~satchel.retention.Policy` objects in ``policies``, in that
    order. With no policy every checkpoint is kept. The root is created if missing.

    With ``max_shard_size`` (bytes, or ``"500MB"``/``"2GiB"`` as transformers spells it; ``save``
    may override it) an item whose tensors do not fit in one shard is saved as a folder
    ``<item>/`` of shards and an index in the Hugging Face layout, which ``satchel.load`` and
    transformers read; smaller items stay one file each.

    With ``incremental=True`` (or ``save(..., incremental=True)``) a tensor whose bytes the
    newest committed step already stored is not written again: each item holding tensors is
    an index into the root's pool folder ``blobs/``, where a save adds only the tensors it did
    not find (same length and xxh3-64, then the same bytes). A fine-tuning run whose frozen
    backbone is most of the state writes the backbone once. Every step still loads, verifies
    and converts on its own; retention deletes a pool file once no kept step references it.

    A manager is the root's one writer: it takes the writer lock when it is made and holds it
    until :meth:`close` (or the end of a ``with`` block, or its process), so a second manager
    on the same root, in this process or another, is refused at once. Read a root another
    process writes to with :class:`CheckpointRoot`, which needs no lock.

    Example::

        with satchel.CheckpointManager("runs/exp1", keep_last=3) as mgr:
            restored = mgr.restore(model=model, optimizer=opt, scheduler=sched, rng=True)
            for step in range(restored.step + 1, steps):
                ...
                mgr.save(step, model=model, optimizer=opt, scheduler=sched, rng=True,
                         metrics={"val_loss": v}, extra={"epoch": epoch}, blocking=False)

    Raises:
        CheckpointLockedError: another manager holds the root; the message names it (pid,
            host, since when).
        FormatError: the root's lock file is a link or not a regular file.
        UsageError: a retention argument is out of range, a policy lacks ``name``/``keep``,
            or ``max_shard_size`` is not a positive size, or ``incremental`` is not a bool.
    """

    def __new__(cls, root: Any = None, *args: Any, **kwargs: Any) -> Any:
        # SPEC 11.9: a URL root (s3://...) is a root in object storage, kept by RemoteManager
        # (no rename there: a commit record written last); storage_options= go to fsspec.
        if is_url(root):
            return RemoteManager(str(root), *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_last: int | None = None,
        keep_every: int | None = None,
        keep_best: tuple[str, Literal["min", "max"], int] | None = None,
        policies: Iterable[retention.Policy] = (),
        max_shard_size: int | str | None = None,
        process_group: Any = None,
        incremental: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if storage_options:  # a URL root never gets here (__new__): SPEC 11.9
            raise UsageError(f"{root}: storage_options apply to URL roots (s3://...) only")
        self.root = Path(root)
        self.incremental = flag(incremental, "incremental")
        # SPEC 10.1: with a process group, save and restore are collective; rank 0 owns the
        # root (lock, temp folder, commit record) and every rank writes its own pieces.
        self._group = process_group
        self._rank = 0 if process_group is None else _rank_in(process_group)
        self._private: Any = None  # the background saves' own group, made at the first one
        self.max_shard_size = None if max_shard_size is None else parse_size(max_shard_size)
        self.policies: tuple[retention.Policy, ...] = policies_of(
            keep_last, keep_every, keep_best, policies
        )
        self._thread: threading.Thread | None = None
        # The background save that failed, not yet raised: (step, error).
        self._failed: tuple[int, BaseException] | None = None
        # The last async snapshot, kept after its write to be copied into by the next one.
        self._spare: Any = None
        self._lock: WriterLock | RankLock
        failure: BaseException | None = None
        if self._rank == 0:
            try:
                make_folder(self.root, doing="create the checkpoint root")  # a file: ENOTDIR
                with os_errors(self.root, "lock the checkpoint root"):
                    self._lock = WriterLock(self.root)  # last: a refused manager holds nothing
            except BaseException as e:
                failure = e
        else:
            self._lock = RankLock()  # rank 0 holds the root's lock for the whole group
        if process_group is not None:
            # The other ranks go on only once rank 0 has the root (made and locked), and all
            # fail together when it could not: none may wait for a rank 0 that gave up.
            said = _rank0_says(None if failure is None else str(failure), process_group)
            if said is not None and failure is None:
                self._lock.release()
                raise SatchelError(f"{self.root}: rank 0 could not open the root: {said}")
        if failure is not None:
            raise failure
        self._view = CheckpointRoot(self.root)
        open_writers.add(self)

    def __repr__(self) -> str:
        state = "open" if self._lock.held else "closed"
        return f"CheckpointManager({str(self.root)!r}, {state})"

    # -- saving --------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        blocking: bool = True,
        metrics: Mapping[str, float] | None = None,
        extra: Any = None,
        overwrite: bool = False,
        max_shard_size: int | str | None = None,
        incremental: bool | None = None,
        **items: Any,
    ) -> None:
        """Save ``items`` (models, optimizers, schedulers, ``rng=True``, arrays...) as ``step``.

        With ``blocking=False`` the state is first copied to host memory (the caller may change
        its tensors right away) and written by a background thread; at most one save is in
        flight, and a background error is raised by the next ``save``/``wait``/``close``.
        ``max_shard_size`` and ``incremental`` override the manager's for this save (``None``:
        the manager's).

        Raises:
            CheckpointExistsError: ``step`` exists and ``overwrite`` is false.
            UsageError: the manager is closed (or was made by the process this one forked from),
                or ``max_shard_size`` is not a positive size.
            UnsupportedObjectError: an item holds something satchel cannot store.
            OSError: the disk failed; the previous checkpoints are intact.
        """
        self._check_open()
        self.wait()
        req = save_request(
            step,
            items,
            extra=extra,
            metrics=metrics,
            max_shard_size=max_shard_size,
            incremental=incremental,
            defaults=How(self.max_shard_size, self.incremental),
        )
        prepared, clean_metrics, how = req.items, req.metrics, req.how
        if self._group is not None:
            self._save_collective(
                step, prepared, clean_metrics, overwrite, blocking, incremental=how.incremental
            )
            return
        if not overwrite:
            _refuse_existing(self.root, step)
        if blocking:
            self._write(step, prepared, clean_metrics, overwrite, how)
            return
        frozen = snapshot(prepared, reuse=self._spare)
        self._spare = None
        self._thread = threading.Thread(
            target=self._background,
            args=(step, frozen, clean_metrics, overwrite, how),
            name=f"satchel-save-{step}",
            daemon=False,
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight (if any) is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failed is not None:
            (_, err), self._failed = self._failed, None
            raise err

    def close(self) -> None:
        """Finish the save in flight, then release the writer lock and the snapshot buffers.

        The lock is released even when that save failed (its error is raised here). Closing
        again does nothing; reading (``steps``, ``restore``...) still works, saving does not.
        """
        self._spare = None
        try:
            self.wait()
        finally:
            self._spare = None
            if self._thread is None:  # never while a save may still write (an interrupted join)
                self._lock.release()
                open_writers.discard(self)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without close(): the lock goes with the manager, and a background failure
        # nobody waited for is reported rather than lost. (A save in flight keeps its manager
        # alive, so it has finished by now.)
        failed = getattr(self, "_failed", None)
        if failed is not None:
            self._failed = None
            open_writers.report(self.root, *failed)
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def _check_open(self) -> None:
        if self._lock.held:
            return
        if self._lock.pid != os.getpid():
            raise UsageError(
                f"{self.root}: this CheckpointManager belongs to process {self._lock.pid}, "
                "which this one was forked from; make a CheckpointManager here to save"
            )
        raise UsageError(f"{self.root}: this CheckpointManager is closed; make a new one to save")

    def _save_collective(
        self,
        step: int,
        items: dict[str, Any],
        metrics: dict[str, float],
        overwrite: bool,
        blocking: bool,
        *,
        incremental: bool,
    ) -> None:
        from .collective import private_group, save_collective, take_all

        if blocking:
            save_collective(
                self,
                step,
                items,
                metrics=metrics,
                overwrite=overwrite,
                group=self._group,
                incremental=incremental,
            )
            return
        # SPEC 10.6: each rank stalls only to copy its own pieces to host memory; the writes,
        # the agreement and the commit run in the background on a group of their own.
        if self._private is None:
            self._private = private_group(self._group)
        taken = take_all(items, self._group)
        kwargs = {
            "metrics": metrics,
            "overwrite": overwrite,
            "group": self._private,
            "incremental": incremental,
        }

        def run() -> None:
            try:
                save_collective(self, step, items, taken=taken, **kwargs)
            except BaseException as e:  # surfaced by the next save()/wait()/close()
                self._failed = (step, e)

        self._thread = threading.Thread(target=run, name=f"satchel-save-{step}", daemon=False)
        self._thread.start()

    def _background(
        self,
        step: int,
        items: dict[str, Any],
        metrics: dict[str, float],
        overwrite: bool,
        how: How,
    ) -> None:
        try:
            self._write(step, items, metrics, overwrite, how)
        except BaseException as e:  # surfaced by the next save()/wait()/close(), or at exit
            self._failed = (step, e)
        else:
            self._spare = items

    def _finish_at_exit(self) -> None:
        """Finish the save in flight and report its failure on stderr (SPEC 8.14)."""
        if self._thread is not None:
            self._thread.join()  # Python has joined it already; only a daemon would be running
            self._thread = None
        failed, self._failed = self._failed, None
        if failed is not None:
            open_writers.report(self.root, *failed)
        self._lock.release()

    def _disown(self) -> None:
        self._failed = None  # the parent reports its own failures
        self._lock.release()  # in a child: closes its copy, leaves the parent's lock alone

    def _write(
        self,
        step: int,
        items: dict[str, Any],
        metrics: dict[str, float],
        overwrite: bool,
        how: How,
    ) -> None:
        with paused_gc():  # planning builds many small objects; writing builds none
            plans = [
                plan_item(name, value, max_shard_size=how.limit, incremental=how.incremental)
                for name, value in items.items()
            ]
        tmp, others, kept = self._begin(step, metrics, overwrite)
        pool = None
        try:
            with os_errors(self.root, f"save step {step}"):
                if any(p.pooled is not None for p in plans):
                    # SPEC 8.17: reuse what the newest committed step stored.
                    pool = Pool(self.root, step, newest_committed(others))
                records = {plan.name: write_item(plan, tmp, pool=pool) for plan in plans}
                # Every new pool file durable before the commit record names it (SPEC 8.18).
                referenced = pool.finish() if pool is not None else ()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if pool is not None:
                pool.discard()
            raise
        self._finish(step, tmp, records, metrics, others, kept, referenced)

    def _begin(
        self, step: int, metrics: Mapping[str, float], overwrite: bool
    ) -> tuple[Path, list[CheckpointInfo], dict[int, list[str]]]:
        """Start saving ``step``: clean up, decide retention, make the step's temp folder.

        Returns the temp folder (the caller writes and fsyncs every item into it, then calls
        :meth:`_finish`, or removes it), the other committed steps and the retention decision.
        """
        self._check_open()  # held since __init__: no other writer can be at work in the root
        # A disk error anywhere in the save is a SatchelOSError naming the root (DiskFullError...).
        with os_errors(self.root, f"save step {step}"):
            self._clean_temps()
            collect(self.root)  # SPEC 8.19: what a killed save left in the pool
            if not overwrite:
                _refuse_existing(self.root, step)
            # Decided before anything is written, so a failing user policy costs no files; the
            # decision goes into the commit record and is carried out after the commit.
            others = [i for i in self._view.checkpoints(verify=False) if i.step != step]
            kept = decide(self.policies, others, step, metrics)
            tmp = temp_path(self.root, step)
            os.mkdir(tmp)
        return tmp, others, kept

    def _finish(  # noqa: PLR0917 - the save's parts in order, as collective.py passes them
        self,
        step: int,
        tmp: Path,
        records: Mapping[str, ItemRecord],
        metrics: Mapping[str, float],
        others: Sequence[CheckpointInfo],
        kept: Mapping[int, list[str]],
        pool: tuple[FileRecord, ...] = (),
    ) -> None:
        """Commit ``step`` from ``tmp``, whose every item file (and every new pool file it
        references) is written and fsynced: the commit record last, the rename (SPEC 8.5),
        then retention and the pool's collection (SPEC 8.19). On an error before the rename
        ``tmp`` is removed."""
        with os_errors(self.root, f"save step {step}"):
            try:
                names = tuple(p.name for p in self.policies)
                record = CommitRecord.new(
                    step, records, metrics, names, own_kept(self.policies, kept), pool=pool
                )
                write_commit(tmp, record)
                fsync_dir(tmp)
                # SPEC 8.5; with overwrite the old folder is put back if the rename fails (8.10).
                replace_folder(tmp, self.root / step_name(step))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            # SPEC 8.13: the new step is in place (and durable) before any old one is renamed
            # away, so a reader listing the root meanwhile always finds a committed step.
            self._apply_retention(step, others, kept)
            # SPEC 8.19: then the pool files only the deleted steps referenced.
            collect(self.root)

    def _stash(self, folder: Path) -> Path:
        """Rename a step folder (or whatever has its name) to a temp name, durably, so no crash
        leaves half of it under a step name (SPEC 8.7)."""
        trash = trash_path(folder)
        os.rename(folder, trash)
        try:
            fsync_dir(self.root)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(trash, folder)
            raise
        return trash

    def _clean_temps(self) -> None:
        # Called with the writer lock held: no other writer is active, so every temp entry
        # here was left by a crashed or killed save (SPEC 8.7).
        for p in self.root.iterdir():
            if is_temp(p):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()

    def _apply_retention(
        self, just_saved: int, infos: Sequence[CheckpointInfo], kept: Mapping[int, list[str]]
    ) -> None:
        # SPEC 8.9: the step just saved and the newest valid step are never deleted.
        protected = {just_saved}
        newer = [i.step for i in infos if i.step > just_saved and i.record is not None]
        for s in sorted(newer, reverse=True):
            if self._view.check(s) is None:
                protected.add(s)
                break
        for info in infos:
            if info.record is not None and info.step not in kept and info.step not in protected:
                _discard(self._stash(info.path))

    # -- reading (never takes the lock; the same as CheckpointRoot) ----------------------------
    def kept_by(self) -> dict[int, list[str]]:
        """For each committed step, the retention policies that keep it (``newest`` included)."""
        records = self._view._records()[0]
        return with_newest(retention.decide(self.policies, records), [r.step for r in records])

    def steps(self) -> list[int]:
        """Steps with a commit record, oldest first (not verified; ``restore`` verifies)."""
        return self._view.steps()

    def latest(self) -> int | None:
        """The newest committed step, or ``None``."""
        return self._view.latest()

    def checkpoints(self, *, verify: bool = True) -> list[CheckpointInfo]:
        """Every step folder, oldest first, with its commit record and (if verified) problem."""
        return self._view.checkpoints(verify=verify)

    def check(self, step: int) -> str | None:
        """Why ``step`` is not a valid checkpoint, or ``None`` when it is."""
        return self._view.check(step)

    def restore(self, step: int | None = None, **targets: Any) -> RestoreResult:
        """Load a checkpoint into ``targets``; see :meth:`CheckpointRoot.restore`.

        Raises:
            CheckpointNotFoundError: no such (valid) checkpoint.
            StateMismatchError: a model does not fit the saved parameters.
        """
        if self._group is not None:
            from .collective import restore_collective

            self.wait()  # a background save of this group finishes first, on every rank
            return restore_collective(self._view, step, targets, self._group)
        return self._view._restore(step, targets)


def _refuse_existing(root: Path, step: int) -> None:
    final = root / step_name(step)
    if os.path.lexists(final):  # a link counts, even a dangling one: the rename would fail
        raise CheckpointExistsError(
            f"{root}: step {step} exists ({final.name}); pass overwrite=True to replace it"
        )


def _discard(path: Path) -> None:
    """Delete a stashed entry: a real folder with all it holds, anything else (a file a user
    left, a link) by its name only, never what a link points to."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class RankLock:
    """What a rank other than 0 holds: nothing on disk (rank 0 holds the root's lock)."""

    def __init__(self) -> None:
        self.held = True
        self.pid = os.getpid()

    def release(self) -> None:
        self.held = False


def _rank_in(group: Any) -> int:
    import torch.distributed as dist

    return int(dist.get_rank(group))


def _rank0_says(word: str | None, group: Any) -> str | None:
    import torch.distributed as dist

    box = [word]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    return box[0]
