"""A read-only view of a checkpoint root: list, check, restore; never save, lock or create.

An evaluation job, ``satchel ls`` and ``satchel.verify`` read a root through this while a
training job keeps saving to it. Readers take no lock (SPEC 8.6), so everything here expects
step folders to appear and disappear between two directory reads: a listing that met a step
being renamed away is taken again, so that it always holds the newest committed step (SPEC
8.13), and a file that cannot be read makes its step invalid, never the reader fail (8.12).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._api import load
from .._progress import ProgressArg, reporter
from .._state import LoadReport
from ..errors import CheckpointNotFoundError, SatchelError
from ..retention import CheckpointRecord as RetentionRecord
from ..retention import Policy, Recorded, decide, parse
from . import targets as _targets
from .layout import EXTRA_ITEM, list_steps, step_name
from .record import CommitRecord, read_commit
from .validity import check_files

__all__ = ["CheckpointInfo", "CheckpointRoot", "CheckpointWarning", "RestoreResult"]

# Re-choose when a concurrent writer deletes the chosen step mid-restore. A writer committing
# every few ms with keep_last=1 beat 5 tries in ~15% of test_spec_8_13's runs on a loaded 2-core
# machine, 20 in none of 14; the backoff keeps the worst case near a second.
_RACE_RETRIES = 20
_LIST_RETRIES = 20  # list again when a writer renamed something in the root meanwhile


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped on restore because it is corrupt or incomplete."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One step folder as a reader sees it; ``problem`` is ``None`` for a valid checkpoint."""

    step: int
    path: Path
    record: CommitRecord | None
    problem: str | None

    @property
    def valid(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` loaded: the step, its extras and metrics, and what was skipped."""

    step: int
    path: Path
    extra: Any
    metrics: Mapping[str, float]
    items: Mapping[str, Any]
    reports: Mapping[str, LoadReport] = field(default_factory=dict)
    skipped: tuple[tuple[int, str], ...] = ()


class CheckpointRoot:
    """The checkpoints of a :class:`CheckpointManager` root, read only.

    It never takes the writer lock, never creates or deletes anything, and can follow a
    root that another process is saving to.

    Example::

        root = satchel.CheckpointRoot("runs/exp1")
        root.steps(), root.latest()
        [(i.step, i.problem) for i in root.checkpoints()]   # verified
        restored = root.restore(model=model)

    Raises:
        CheckpointNotFoundError: ``root`` is not a folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CheckpointNotFoundError(f"{self.root}: no such checkpoint folder")

    def __repr__(self) -> str:
        return f"CheckpointRoot({str(self.root)!r})"

    # -- listing -------------------------------------------------------------------------------
    def checkpoints(
        self, *, verify: bool = True, progress: ProgressArg = None
    ) -> list[CheckpointInfo]:
        """Every step folder, oldest first, with its commit record and problem.

        With ``verify`` every file is checked against the size and xxh3-64 its record lists
        (``progress`` reports those bytes); without, only the commit records are read.
        """
        out = self._listing()
        if not verify:
            return out
        total = sum(_size(i) for i in out)
        report = reporter(progress, total, f"verifying {self.root.name}")
        checked, done = [], 0
        seen: dict[Any, str | None] = {}  # pool files shared by steps are checked once
        for info in out:
            if info.record is None:
                checked.append(info)
                continue
            problem = check_files(info.path, info.record, pool_seen=seen)
            checked.append(CheckpointInfo(info.step, info.path, info.record, problem))
            done += _size(info)
            if report is not None:
                report(done)
        if report is not None:
            report(total)
        return checked

    def _listing(self) -> list[CheckpointInfo]:
        """Every step folder with its commit record, as of one moment (SPEC 8.13).

        A writer commits a step (a rename) before it deletes older ones (more renames), but a
        listing is a directory read followed by one record read per step: a step renamed away
        in between would leave a listing without the newest committed step, and a directory
        read long enough to need several system calls can miss a rename altogether. Either
        shows as a listed step folder that is gone, or as a root changed during the read;
        then the listing is taken again (a few times at most: a writer saves far less often).
        """
        out: list[CheckpointInfo] = []
        for attempt in range(_LIST_RETRIES):
            last = attempt == _LIST_RETRIES - 1
            before = _stamp(self.root)
            listed = list_steps(self.root)
            raced = _stamp(self.root) != before
            out = []
            for step, path in listed:
                try:
                    record = read_commit(path, expected_step=step)
                except (SatchelError, OSError) as e:
                    if not os.path.lexists(path):
                        raced = True  # renamed away by a writer since the listing
                        continue
                    raced = raced or (not last and _stamp(self.root) != before)  # replaced?
                    out.append(CheckpointInfo(step, path, None, f"not committed: {e}"))
                else:
                    out.append(CheckpointInfo(step, path, record, None))
            if not raced:
                break
        return out

    def steps(self) -> list[int]:
        """Steps with a commit record, oldest first (not verified; ``restore`` verifies)."""
        return [i.step for i in self.checkpoints(verify=False) if i.record is not None]

    def latest(self) -> int | None:
        """The newest committed step, or ``None``."""
        steps = self.steps()
        return steps[-1] if steps else None

    def check(self, step: int) -> str | None:
        """Why ``step`` is not a valid checkpoint, or ``None`` when it is."""
        folder = self.root / step_name(step)
        try:
            record = read_commit(folder, expected_step=step)
        except (SatchelError, OSError) as e:
            return f"not committed: {e}"
        return check_files(folder, record)

    # -- retention, as the writer recorded it --------------------------------------------------
    @property
    def retention(self) -> tuple[str, ...]:
        """The writer's retention policies, by name, as the newest commit record lists them."""
        newest = self._records()[1]
        return newest.retention if newest is not None else ()

    def kept_by(self) -> dict[int, list[str]]:
        """For each committed step, the retention policies that keep it (``newest`` included).

        The policies are those the newest commit record names: built-in ones are evaluated
        again; for a user's own, the steps it kept at that save are shown as recorded.
        """
        records, newest = self._records()
        policies = [_rebuild(n, newest.kept) for n in newest.retention] if newest else []
        return with_newest(decide(policies, records), [r.step for r in records])

    def _records(self) -> tuple[list[RetentionRecord], CommitRecord | None]:
        """What retention sees of each committed step, and the newest commit record."""
        committed = [i.record for i in self.checkpoints(verify=False) if i.record is not None]
        records = [RetentionRecord(r.step, r.metrics) for r in committed]
        return records, committed[-1] if committed else None

    # -- restoring -----------------------------------------------------------------------------
    def restore(self, step: int | None = None, **targets: Any) -> RestoreResult:
        """Load a checkpoint into ``targets`` (same names as in ``save``) and return it.

        With no ``step`` the newest checkpoint that is committed *and* verifies is used; newer
        broken ones (no commit record, missing or corrupt files) are skipped with a
        :class:`CheckpointWarning` and listed in ``skipped``. Steps that a concurrent writer
        deletes while this runs are not reported; the choice is simply made again (SPEC 8.8).
        A file that cannot be read (a permission, an I/O error, a FIFO) makes its step invalid
        like any other damage (SPEC 8.12).

        Raises:
            CheckpointNotFoundError: no such (valid) checkpoint.
            StateMismatchError: a model does not fit the saved parameters.
        """
        return self._restore(step, targets)

    def _restore(self, step: int | None, targets: dict[str, Any]) -> RestoreResult:
        # Called by restore and CheckpointManager.restore alike, so a warning three frames up
        # lands on the user's own call.
        if step is not None:
            problem = self.check(step)
            if problem is not None:
                raise CheckpointNotFoundError(f"{self.root}: step {step}: {problem}")
            return self._apply(step, self._read_step(step), targets, ())
        skipped: list[tuple[int, str]] = []
        for attempt in range(_RACE_RETRIES):
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
            time.sleep(0.005 * (attempt + 1))
        self._warn(skipped)
        detail = "; ".join(f"step {s}: {why}" for s, why in skipped) or "none saved"
        raise CheckpointNotFoundError(f"{self.root}: no valid checkpoint to restore ({detail})")

    def _warn(self, skipped: list[tuple[int, str]]) -> None:
        for s, why in skipped:
            msg = f"{self.root}: skipping step {s}: {why}"
            warnings.warn(msg, CheckpointWarning, stacklevel=4)

    def _read_step(self, step: int) -> tuple[CommitRecord, dict[str, Any]]:
        """The commit record and every item, mapped (so a later deletion cannot touch them).

        Called after :meth:`check` found every file regular, of its recorded size and digest.
        """
        folder = self.root / step_name(step)
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
        folder = self.root / step_name(step)
        missing = sorted(set(targets) - set(record.items))
        if missing:
            raise CheckpointNotFoundError(
                f"{folder}: has no item {missing} (items: {sorted(record.items)})"
            )
        reports = _targets.apply(items, targets)
        extra = items.pop(EXTRA_ITEM, None)
        return RestoreResult(step, folder, extra, record.metrics, items, reports, skipped)


def _rebuild(name: str, kept: Mapping[str, tuple[int, ...]]) -> Policy:
    """The policy a commit record names: a built-in, or what a user's own one kept."""
    try:
        return parse(name)
    except ValueError:
        return Recorded(name, frozenset(kept.get(name, ())))


def _stamp(root: Path) -> tuple[int, int]:
    """What changes whenever an entry of ``root`` is created, renamed or deleted."""
    st = os.stat(root)
    return st.st_mtime_ns, st.st_ctime_ns


def _size(info: CheckpointInfo) -> int:
    return info.record.size if info.record else 0


def with_newest(kept: Mapping[int, list[str]], committed: list[int]) -> dict[int, list[str]]:
    """``kept`` for every committed step, the newest one marked ``newest`` (never deleted)."""
    out = {s: list(kept.get(s, [])) for s in committed}
    if committed:
        out[committed[-1]].append("newest")
    return out
