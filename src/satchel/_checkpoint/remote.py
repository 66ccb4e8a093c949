"""``CheckpointManager(url)``: checkpoints in object storage, where there is no rename (SPEC 11.9).

A step is the prefix ``<root>/<step_name(n)>/``; its items are objects written there directly
(each atomic on its own, SPEC 11.4), and the step is valid only when its commit record
(``layout.COMMIT_FILE``) exists, written last, listing every object with its size and
whole-object xxh3-64. Readers ignore a step without one. Retention deletes a step's commit
record before its objects, so a reader never takes a half-deleted step for a valid one. A save
first removes the objects (and unfinished multipart uploads) of every step without a commit
record: what an interrupted save left.

The commit record is the local one (``record.py``), byte for byte. The object store offers no
lock, so one writer per root is the caller's rule here (the local manager's lock file has no
object-store equivalent every store supports); readers need none.

It lives in ``_checkpoint`` rather than ``_remote`` because ``manager.py`` hands URL roots to it:
a module outside this package importing ``_checkpoint``'s modules would close an import cycle.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import xxhash

from .. import retention
from .._api import load
from .._remote.store import Store, open_store
from .._remote.upload import abort_under
from .._remote.url import StorageOptions, join
from .._remote.writer import save_url
from .._shards.names import parse_size
from ..errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    FormatError,
    SatchelError,
    SatchelFileNotFoundError,
    UsageError,
)
from . import targets as _targets
from .layout import COMMIT_FILE, EXTRA_ITEM, item_file, step_name, step_of
from .record import CommitRecord, FileRecord, ItemRecord, read_commit, write_commit
from .snapshot import snapshot
from .view import CheckpointInfo, CheckpointWarning, RestoreResult, _rebuild, with_newest

__all__ = ["RemoteManager"]

_RETRIES = 20  # listings taken while a writer commits or deletes: look again, briefly


class RemoteManager:
    """What ``CheckpointManager(url, ...)`` returns: the manager's public methods over a root in
    object storage (see the module docstring). ``storage_options`` go to fsspec.

    Not (yet) on object storage: ``process_group``, ``incremental``, the writer lock.
    """

    def __init__(
        self,
        root: str,
        *,
        storage_options: StorageOptions = None,
        keep_last: int | None = None,
        keep_every: int | None = None,
        keep_best: tuple[str, Literal["min", "max"], int] | None = None,
        policies: Iterable[retention.Policy] = (),
        max_shard_size: int | str | None = None,
        process_group: Any = None,
        incremental: bool = False,
    ) -> None:
        if process_group is not None or incremental is not False:
            raise UsageError(
                f"{root}: process_group and incremental are not supported on object storage yet"
            )
        self.root = root.rstrip("/")
        self._options = dict(storage_options or {})
        self._store: Store = open_store(self.root, storage_options)
        self.max_shard_size = None if max_shard_size is None else parse_size(max_shard_size)
        self.policies = _policies(keep_last, keep_every, keep_best, policies)
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"CheckpointManager({self.root!r}, {'closed' if self._closed else 'open'})"

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
        **items: Any,
    ) -> None:
        """As :meth:`CheckpointManager.save`; the commit record is the last object written.

        Raises:
            CheckpointExistsError: ``step`` is committed and ``overwrite`` is false.
            UsageError: closed manager, bad step, no items, bad ``max_shard_size``.
            SatchelOSError: the store failed; no new step is committed, older ones are intact.
        """
        if self._closed:
            raise UsageError(f"{self.root}: this CheckpointManager is closed")
        self.wait()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UsageError(f"step must be a non-negative int, got {step!r}")
        if not items:
            raise UsageError("save() needs at least one item, e.g. model=model")
        limit = self.max_shard_size if max_shard_size is None else parse_size(max_shard_size)
        prepared = {name: _targets.prepare(name, value) for name, value in items.items()}
        if extra is not None:
            prepared[EXTRA_ITEM] = extra
        clean = _metrics(metrics)
        if not overwrite and self._committed(step):
            raise CheckpointExistsError(
                f"{self.root}: step {step} exists; pass overwrite=True to replace it"
            )
        if blocking:
            self._write(step, prepared, clean, overwrite, limit)
            return
        frozen = snapshot(prepared)  # the caller may change its tensors once save returns

        def run() -> None:
            try:
                self._write(step, frozen, clean, overwrite, limit)
            except BaseException as e:  # raised by the next save/wait/close
                self._failed = e

        self._thread = threading.Thread(target=run, name=f"satchel-save-{step}", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight is committed; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._failed is not None:
            err, self._failed = self._failed, None
            raise err

    def close(self) -> None:
        """Wait for the save in flight; the manager saves nothing more."""
        if not self._closed:
            try:
                self.wait()
            finally:
                self._closed = True

    def __enter__(self) -> RemoteManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(
        self,
        step: int,
        items: Mapping[str, Any],
        metrics: dict[str, float],
        overwrite: bool,
        limit: int | None,
    ) -> None:
        folder = join(self.root, step_name(step))
        infos = self._listing()
        self._remove_uncommitted(infos, keep=step)
        if overwrite and self._committed(step):
            self._delete_step(step)  # the record first: the old step is invalid from here on
        others = [i for i in infos if i.step != step and i.record is not None]
        kept = _decide(self.policies, others, step, metrics)
        records: dict[str, ItemRecord] = {}
        try:
            for name, value in items.items():
                records[name] = self._write_item(folder, name, value, limit)
            names = tuple(p.name for p in self.policies)
            record = CommitRecord.new(step, records, metrics, names, _own(self.policies, kept))
            self._store.put_small(join(folder, COMMIT_FILE), encode_commit(record))  # the commit
        except BaseException:
            # Best effort: what cannot be deleted now (the store is gone) the next save removes.
            with contextlib.suppress(SatchelError):
                self._delete_prefix(folder)
            raise
        self._retain(step, others, kept)

    def _write_item(self, folder: str, name: str, value: Any, limit: int | None) -> ItemRecord:
        if limit is None:
            (obj,) = save_url(value, join(folder, item_file(name)), storage_options=self._options)
            return ItemRecord.single(item_file(name), obj.size, obj.xxh3)
        url = join(folder, name)
        written = save_url(value, url, max_shard_size=limit, storage_options=self._options)
        files = tuple(FileRecord(o.url.rpartition("/")[2], o.size, o.xxh3) for o in written)
        return ItemRecord(files, folder=name)

    def _retain(
        self, saved: int, others: list[CheckpointInfo], kept: Mapping[int, list[str]]
    ) -> None:
        # SPEC 8.9: the step just saved and the newest valid newer step are never deleted.
        newer = sorted((i.step for i in others if i.step > saved), reverse=True)
        protected = {saved, *newer[:1]}
        for info in others:
            if info.step not in kept and info.step not in protected:
                self._delete_step(info.step)

    def _delete_step(self, step: int) -> None:
        """The commit record first (SPEC 11.10), then every object of the step."""
        folder = join(self.root, step_name(step))
        self._store.delete(join(folder, COMMIT_FILE))
        self._delete_prefix(folder)

    def _delete_prefix(self, folder: str) -> None:
        abort_under(self._store, folder)
        for rel in sorted(self._store.sizes(folder), key=lambda r: r == COMMIT_FILE):
            self._store.delete(join(folder, rel))

    def _remove_uncommitted(self, infos: list[CheckpointInfo], *, keep: int) -> None:
        """SPEC 11.12: what an interrupted save left (objects, unfinished uploads) goes."""
        for info in infos:
            if info.record is None and info.step != keep:
                self._delete_prefix(join(self.root, step_name(info.step)))

    # -- reading -------------------------------------------------------------------------------
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
                record, problem = None, "no commit record (the save did not finish)"
            except FormatError as e:
                record, problem = None, str(e)
            out.append(CheckpointInfo(step, Path(name), record, problem))
        return sorted(out, key=lambda i: i.step)

    def _record(self, folder: str, step: int) -> CommitRecord:
        url = join(folder, COMMIT_FILE)
        return parse_commit(self._store.read_all(url, 16 << 20), url, step)

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
                if whole:
                    raw = self._store.read(join(folder, rel), 0, size) if size else b""
                    if xxhash.xxh3_64_hexdigest(raw) != f.xxh3:
                        return f"item {name}: object {rel} changed since the commit (xxh3)"
        return None

    def restore(self, step: int | None = None, **targets: Any) -> RestoreResult:
        """As :meth:`CheckpointManager.restore`: the newest committed step whose objects are
        all there with their recorded sizes and whose every tensor verifies; newer broken ones
        are skipped with a :class:`CheckpointWarning`.

        Raises:
            CheckpointNotFoundError: no such (valid) checkpoint.
            StateMismatchError: a model does not fit the saved parameters.
        """
        self.wait()
        skipped: list[tuple[int, str]] = []
        for attempt in range(_RETRIES):
            skipped, vanished = [], False
            infos = [i for i in self._listing() if step is None or i.step == step]
            for info in reversed(infos):
                if info.record is None:
                    skipped.append((info.step, info.problem or "no commit record"))
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
            if not vanished:
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


def encode_commit(record: CommitRecord) -> bytes:
    """The commit record's bytes, exactly as ``write_commit`` writes them on disk."""
    with tempfile.TemporaryDirectory(prefix="satchel-commit-") as d:
        write_commit(Path(d), record)
        return (Path(d) / COMMIT_FILE).read_bytes()


