"""Incremental checkpoints in object storage: the pool under ``<root>/blobs/`` (SPEC 11.13).

The decisions are the local pool's (``incremental.Pool``, ``collective.Placer``): which tensor
of the newest committed step a save may reuse, proven by comparing its bytes with the stored
ones, never by the 64-bit hash alone. Only where the bytes come from and go to differs: the
stored bytes are fetched with ranged reads of the pool object (only the candidates' entries,
in concurrent parts), and new pool files are uploaded as objects (each atomic, SPEC 11.4).

Garbage collection counts references through the commit records only, as on disk (SPEC 8.19):
a pool object stays while any step's record lists it. It runs at the start of a save (what an
interrupted save left) and after retention (what the deleted steps alone referenced); while
some step has a record object that cannot be parsed, nothing is collected.

Also the commit record's bytes for a store (the local record's bytes exactly).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._remote.reader import open_object
from .._remote.store import Store
from .._remote.upload import abort_under
from .._remote.url import join
from .._remote.writer import put_plan
from .._shards.index import MAX_INDEX, parse_index
from .._shards.pool import POOL_DIR, is_pool_file
from ..errors import FormatError, SatchelError
from .incremental import Pool, PooledItem
from .layout import COMMIT_FILE, SHARD_INDEX
from .record import CommitRecord, FileRecord, read_commit, write_commit
from .view import CheckpointInfo

__all__ = [
    "MAX_RECORD",
    "NO_RECORD",
    "RemotePool",
    "collect_remote",
    "encode_commit",
    "parse_commit",
    "read_record",
]

MAX_RECORD = 16 << 20  # SPEC 8.3
NO_RECORD = "no commit record (the save did not finish)"


class RemotePool(Pool):
    """The pool of a root in object storage, as one save sees it (see the module docstring).

    ``newest`` is the newest committed step's folder URL and record. The local ``root`` the
    base class keeps is unused: every method that touches the disk is overridden here.
    """

    def __init__(
        self, store: Store, root: str, step: int, newest: tuple[str, CommitRecord] | None
    ) -> None:
        self.store = store
        super().__init__(Path(), step, newest)
        self.blobs = join(root, POOL_DIR)

    def _read_index(self, folder: Any, item: str) -> Any:
        url = join(join(str(folder), item), SHARD_INDEX)
        return parse_index(self.store.read_all(url, MAX_INDEX), where=url, pool=True)

    def _open_pool(self, file: str) -> Any:
        # Its header now; an entry's bytes when a candidate is compared (ranged reads).
        try:
            return open_object(self.store, join(self.blobs, file))
        except SatchelError:
            return None  # offers nothing to reuse (a reader would find the step invalid)

    def write(self, item: PooledItem) -> None:
        for file, plan, sums in item.files:
            obj = put_plan(self.store, join(self.blobs, file), plan, sums=sums)
            self.written.append(FileRecord(file, obj.size, obj.xxh3))
        self.reused |= item.reused

    def finish(self) -> tuple[FileRecord, ...]:
        # Each object is durable once its upload completed: nothing to sync.
        out = {f.file: f for f in self.written}
        for file in self.reused:
            known = self.known_file(file)
            assert known is not None  # reused only when the newest record lists it
            out.setdefault(file, known)
        self.close()
        return tuple(out[k] for k in sorted(out))

    def discard(self) -> None:
        self.close()
        for f in self.written:
            with contextlib.suppress(SatchelError):  # the next save's collection removes it
                self.store.delete(join(self.blobs, f.file))


def collect_remote(store: Store, root: str, infos: Iterable[CheckpointInfo]) -> list[str]:
    """Delete the pool objects no commit record among ``infos`` (a fresh listing of every step)
    lists, the temporary objects and unfinished uploads in the pool (SPEC 11.13, 8.19).

    Call with no pool upload in flight (one writer per root). Returns the names removed.
    """
    keep: set[str] = set()
    for info in infos:
        if info.record is None:
            if info.problem != NO_RECORD:
                return []  # a record that cannot be read: its references are unknown
            continue
        keep.update(f.file for f in info.record.pool)
    blobs = join(root, POOL_DIR)
    abort_under(store, blobs)
    removed = []
    for name in sorted(store.names(blobs)):
        # A temporary object of an upload on a store without multipart (upload._via_temp).
        temp = name.startswith(".") and ".satchel-" in name and name.endswith(".tmp")
        if temp or (is_pool_file(name) and name not in keep):
            store.delete(join(blobs, name))
            removed.append(name)
    return removed


def read_record(store: Store, folder: str, step: int | None) -> CommitRecord:
    """The commit record of the step at ``folder`` (URL), parsed as on disk.

    Raises:
        SatchelFileNotFoundError: the step has no commit record.
        FormatError / IntegrityError: as ``read_commit``.
    """
    url = join(folder, COMMIT_FILE)
    return parse_commit(store.read_all(url, MAX_RECORD), url, step)


def encode_commit(record: CommitRecord) -> bytes:
    """The commit record's bytes, exactly as ``write_commit`` writes them on disk."""
    with tempfile.TemporaryDirectory(prefix="satchel-commit-") as d:
        write_commit(Path(d), record)
        return (Path(d) / COMMIT_FILE).read_bytes()


def parse_commit(raw: bytes, url: str, step: int | None) -> CommitRecord:
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
