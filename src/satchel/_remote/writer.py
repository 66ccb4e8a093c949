"""``satchel.save`` to a URL: one object, or a sharded folder whose index is the commit.

The bytes are exactly those a local save writes (SPEC 11.1): the same plan, header and data,
streamed from the tensors' own memory into :func:`~satchel._remote.upload.upload`. A sharded
save follows SPEC 9.3 with object-store publishes in place of renames: new shards under names
the current index does not use, then the index in one PUT (the commit), then the old shards go;
a failure deletes the shards it wrote and leaves the old index, and so the old checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from .._gcpause import paused_gc
from .._plan import Plan, digests, plan_save, render_header
from .._progress import ProgressArg, reporter
from .._shards.index import MAX_INDEX, parse_index
from .._shards.names import (
    SAFE_SUFFIX,
    check_prefix,
    index_name,
    is_shard_name,
    parse_size,
)
from .._shards.writer import plan_sharded
from ..errors import FormatError, SatchelError, UsageError
from .store import Store, open_store
from .upload import upload
from .url import StorageOptions, join, split

__all__ = ["Object", "put_plan", "save_url"]


@dataclass(frozen=True)
class Object:
    """One object a save wrote: its URL, size and whole-object xxh3-64 (a checkpoint's commit
    record lists them, SPEC 11.9)."""

    url: str
    size: int
    xxh3: str


def save_url(
    obj: Any,
    url: str,
    *,
    storage_options: StorageOptions = None,
    metadata: Mapping[str, str] | None = None,
    module: str | None = None,
    max_shard_size: int | str | None = None,
    prefix: str = "model",
    progress: ProgressArg = None,
    concurrency: int = 8,
) -> list[Object]:
    """``satchel.save(obj, url, ...)``: see the module docstring and ``satchel.save``.

    Returns every object written, the index of a sharded save last."""
    store = open_store(url, storage_options)
    if max_shard_size is not None:
        limit = parse_size(max_shard_size)
        check_prefix(prefix)
    with paused_gc():
        plan = plan_save(obj, metadata=metadata, module=module)
    if max_shard_size is None:
        if store.size(url) is None and store.names(url):
            raise UsageError(f"{url}: is a folder of objects; a single-file save needs a key")
        return [put_plan(store, url, plan, concurrency=concurrency, progress=progress)]
    if store.size(url) is not None:
        raise UsageError(f"{url}: is an object; a sharded save writes a folder of objects")
    sharded = plan_sharded(plan, limit, prefix=prefix, taken=_referenced(store, url, prefix))
    written: list[Object] = []
    try:
        for shard in sharded.shards:
            with paused_gc():
                header = render_header(shard.plan, shard.sums)
            target = join(url, shard.name)
            size = len(header) + shard.plan.data_len
            digest = xxhash.xxh3_64()
            chunks = _hashed(_stream(header, shard.plan), digest)
            upload(store, target, chunks, size, concurrency=concurrency)
            written.append(Object(target, size, digest.hexdigest()))
        index = join(url, sharded.index_name)
        store.put_small(index, sharded.index)  # SPEC 9.3: the commit
        written.append(Object(index, len(sharded.index), xxhash.xxh3_64_hexdigest(sharded.index)))
    except BaseException:
        for obj_ in written:
            with contextlib.suppress(SatchelError):
                store.delete(obj_.url)
        raise
    keep = {s.name for s in sharded.shards}
    for name in store.names(url):
        if name not in keep and (is_shard_name(name, prefix) or name == f"{prefix}{SAFE_SUFFIX}"):
            store.delete(join(url, name))
    return written


def put_plan(
    store: Store,
    url: str,
    plan: Plan,
    *,
    sums: Sequence[str] | None = None,
    concurrency: int = 8,
    progress: ProgressArg = None,
) -> Object:
    """Upload ``plan`` as one object at ``url`` (atomically, SPEC 11.4): exactly the bytes a
    local save writes. ``sums`` are the stored tensors' xxh3-64 when already computed."""
    if sums is None:
        sums = digests(plan)
    with paused_gc():
        header = render_header(plan, sums)
    size = len(header) + plan.data_len
    report = reporter(progress, size, f"saving {split(url)[1]}") if progress else None
    digest = xxhash.xxh3_64()
    chunks = _hashed(_stream(header, plan), digest)
    upload(store, url, chunks, size, concurrency=concurrency, progress=report)
    return Object(url, size, digest.hexdigest())


def _hashed(chunks: Iterable[bytes | memoryview], digest: Any) -> Iterator[bytes | memoryview]:
    """``chunks`` unchanged, each also fed to ``digest`` (the whole-object checksum)."""
    for c in chunks:
        digest.update(c)
        yield c


def _stream(header: bytes, plan: Plan) -> Iterator[bytes | memoryview]:
    """The file's bytes in order, the tensors straight from their own memory."""
    yield header
    for stored in plan.stored:
        yield stored.data.data


def _referenced(store: Store, url: str, prefix: str) -> frozenset[str]:
    """Shard names the current index uses (they must survive until the new index commits)."""
    where = join(url, index_name(prefix))
    try:
        raw = store.read_all(where, MAX_INDEX)
        return frozenset(parse_index(raw, where=where).files)
    except (FileNotFoundError, FormatError):
        # No index, or one satchel cannot read: keep every name that looks like a shard.
        return frozenset(n for n in store.names(url) if is_shard_name(n, prefix))
