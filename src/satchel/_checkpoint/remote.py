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
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import xxhash

from .. import retention
from .._plan import plan_save
from .._remote.store import Store, open_store
from .._remote.upload import abort_under
from .._remote.url import StorageOptions, join
from .._remote.writer import save_url
from .._shards.names import parse_size
from ..errors import (
    CheckpointExistsError,
    SatchelError,
    UsageError,
)
from .layout import COMMIT_FILE, SHARD_INDEX, item_file, step_name
from .options import How, decide, own_kept, policies_of, save_request
from .record import CommitRecord, FileRecord, ItemRecord
from .remote_pool import NO_RECORD, RemotePool, collect_remote, encode_commit
from .remote_view import RemoteView
from .snapshot import snapshot
from .view import CheckpointInfo, RestoreResult

__all__ = ["RemoteManager"]


class RemoteManager(RemoteView):
    """What ``CheckpointManager(url, ...)`` returns: the manager's public methods over a root in
    object storage (see the module docstring). ``storage_options`` go to fsspec.

    With ``incremental`` the pool is ``<root>/blobs/`` (``remote_pool``); with
    ``process_group`` save and restore are collective (``remote_collective``). Not on object
    storage: the writer lock (one writer per root).
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
        if not isinstance(incremental, bool):
            raise UsageError(f"incremental must be True or False, got {incremental!r}")
        self.root = root.rstrip("/")
        self.incremental = incremental
        self._group = process_group
        self._private: Any = None  # a background collective save's own group (SPEC 10.6)
        self._options = dict(storage_options or {})
        self._store: Store = open_store(self.root, storage_options)
        self.max_shard_size = None if max_shard_size is None else parse_size(max_shard_size)
        self.policies = policies_of(keep_last, keep_every, keep_best, policies)
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
        incremental: bool | None = None,
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
        req = save_request(
            step,
            items,
            extra=extra,
            metrics=metrics,
            max_shard_size=max_shard_size,
            incremental=incremental,
            defaults=How(self.max_shard_size, self.incremental),
        )
        prepared, clean = req.items, req.metrics
        how = (req.how.limit, req.how.incremental)
        if self._group is not None:
            from .remote_collective import save  # noqa: PLC0415 - torch, with a group only

            self._thread = save(self, step, prepared, clean, overwrite, blocking, how[1])
            return
        if not overwrite and self._committed(step):
            raise CheckpointExistsError(
                f"{self.root}: step {step} exists; pass overwrite=True to replace it"
            )
        if blocking:
            self._write(step, prepared, clean, overwrite, how)
            return
        frozen = snapshot(prepared)  # the caller may change its tensors once save returns

        def run() -> None:
            try:
                self._write(step, frozen, clean, overwrite, how)
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
        how: tuple[int | None, bool],
    ) -> None:
        others, kept = self._begin(step, metrics, overwrite)
        folder = join(self.root, step_name(step))
        limit, incremental = how
        pool = None
        if incremental:  # SPEC 11.13: reuse what the newest committed step stored
            newest = [i for i in others if i.record is not None][-1:]
            known = [(join(self.root, str(i.path)), i.record) for i in newest if i.record]
            pool = RemotePool(self._store, self.root, step, known[0] if known else None)
        records: dict[str, ItemRecord] = {}
        try:
            for name, value in items.items():
                records[name] = self._write_item(folder, name, value, limit, pool)
            referenced = pool.finish() if pool is not None else ()
            self._commit(step, records, metrics, kept, referenced)
        except BaseException:
            # Best effort: what cannot be deleted now (the store is gone) the next save removes.
            with contextlib.suppress(SatchelError):
                self._delete_prefix(folder)
            if pool is not None:
                pool.discard()
            raise
        self._after(step, others, kept)

    def _begin(
        self, step: int, metrics: Mapping[str, float], overwrite: bool
    ) -> tuple[list[CheckpointInfo], dict[int, list[str]]]:
        """Start saving ``step``: remove what interrupted saves left (SPEC 11.12, 11.13), the
        old step when overwriting, and decide retention. Returns the other committed steps
        and the decision (for :meth:`_finish`)."""
        infos = self._listing()
        self._remove_uncommitted(infos, keep=step)
        if overwrite and self._committed(step):
            self._delete_step(step)  # the record first: the old step is invalid from here on
        collect_remote(self._store, self.root, self._listing())
        others = [i for i in infos if i.step != step and i.record is not None]
        return others, decide(self.policies, others, step, metrics)

    def _commit(
        self,
        step: int,
        records: Mapping[str, ItemRecord],
        metrics: Mapping[str, float],
        kept: Mapping[int, list[str]],
        pool: tuple[FileRecord, ...],
    ) -> None:
        """Commit ``step``, whose every object is uploaded: its record, the last object."""
        folder = join(self.root, step_name(step))
        names = tuple(p.name for p in self.policies)
        own = own_kept(self.policies, kept)
        record = CommitRecord.new(step, dict(records), dict(metrics), names, own, pool=pool)
        self._store.put_small(join(folder, COMMIT_FILE), encode_commit(record))

    def _after(
        self, step: int, others: list[CheckpointInfo], kept: Mapping[int, list[str]]
    ) -> None:
        """After the commit: retention, then the pool objects no record lists any more."""
        self._retain(step, others, kept)
        collect_remote(self._store, self.root, self._listing())

    def _write_item(
        self, folder: str, name: str, value: Any, limit: int | None, pool: RemotePool | None
    ) -> ItemRecord:
        if pool is not None:
            plan = plan_save(value)
            if plan.stored:  # SPEC 8.17: a pooled item, its folder the index alone
                pooled = pool.plan(name, plan, max_shard_size=limit)
                pool.write(pooled)
                self._store.put_small(join(join(folder, name), SHARD_INDEX), pooled.index)
                digest = xxhash.xxh3_64_hexdigest(pooled.index)
                return ItemRecord((FileRecord(SHARD_INDEX, len(pooled.index), digest),), name)
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
            # A record that does not parse is damage, not litter: never made worse.
            if info.record is None and info.problem == NO_RECORD and info.step != keep:
                self._delete_prefix(join(self.root, step_name(info.step)))

    # -- reading (the rest: RemoteView) -------------------------------------------------
    def restore(self, step: int | None = None, **targets: Any) -> RestoreResult:
        """As :meth:`CheckpointManager.restore`: the newest committed step whose objects are
        all there with their recorded sizes and whose every tensor verifies; newer broken ones
        are skipped with a :class:`CheckpointWarning`.

        Raises:
            CheckpointNotFoundError: no such (valid) checkpoint.
            StateMismatchError: a model does not fit the saved parameters.
        """
        self.wait()
        if self._group is not None:
            from .remote_collective import restore  # noqa: PLC0415 - torch, with a group only

            return restore(self, step, targets)
        return self._restore(step, targets)