def parse_commit(raw: bytes, url: str, step: int) -> CommitRecord:
    """``read_commit`` over bytes from the store; errors name ``url``.

    Raises:
        FormatError / IntegrityError: as ``read_commit``.
    """
    with tempfile.TemporaryDirectory(prefix="satchel-commit-") as d:
        (Path(d) / COMMIT_FILE).write_bytes(raw)
        try:
            return read_commit(Path(d), expected_step=step)
        except FormatError as e:
            where = str(Path(d) / COMMIT_FILE)
            msg = str(e).replace(where, url)
            raise type(e)(msg, path=url, field=e.field, reason=e.reason) from e


def _decide(
    policies: tuple[retention.Policy, ...],
    infos: list[CheckpointInfo],
    step: int,
    metrics: Mapping[str, float],
) -> dict[int, list[str]]:
    records = [retention.CheckpointRecord(i.step, i.record.metrics) for i in infos if i.record]
    records.append(retention.CheckpointRecord(step, dict(metrics)))
    records.sort(key=lambda r: r.step)
    return retention.decide(policies, records)


def _own(
    policies: tuple[retention.Policy, ...], kept: Mapping[int, list[str]]
) -> dict[str, tuple[int, ...]]:
    own = [p.name for p in policies if not retention.portable(p)]
    return {name: tuple(s for s in sorted(kept) if name in kept[s]) for name in own}


def _policies(
    keep_last: int | None,
    keep_every: int | None,
    keep_best: tuple[str, Literal["min", "max"], int] | None,
    more: Iterable[retention.Policy],
) -> tuple[retention.Policy, ...]:
    """As the local manager's: the built-ins from their arguments, then the user's own."""
    out: list[retention.Policy] = []
    if keep_last is not None:
        out.append(retention.KeepLast(_positive(keep_last, "keep_last")))
    if keep_every is not None:
        out.append(retention.KeepEvery(_positive(keep_every, "keep_every")))
    if keep_best is not None:
        metric, mode, k = keep_best
        if mode not in ("min", "max"):
            raise UsageError(f"keep_best mode must be 'min' or 'max', got {mode!r}")
        out.append(retention.KeepBest(metric, mode, _positive(k, "keep_best k")))
    for p in more:
        retention.check_policy(p)
        out.append(p)
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise UsageError(f"retention policy names must be unique, got {names}")
    return tuple(out)


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
