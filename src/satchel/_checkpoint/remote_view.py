"""The reading side of a checkpoint root in object storage (SPEC 11.9-11.11, 11.13).

``RemoteManager`` (the writer) is a ``RemoteView``: listings, validity, restore in one process.
A step is committed iff its commit record object parses; valid iff every object it lists (its
items' and its pool objects) exists with the recorded size and, when read whole, xxh3-64.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import xxhash

from .. import retention
from .._api import load
from .._remote.store import Store
from .._remote.url import join
from .._shards.pool import POOL_DIR
from ..errors import CheckpointNotFoundError, FormatError, SatchelError, SatchelFileNotFoundError
from . import targets as _targets
from .layout import EXTRA_ITEM, step_name, step_of
from .record import CommitRecord
from .remote_pool import NO_RECORD, read_record
from .view import CheckpointInfo, CheckpointWarning, RestoreResult, _rebuild, with_newest

__all__ = ["RemoteView"]

_RETRIES = 20  # listings taken while a writer commits or deletes: look again, briefly
_RECORD_RACES = 5  # of those, how many may follow a listing whose only fault is a missing record


class RemoteView:
    """A root in object storage as readers see it (no writing here)."""

    root: str
    _store: Store
    _options: dict[str, Any]

    def _committed(self, step: int) -> bool:
        return any(i.step == step and i.record is not None for i in self._listing())

    def _listing(self) -> list[CheckpointInfo]:
        """Every step prefix, oldest first, with its commit record (or why it has none)."""
        out = []
        for name in self._store.names(self.root):
            step = step_of(Path(name))
            if step is None:
                continue
            folder = join(self.root, name)
            try:
                record: CommitRecord | None = self._record(folder, step)
                problem = None
            except SatchelFileNotFoundError:
                record, problem = None, NO_RECORD
            except FormatError as e:
                record, problem = None, str(e)
            out.append(CheckpointInfo(step, Path(name), record, problem))
        return sorted(out, key=lambda i: i.step)

    def _record(self, folder: str, step: int) -> CommitRecord:
        return read_record(self._store, folder, step)

    def checkpoints(self, *, verify: bool = True, progress: Any = None) -> list[CheckpointInfo]:
        """Every step prefix, oldest first; with ``verify`` each committed step's objects are
        read whole and checked against the sizes and xxh3-64 its record lists. (``progress``
        is accepted for the local view's signature and not drawn.)"""
        out = []
        for info in self._listing():
            if verify and info.record is not None:
                problem = self._problem(info.step, info.record, whole=True)
                out.append(CheckpointInfo(info.step, info.path, info.record, problem))
            else:
                out.append(info)
        return out

    def steps(self) -> list[int]:
        """Committed steps, oldest first (their objects are not read)."""
        return [i.step for i in self._listing() if i.record is not None]

    def latest(self) -> int | None:
        s = self.steps()
        return s[-1] if s else None

    def check(self, step: int) -> str | None:
        """Why ``step`` is not a valid checkpoint (objects read whole), or ``None``."""
        for info in self._listing():
            if info.step == step:
                if info.record is None:
                    return info.problem
                return self._problem(step, info.record, whole=True)
        return f"no step {step}"

    def kept_by(self) -> dict[int, list[str]]:
        """For each committed step, the policies that keep it (``newest`` included), as the
        newest commit record names them (what a reader of the root sees, SPEC 8.11)."""
        committed = [i.record for i in self._listing() if i.record is not None]
        records = [retention.CheckpointRecord(r.step, r.metrics) for r in committed]
        newest = committed[-1] if committed else None
        policies = [_rebuild(n, newest.kept) for n in newest.retention] if newest else []
        return with_newest(retention.decide(policies, records), [r.step for r in committed])

    @property
    def retention(self) -> tuple[str, ...]:
        """The retention policies the newest commit record names."""
        committed = [i.record for i in self._listing() if i.record is not None]
        return committed[-1].retention if committed else ()

    def _problem(self, step: int, record: CommitRecord, *, whole: bool) -> str | None:
        """Every object the record lists exists with its size (and, ``whole``, its xxh3)."""
        folder = join(self.root, step_name(step))
        sizes = self._store.sizes(folder)
        for name, item in record.items.items():
            for f in item.files:
                rel = f.file if item.folder is None else f"{item.folder}/{f.file}"
                size = sizes.get(rel)
                if size is None:
                    return f"item {name}: object {rel} is missing"
                if size != f.size:
                    return f"item {name}: object {rel} is {size} bytes, the record says {f.size}"
                if whole and not self._same(join(folder, rel), size, f.xxh3):
                    return f"item {name}: object {rel} changed since the commit (xxh3)"
        blobs = join(self.root, POOL_DIR)
        pooled = self._store.sizes(blobs) if record.pool else {}
        for f in record.pool:  # SPEC 8.18 over a store: every pool object it lists
            size = pooled.get(f.file)
            if size is None:
                return f"pool object {POOL_DIR}/{f.file} is missing"
            if size != f.size:
                return f"pool object {POOL_DIR}/{f.file} is {size} bytes, the record says {f.size}"
            if whole and not self._same(join(blobs, f.file), size, f.xxh3):
                return f"pool object {POOL_DIR}/{f.file} changed since the commit (xxh3)"
        return None

    def _same(self, url: str, size: int, xxh3: str) -> bool:
        raw = self._store.read(url, 0, size) if size else b""
        return xxhash.xxh3_64_hexdigest(raw) == xxh3

    def _restore(self, step: int | None, targets: dict[str, Any]) -> RestoreResult:
        """One process's restore (``RemoteManager.restore`` without a process group)."""
        skipped: list[tuple[int, str]] = []
        for attempt in range(_RETRIES):
            skipped, vanished, missing = [], False, False
            infos = [i for i in self._listing() if step is None or i.step == step]
            for info in reversed(infos):
                if info.record is None:
                    skipped.append((info.step, info.problem or "no commit record"))
                    # Records are read one by one: a writer may have committed a step read
                    # before its record came and deleted an older one's record since. Only
                    # if nothing valid turns up does that count (a few fresh listings).
                    missing = missing or (info.problem == NO_RECORD and attempt < _RECORD_RACES)
                    continue
                try:
                    problem = self._problem(info.step, info.record, whole=False)
                    if problem is None:
                        items = self._load(info.step, info.record)
                except SatchelFileNotFoundError:
                    vanished = True  # retention deleted it while we read: not damage
                    continue
                except SatchelError as e:
                    problem = str(e)
                if problem is None:
                    for s, why in skipped:
                        msg = f"{self.root}: skipping step {s}: {why}"
                        warnings.warn(msg, CheckpointWarning, stacklevel=2)
                    return self._apply(info, items, targets, tuple(skipped))
                skipped.append((info.step, problem))
            if not (vanished or missing):
                break
            time.sleep(0.01 * (attempt + 1))
        detail = "; ".join(f"step {s}: {why}" for s, why in skipped) or "none saved"
        which = "no valid checkpoint" if step is None else f"step {step} is not a valid checkpoint"
        raise CheckpointNotFoundError(f"{self.root}: {which} to restore ({detail})")

    def _load(self, step: int, record: CommitRecord) -> dict[str, Any]:
        folder = join(self.root, step_name(step))
        opts = self._options or None
        return {
            n: load(join(folder, r.file), storage_options=opts) for n, r in record.items.items()
        }

    def _apply(
        self,
        info: CheckpointInfo,
        items: dict[str, Any],
        targets: dict[str, Any],
        skipped: tuple[tuple[int, str], ...],
    ) -> RestoreResult:
        record = info.record
        assert record is not None  # _listing gave it one
        missing = sorted(set(targets) - set(record.items))
        if missing:
            raise CheckpointNotFoundError(
                f"{self.root}/{info.path}: has no item {missing} (items: {sorted(record.items)})"
            )
        reports = _targets.apply(items, targets)
        extra = items.pop(EXTRA_ITEM, None)
        return RestoreResult(info.step, info.path, extra, record.metrics, items, reports, skipped)
