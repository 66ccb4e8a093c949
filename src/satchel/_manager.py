"""CheckpointManager: one folder per step, committed by a record written last (CHECKPOINTS.md).

A root holds ``step_00000100/`` folders. Each is built under a temp name, every file fsynced,
the commit record ``manifest.json`` written last, the folder renamed into place and the root
fsynced. A folder is a checkpoint only if its commit record is there; it is *valid* only if
every file it lists has the recorded size and xxh3-64. Writers take an OS file lock on
``root/.satchel.lock`` (released by the kernel if the process dies); readers never lock.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import secrets
import shutil
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from . import retention
from ._commit import CommitRecord, ItemRecord, check_files, read_commit, write_commit
from ._gcpause import paused_gc
from ._io.atomic import TMP_MARKER, fsync_dir
from ._io.writer import write_plan
from ._lock import WriterLock
from ._plan import plan_save
from ._rng import capture_rng
from ._snapshot import prepare_item, snapshot
from ._steps import (
    CheckpointInfo,
    CheckpointWarning,
    RestoreResult,
    apply_items,
    dirname,
    is_step_dir,
    step_of,
)
from .errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    SatchelError,
    UsageError,
)

__all__ = ["CheckpointManager"]

# Constructing through CheckpointManager.reader() must not create the root; a context variable
# keeps that out of the public constructor's signature.
_create_root: contextvars.ContextVar[bool] = contextvars.ContextVar("create_root", default=True)
_ITEM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_EXTRA = "extra"
_RACE_RETRIES = 5  # re-choose when a concurrent writer deletes the chosen step mid-restore


class CheckpointManager:
    """Periodic, crash-safe training checkpoints with retention and exact resume.

    Example::

        mgr = satchel.CheckpointManager("runs/exp1", keep_last=3)
        mgr.save(step, model=model, optimizer=opt, scheduler=sched, rng=True,
                 metrics={"val_loss": v}, extra={"epoch": epoch})
        restored = mgr.restore(model=model, optimizer=opt, scheduler=sched, rng=True)
        restored.step, restored.extra
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_last: int | None = None,
        keep_every: int | None = None,
        keep_best: tuple[str, Literal["min", "max"], int] | None = None,
    ) -> None:
        self.root = Path(root)
        if not _create_root.get(True):
            if not self.root.is_dir():
                raise CheckpointNotFoundError(f"{self.root}: no such checkpoint folder")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
        policies: list[retention.Policy] = []
        if keep_last is not None:
            policies.append(retention.KeepLast(_positive(keep_last, "keep_last")))
        if keep_every is not None:
            policies.append(retention.KeepEvery(_positive(keep_every, "keep_every")))
        if keep_best is not None:
            metric, mode, k = keep_best
            if mode not in ("min", "max"):
                raise UsageError(f"keep_best mode must be 'min' or 'max', got {mode!r}")
            policies.append(retention.KeepBest(metric, mode, _positive(k, "keep_best k")))
        self.policies: tuple[retention.Policy, ...] = tuple(policies)
        self._lock = WriterLock(self.root)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        # The last async snapshot, kept after its write to be copied into by the next one.
        self._spare: Any = None

    @classmethod
    def reader(cls, root: str | os.PathLike[str]) -> CheckpointManager:
        """A manager for reading an existing root (``steps``, ``restore``, ``checkpoints``).

        Unlike the constructor it never creates the folder.

        Raises:
            CheckpointNotFoundError: ``root`` is not a folder.
        """
        token = _create_root.set(False)
        try:
            mgr = cls(root)
        finally:
            _create_root.reset(token)
        # Retention rules are the writer's; the newest commit record says which they were.
        newest = [i for i in mgr.checkpoints(verify=False) if i.record is not None]
        if newest and newest[-1].record is not None:
            parsed = []
            for name in newest[-1].record.retention:
                with contextlib.suppress(ValueError):
                    parsed.append(retention.parse(name))
            mgr.policies = tuple(parsed)
        return mgr

    def kept_by(self) -> dict[int, list[str]]:
        """For each committed step, the retention rules that keep it (``newest`` included)."""
        infos = [i for i in self.checkpoints(verify=False) if i.record is not None]
        records = [retention.CheckpointRecord(i.step, i.record.metrics) for i in infos if i.record]
        kept = retention.decide(self.policies, records)
        if infos:
            kept.setdefault(infos[-1].step, []).append("newest")
        return {i.step: kept.get(i.step, []) for i in infos}

    # -- saving --------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        blocking: bool = True,
        metrics: Mapping[str, float] | None = None,
        extra: Any = None,
        overwrite: bool = False,
        **items: Any,
    ) -> None:
        """Save ``items`` (models, optimizers, schedulers, ``rng=True``, arrays...) as ``step``.

        With ``blocking=False`` the state is first copied to host memory (the caller may change
        its tensors right away) and written by a background thread; at most one save is in
        flight, and a background error is raised by the next ``save``/``wait``/``close``.

        Raises:
            CheckpointExistsError: ``step`` exists and ``overwrite`` is false.
            CheckpointLockedError: another process is saving to this root.
            UnsupportedObjectError: an item holds something satchel cannot store.
            OSError: the disk failed; the previous checkpoints are intact.
        """
        self.wait()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UsageError(f"step must be a non-negative int, got {step!r}")
        if not items:
            raise UsageError("save() needs at least one item, e.g. model=model")
        prepared = {name: self._prepare(name, value) for name, value in items.items()}
        if extra is not None:
            prepared[_EXTRA] = extra
        clean_metrics = _metrics(metrics)
        if not overwrite and (self.root / dirname(step)).exists():
            raise CheckpointExistsError(
                f"{self.root}: step {step} is already saved; pass overwrite=True to replace it"
            )
        if blocking:
            self._write(step, prepared, clean_metrics, overwrite)
            return
        frozen = snapshot(prepared, reuse=self._spare)
        self._spare = None
        self._thread = threading.Thread(
            target=self._background,
            args=(step, frozen, clean_metrics, overwrite),
            name=f"satchel-save-{step}",
            daemon=False,
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight (if any) is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        """Finish the save in flight and surface its error; release the snapshot buffers."""
        self._spare = None
        self.wait()
        self._spare = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, name: str, value: Any) -> Any:
        if not _ITEM_NAME.match(name) or name == _EXTRA:
            raise UsageError(
                f"item name {name!r} must be letters, digits, '_', '.', '-' and not {_EXTRA!r}"
            )
        if name == "rng" and value is True:
            return capture_rng()
        return prepare_item(value)

    def _background(
        self, step: int, items: dict[str, Any], metrics: dict[str, float], overwrite: bool
    ) -> None:
        try:
            self._write(step, items, metrics, overwrite)
        except BaseException as e:  # surfaced by the next save()/wait()/close()
            self._error = e
        else:
            self._spare = items

    def _write(
        self, step: int, items: dict[str, Any], metrics: dict[str, float], overwrite: bool
    ) -> None:
        with paused_gc():
            plans = {name: plan_save(value) for name, value in items.items()}
        with self._lock.hold(), paused_gc():
            self._clean_temps()
            final = self.root / dirname(step)
            if final.exists() and not overwrite:
                raise CheckpointExistsError(
                    f"{self.root}: step {step} is already saved; pass overwrite=True"
                )
            tmp = self.root / f".{final.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
            os.mkdir(tmp)
            try:
                records = {}
                for name, plan in plans.items():
                    written = write_plan(plan, tmp / f"{name}.satchel", file_digest=True)
                    records[name] = ItemRecord(f"{name}.satchel", written.size, written.xxh3)
                names = tuple(p.name for p in self.policies)
                write_commit(tmp, CommitRecord.new(step, records, metrics, names))
                fsync_dir(tmp)
                self._commit(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._apply_retention(step)

    def _commit(self, tmp: Path, final: Path) -> None:
        """Rename the finished folder into place (SPEC 8.5); with overwrite, the old one is
        moved aside first and put back if the new one cannot take its place."""
        old = self._stash(final) if final.exists() else None
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.rename(old, final)
            raise
        try:
            fsync_dir(self.root)
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def _stash(self, folder: Path) -> Path:
        """Rename a step folder to a temp name (durably), so no crash leaves half of it."""
        trash = self.root / f".trash-{folder.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(folder, trash)
        try:
            fsync_dir(self.root)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(trash, folder)
            raise
        return trash

    def _discard(self, folder: Path) -> None:
        """Delete a step folder: renamed away first, then removed."""
        trash = self._stash(folder)
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_temps(self) -> None:
        # Called with the writer lock held: no other writer is active, so every temp folder
        # here was left by a crashed or killed save.
        for p in self.root.iterdir():
            if TMP_MARKER in p.name:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()

    def _apply_retention(self, just_saved: int) -> None:
        infos = [i for i in self.checkpoints(verify=False) if i.record is not None]
        records = [retention.CheckpointRecord(i.step, i.record.metrics) for i in infos if i.record]
        kept = retention.decide(self.policies, records)
        protected = {just_saved}
        newer = [i.step for i in infos if i.step > just_saved]
        for step in sorted(newer, reverse=True):
            if self.check(step) is None:
                protected.add(step)
                break
        for info in infos:
            if info.step not in kept and info.step not in protected:
                self._discard(info.path)

    # -- reading (never takes the lock) --------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps with a commit record, oldest first (not verified; ``restore`` verifies)."""
        return [i.step for i in self.checkpoints(verify=False) if i.record is not None]

    def latest(self) -> int | None:
        """The newest committed step, or ``None``."""
        steps = self.steps()
        return steps[-1] if steps else None

    def checkpoints(self, *, verify: bool = True) -> list[CheckpointInfo]:
        """Every step folder, oldest first, with its commit record and (if verified) problem."""
        out = []
        for p in sorted(self.root.iterdir(), key=lambda q: q.name):
            step = step_of(p)
            if step is None or not is_step_dir(p):
                continue
            try:
                record = read_commit(p, expected_step=step)
            except (SatchelError, OSError) as e:
                out.append(CheckpointInfo(step, p, None, f"not committed: {e}"))
                continue
            problem = check_files(p, record) if verify else None
            out.append(CheckpointInfo(step, p, record, problem))
        return sorted(out, key=lambda i: i.step)

    def check(self, step: int) -> str | None:
        """Why ``step`` is not a valid checkpoint, or ``None`` when it is."""
        folder = self.root / dirname(step)
        try:
            record = read_commit(folder, expected_step=step)
        except (SatchelError, OSError) as e:
            return f"not committed: {e}"
        return check_files(folder, record)

    def restore(self, step: int | None = None, **targets: Any) -> RestoreResult:
        """Load a checkpoint into ``targets`` (same names as in ``save``) and return it.

        With no ``step`` the newest checkpoint that is committed *and* verifies is used; newer
        broken ones (no commit record, missing or corrupt files) are skipped with a
        :class:`CheckpointWarning` and listed in ``skipped``. Steps that a concurrent writer
        deletes while this runs are not reported; the choice is simply made again.

        Raises:
            CheckpointNotFoundError: no such (valid) checkpoint.
            StateMismatchError: a model does not fit the saved parameters.
        """
        if step is not None:
            problem = self.check(step)
            if problem is not None:
                raise CheckpointNotFoundError(f"{self.root}: step {step}: {problem}")
            return self._apply(step, self._read_step(step), targets, ())
        skipped: list[tuple[int, str]] = []
        for _attempt in range(_RACE_RETRIES):
            skipped, vanished = [], False
            for info in reversed(self.checkpoints(verify=False)):
                problem = info.problem or self.check(info.step)
                if problem is None:
                    try:
                        items = self._read_step(info.step)
                    except (SatchelError, OSError) as e:
                        problem = str(e)
                    else:
                        self._warn(skipped)
                        return self._apply(info.step, items, targets, tuple(skipped))
                if not info.path.exists():
                    vanished = True  # retention of a concurrent writer removed it: not damage
                    continue
                skipped.append((info.step, problem))
            # A listing taken while a writer renames (new step in, old step out) may miss both:
            # directory reads are not atomic. Look again, briefly, before concluding.
            if not vanished and skipped:
                break
            time.sleep(0.005 * (_attempt + 1))
        self._warn(skipped)
        detail = "; ".join(f"step {s}: {why}" for s, why in skipped) or "none saved"
        raise CheckpointNotFoundError(f"{self.root}: no valid checkpoint to restore ({detail})")

    def _warn(self, skipped: list[tuple[int, str]]) -> None:
        for s, why in skipped:
            warnings.warn(f"{self.root}: skipping step {s}: {why}", CheckpointWarning, stacklevel=3)

    def _read_step(self, step: int) -> tuple[CommitRecord, dict[str, Any]]:
        """The commit record and every item, mapped (so a later deletion cannot touch them)."""
        from ._api import load

        folder = self.root / dirname(step)
        record = read_commit(folder, expected_step=step)
        items = {name: load(folder / rec.file) for name, rec in record.items.items()}
        return record, items

    def _apply(
        self,
        step: int,
        read: tuple[CommitRecord, dict[str, Any]],
        targets: dict[str, Any],
        skipped: tuple[tuple[int, str], ...],
    ) -> RestoreResult:
        record, items = read
        folder = self.root / dirname(step)
        missing = sorted(set(targets) - set(record.items))
        if missing:
            raise CheckpointNotFoundError(
                f"{folder}: has no item {missing} (items: {sorted(record.items)})"
            )
        reports = apply_items(items, targets)
        extra = items.pop(_EXTRA, None)
        return RestoreResult(step, folder, extra, record.metrics, items, reports, skipped)


def _positive(n: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"{what} must be a positive int, got {n!r}")
    return n


def _metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError) as e:
            raise UsageError(f"metric {k!r} must be a number, got {v!r}") from e
    return out
