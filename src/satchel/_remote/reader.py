"""Reading a satchel/safetensors object or a sharded folder at a URL, as a :class:`Tree`.

The same validation as a local file (SPEC 1-5, 9), over ranged reads (SPEC 11.2): the object's
size, then one ranged GET of its first :data:`FIRST_RANGE` bytes, which holds the header of
all but huge files (a second GET fetches the rest of a longer one). Each stored tensor is a
:class:`Storage` over a :class:`RangedBytes` region, fetched and checked against its xxh3-64
when first touched (SPEC 3.7): a tensor changed after the save raises ``IntegrityError``.
A sharded folder reads its index, then each shard's header (concurrently), never its data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from .._dist.layout import LAYOUT_FILE, MAX_LAYOUT, parse_layout, pool_file_of
from .._format.header import parse_length
from .._io.reader import Opened, read_header
from .._read.file import ArrayFile
from .._read.native import native_tree, stored_storages
from .._read.refs import Ranged, Tree
from .._shards.index import MAX_INDEX, parse_index
from .._shards.pool import POOL_DIR
from ..errors import FormatError, SatchelFileNotFoundError
from ..formats.distributed import assemble
from ..formats.sharded import _pooled, assemble_shards
from .ranged import RangedBytes
from .store import Store, open_store
from .url import StorageOptions, join

__all__ = ["FIRST_RANGE", "open_object", "pool_url", "read_url"]

_LAYOUT_MARK = b'{"format":"satchel-distributed"'

FIRST_RANGE = 1 << 20  # one request holds the header of every file but a 50,000-tensor one
_SAFE_INDEX = ".safetensors.index.json"


def read_url(
    url: str,
    *,
    storage_options: StorageOptions = None,
    verify: bool = True,
    whole: bool = False,
    concurrency: int = 16,
) -> Tree:
    """The file or sharded folder at ``url``, lazily (``whole`` fetches all data now, in
    parallel: ``load`` and ``verify`` need every byte).

    Raises:
        SatchelFileNotFoundError: nothing at ``url``.
        FormatError: the bytes break a SPEC rule, or are not a format satchel reads remotely.
        IntegrityError: a shard changed since its index was written.
        SatchelOSError: the store cannot be reached (names the URL).
    """
    store = open_store(url, storage_options)
    size = store.size(url)
    if size is None:
        return _folder(store, url, verify=verify, whole=whole, concurrency=concurrency)
    head = store.read(url, 0, min(size, FIRST_RANGE))
    if head.lstrip()[:1] == b"{" and b'"weight_map"' in head:  # the index file itself
        folder = url.rstrip("/").rpartition("/")[0]
        return _sharded(store, folder, url, verify=verify, whole=whole, concurrency=concurrency)
    if head.startswith(_LAYOUT_MARK):  # a distributed item's layout itself (SPEC 10.2)
        folder = url.rstrip("/").rpartition("/")[0]
        return _distributed(store, folder, verify=verify)
    return native_tree(
        _open(store, url, size, head, whole=whole, concurrency=concurrency), verify=verify
    )


def open_object(store: Store, url: str, *, whole: bool = False, concurrency: int = 16) -> Opened:
    """The object at ``url`` validated: ``header``, ``manifest`` and ``data`` (a sliceable
    whose slices are ranged reads, unless ``whole``).

    Raises:
        SatchelFileNotFoundError: no such object.
        FormatError: its bytes break a SPEC rule.
    """
    size = store.size(url)
    if size is None:
        raise SatchelFileNotFoundError(f"{url}: no such object")
    head = store.read(url, 0, min(size, FIRST_RANGE))
    return _open(store, url, size, head, whole=whole, concurrency=concurrency)


def _open(
    store: Store, url: str, size: int, head: bytes, *, whole: bool, concurrency: int
) -> Opened:
    try:
        n = parse_length(head[:8], size, where=url)
    except FormatError as e:
        raise FormatError(
            f"{e}. From object storage satchel reads satchel and safetensors files and sharded "
            "folders; copy other formats to a local file first",
            path=url,
            field="header length",
        ) from e
    raw = head[8 : 8 + n]
    if len(raw) < n:  # a header longer than the first range: one more request
        raw += store.read(url, len(head), 8 + n)
    header, manifest = read_header(raw, header_len=n, file_size=size, where=url)
    data: np.ndarray[Any, np.dtype[np.uint8]] | Ranged
    ranged = RangedBytes(store, url, header.data_start, header.data_len, concurrency=concurrency)
    data = ranged.fetch_all() if whole else ranged
    return Opened(url, header, manifest, data)


def _folder(store: Store, url: str, *, verify: bool, whole: bool, concurrency: int) -> Tree:
    """A folder URL: its safetensors index (or its lone ``model.safetensors``)."""
    names = store.names(url)
    if not names:
        raise SatchelFileNotFoundError(f"{url}: no such object or folder")
    if LAYOUT_FILE in names:  # a distributed item (SPEC 10.2, 10.7)
        return _distributed(store, url, verify=verify)
    found = sorted(n for n in names if n.endswith(_SAFE_INDEX) and not n.startswith("."))
    if len(found) > 1:
        raise FormatError(
            f"{url}: holds several shard indexes ({', '.join(found)}); pass the index to read",
            path=url,
            field="index",
        )
    if found:
        index = join(url, found[0])
        return _sharded(store, url, index, verify=verify, whole=whole, concurrency=concurrency)
    if "model.safetensors" in names:
        return _read_object(store, join(url, "model.safetensors"), verify, whole, concurrency)
    raise FormatError(
        f"{url}: a folder without {'model' + _SAFE_INDEX} or model.safetensors; satchel reads "
        "single objects and sharded safetensors folders from object storage",
        path=url,
    )


def _read_object(store: Store, url: str, verify: bool, whole: bool, concurrency: int) -> Tree:
    """One object of a store already open."""
    size = store.size(url)
    if size is None:
        raise SatchelFileNotFoundError(f"{url}: no such object")
    head = store.read(url, 0, min(size, FIRST_RANGE))
    return native_tree(
        _open(store, url, size, head, whole=whole, concurrency=concurrency), verify=verify
    )


def _sharded(
    store: Store, folder: str, index_url: str, *, verify: bool, whole: bool, concurrency: int
) -> Tree:
    """SPEC 9 over a store: the index, every shard's header, the checkpoint's tree."""
    index = parse_index(store.read_all(index_url, MAX_INDEX), where=index_url, pool=True)
    if index.pool:  # an incremental checkpoint's item: its tensors are in the root's pool
        return _pooled_item(
            store, folder, index, index_url, verify=verify, whole=whole, concurrency=concurrency
        )
    if not all(n.endswith(".safetensors") for n in index.files):
        raise FormatError(
            f"{index_url}: names .bin shards; satchel reads safetensors shards from object "
            "storage (convert the folder locally first)",
            path=index_url,
            field="weight_map",
        )

    def header_of(name: str) -> Opened:
        url = join(folder, name)
        size = store.size(url)
        if size is None:
            raise FormatError(
                f"{index_url}: the index names shard {name}, which does not exist",
                path=index_url,
                field=name,
            )
        head = store.read(url, 0, min(size, FIRST_RANGE))
        return _open(store, url, size, head, whole=whole, concurrency=concurrency)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(index.files)))) as pool:
        objects = dict(zip(index.files, pool.map(header_of, index.files), strict=True))
    return assemble_shards(
        index,
        objects,
        where=index_url,
        storages_of=partial(stored_storages, verify=verify),
        tree_of=partial(native_tree, verify=verify),
        verify=verify,
    )


def pool_url(item_folder: str, file: str) -> str:
    """Pool file ``file`` (a valid pool file name) of the root whose step holds the item
    folder URL ``item_folder`` (``<root>/<step>/<item>``): ``<root>/blobs/<file>`` (SPEC 8.17)."""
    root = item_folder.rstrip("/").rsplit("/", 2)[0]
    return join(join(root, POOL_DIR), file)


def _pooled_item(
    store: Store,
    folder: str,
    index: Any,
    index_url: str,
    *,
    verify: bool,
    whole: bool,
    concurrency: int,
) -> Tree:
    """SPEC 8.17 over a store: the same checks as on disk, each pool file's header fetched
    (its data on first touch)."""

    def open_pool(file: str) -> Opened:
        url = pool_url(folder, file)
        try:
            obj = open_object(store, url, whole=whole, concurrency=concurrency)
        except SatchelFileNotFoundError as e:
            raise FormatError(
                f"{index_url}: references pool file {file}, but {url} does not exist",
                path=index_url,
                field=file,
            ) from e
        return obj

    return _pooled(index, open_pool, where=index_url, verify=verify)


def _distributed(store: Store, folder: str, *, verify: bool) -> Tree:
    """A distributed item folder (SPEC 10.5) over a store: every tensor assembled whole from
    its pieces, each piece object (or pool object, SPEC 10.7) read and verified."""
    where = join(folder, LAYOUT_FILE)
    layout = parse_layout(store.read_all(where, MAX_LAYOUT), where=where)

    def open_piece(file: str) -> ArrayFile:
        pool = pool_file_of(file)
        url = join(folder, file) if pool is None else pool_url(folder, pool)
        if store.size(url) is None:
            raise FormatError(
                f"{where}: a piece is in {file}, which does not exist ({url})",
                path=where,
                field=file,
            )
        # Read whole: a tensor is assembled from every byte of its pieces.
        tree = _read_object(store, url, verify, True, 16)
        return ArrayFile(tree, path=url, framework="numpy")

    return assemble(layout, open_piece, where=where, verify=verify)
