"""Sharded checkpoints in the Hugging Face layout (docs/formats.md#sharded, SPEC 9).

A folder holding ``<prefix>.safetensors.index.json`` (transformers' ``save_pretrained``,
diffusers, huggingface_hub's ``save_torch_state_dict``, satchel) or
``pytorch_model.bin.index.json`` (older transformers), or the index file itself. The index maps
each tensor to its shard; satchel's own index also carries the manifest of the whole checkpoint.

Opening reads the index and the shards' headers only (a ``.bin`` shard is interpreted by the
allowlisting pickle machine, never unpickled). Every name the index gives is a plain file in the
index's folder, opened without following a symlink out of it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .._format.header import Header
from .._format.manifest import Manifest
from .._io.reader import Opened, open_file
from .._read.bulk import bulk_loader
from .._read.native import check_stored, leaf_refs, native_tree, stored_storages
from .._read.refs import ArrayRef, Built, Deferred, Storage, Tree
from .._shards.index import MAX_INDEX, Index, parse_index
from .._shards.names import SAFE_SUFFIX, is_shard_name
from .._shards.pool import resolve
from .._tree import unflatten
from ..errors import FormatError, IntegrityError
from . import torch as torch_reader
from ._reader import Probe

__all__ = ["OpenedShard", "assemble_shards", "find_index", "read", "sniff"]

_SAFE_INDEX = ".safetensors.index.json"
_BIN_INDEX = ".bin.index.json"

_S = TypeVar("_S", bound="OpenedShard")


def find_index(folder: Path) -> Path | None:
    """What to read in a Hugging Face folder, in transformers' order of preference: a single
    ``<prefix>.safetensors`` beside its index, the safetensors index, ``model.safetensors``,
    then the same for ``.bin``; ``None`` when the folder holds none of them.

    Raises:
        FormatError: several safetensors (or several .bin) indexes: pass the one to read.
    """
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return None
    for suffix, single in ((_SAFE_INDEX, "model.safetensors"), (_BIN_INDEX, "pytorch_model.bin")):
        found = sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))
        if len(found) > 1:
            raise FormatError(
                f"{folder}: holds several shard indexes ({', '.join(found)}); pass the index "
                "file to read",
                path=str(folder),
                field="index",
            )
        if found:
            whole = found[0].removesuffix(".index.json")  # model.safetensors, pytorch_model.bin
            return folder / (whole if whole in names else found[0])
        if single in names:
            return folder / single
    return None


def sniff(probe: Probe) -> bool:
    if probe.is_dir:
        try:
            return find_index(probe.path) is not None
        except FormatError:
            return True  # ours to refuse, with the message that says which index to pass
    # An index file, from its bytes: a JSON object naming "weight_map" early (the writers put
    # only a small "metadata" object before it).
    head = probe.head.lstrip()
    return head[:1] == b"{" and b'"weight_map"' in head


def read(path: Path, *, verify: bool = True) -> Tree:
    """The checkpoint the index describes, lazily: see the module docstring.

    Raises:
        FormatError: a bad index, a missing or misplaced shard, a tensor the shard lacks, a
            tensor in two shards (each naming the file and the entry).
        IntegrityError: a shard changed since the index was written.
    """
    index_path = find_index(path) if path.is_dir() else path
    if index_path is None:
        raise FormatError(f"{path}: no shard index in this folder", path=str(path))
    where = str(index_path)
    if not index_path.name.endswith(".index.json"):  # a one-file folder: read that file
        single = _shard_path(index_path.parent, index_path.name, str(path))
        if single.suffix == ".bin":
            return Tree(torch_reader.read(single, verify=verify), "sharded", {"format": "sharded"})
        return native_tree(open_file(single), verify=verify)
    asked = _likely_shards(index_path)
    _prefetch_headers([index_path, *asked])  # the index and its shards' headers, all at once
    index = parse_index(_read_regular(index_path, MAX_INDEX + 1, where), where=where, pool=True)
    folder = index_path.parent
    if index.pool:
        pool = partial(_open_pool, folder, where)
        return _pooled(index, pool, where=where, verify=verify)
    shards = {name: _shard_path(folder, name, where) for name in index.files}
    _prefetch_headers(p for p in shards.values() if p not in asked)
    if all(n.endswith(".safetensors") for n in shards):
        return _safetensors(index, shards, where=where, verify=verify)
    if all(n.endswith(".bin") for n in shards):
        return _bins(index, shards, where=where, verify=verify)
    raise FormatError(
        f"{where}: shards mix formats ({', '.join(sorted(shards)[:4])}); expected all "
        ".safetensors or all .bin",
        path=where,
        field="weight_map",
    )


# Bytes of each shard's start asked for ahead of reading it: the kernel's usual readahead, which
# holds the header of a shard with a few thousand tensors; a longer header is read as usual.
_HEADER_PREFETCH = 128 * 1024


_SHARDS_INDEX = SAFE_SUFFIX + ".index.json"  # <prefix>.safetensors.index.json


def _likely_shards(index_path: Path) -> set[Path]:
    """The files beside ``index_path`` named as its writer names shards (``<prefix>-00001-of-
    00004.safetensors``): what the index will almost surely name, known before it is read."""
    name = index_path.name
    if not name.endswith(_SHARDS_INDEX):
        return set()
    prefix = name.removesuffix(_SHARDS_INDEX)
    try:
        with os.scandir(index_path.parent) as entries:
            return {Path(e.path) for e in entries if is_shard_name(e.name, prefix)}
    except OSError:
        return set()  # only a hint: the real reads report what is wrong


def _prefetch_headers(paths: Iterable[Path]) -> None:
    """Ask the kernel to start reading every shard's header now, all at once.

    Opening shard after shard from a cold cache otherwise waits for one disk read per shard in
    turn; with every read queued up front the waits overlap, and opening N shards costs about
    one cold read rather than N. Only a hint: errors are left for the real open to report.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.posix_fadvise(fd, 0, _HEADER_PREFETCH, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _safetensors(index: Index, shards: dict[str, Path], *, where: str, verify: bool) -> Tree:
    opened = {file: open_file(path) for file, path in shards.items()}
    assemble = partial(
        assemble_shards,
        index,
        opened,
        where=where,
        storages_of=partial(stored_storages, verify=verify),
        tree_of=partial(native_tree, verify=verify),
        verify=verify,
    )
    return _columns_tree(index, opened, assemble, where=where, verify=verify) or assemble()


def _columns_tree(
    index: Index,
    opened: Mapping[str, Opened],
    assemble: Callable[[], Tree],
    *,
    where: str,
    verify: bool,
) -> Tree | None:
    """A state dict of whole tensors in shards satchel wrote, checked column by column (the
    checks of :func:`assemble_shards`, SPEC 9.5) and loaded shard by shard through each
    shard's bulk path; ``None`` for any other checkpoint. The refs of the general tree are
    built only if something asks for them (``open``, a partial load)."""
    m = index.manifest
    if m is None or m.columns is None or m.flat is None:
        return None
    cols, (keys, leaf_index) = m.columns, m.flat
    if len(cols.data) != len(set(cols.data)) or len(leaf_index) != len(set(leaf_index)):
        return None  # a tensor under two names: the general path shares it
    position = {name: j for j, name in enumerate(cols.names)}
    loaders: list[Callable[[str], Any]] = []
    seen = 0
    for file, shard in opened.items():
        sm = shard.manifest
        if sm is None or sm.columns is None:
            return None
        names = sm.columns.names
        if sm.flat is None or sm.flat[0] != [names[sm.columns.data[i]] for i in sm.flat[1]]:
            return None  # a shard's keys are its stored names, as the writer makes them
        if any(index.weight_map.get(n) != file for n in names) or not position.keys() >= set(names):
            return None  # the general path names the misplaced tensor
        want = [position[n] for n in names]
        got = (sm.columns.dtypes, sm.columns.shapes, sm.columns.digests)
        expected = (
            [cols.dtypes[j] for j in want],
            [cols.shapes[j] for j in want],
            "".join(cols.digests[16 * j : 16 * j + 16] for j in want),
        )
        if got != expected:
            return None  # the general path raises the IntegrityError naming the tensor
        loader = bulk_loader(shard, verify=verify, check=check_stored)
        if loader is None:
            return None
        loaders.append(loader)
        seen += len(names)
    if seen != len(index.weight_map):
        return None  # a promised tensor is missing: the general path names it

    def load(framework: str) -> Any:
        merged: dict[str, Any] = {}
        for loader in loaders:
            part = loader(framework)
            if part is None:
                return None
            merged.update(part)
        by_leaf = [merged[cols.names[j]] for j in cols.data]
        return dict(zip(keys, map(by_leaf.__getitem__, leaf_index), strict=True))

    def build() -> Built:
        return assemble().root, None, None

    meta = dict(m.metadata)
    return Tree(None, "sharded", meta, m.module, checksummed=True, build=build, bulk=load)


class OpenedShard(Protocol):
    """What :func:`assemble_shards` needs of an opened shard, local or remote."""

    @property
    def header(self) -> Header: ...

    @property
    def manifest(self) -> Manifest | None: ...


def assemble_shards(
    index: Index,
    opened: Mapping[str, _S],
    *,
    where: str,
    storages_of: Callable[[_S], dict[str, Storage]],
    tree_of: Callable[[_S], Tree],
    verify: bool,
) -> Tree:
    """The checkpoint ``index`` describes, from its shards opened (headers read) as
    ``opened[file]``, wherever they live (a folder here, object storage in ``_remote``).

    With satchel's manifest in the index, each shard must record the index's checksums (SPEC
    9.5) and the tree is the manifest's over the shards' storages; without one, the shards'
    tensors as a flat dict in ``weight_map`` order. Either way every tensor must be in the shard
    the index names and in no other.
    """
    storages: dict[str, Storage] = {}
    refs: dict[str, ArrayRef] = {}
    owner: dict[str, str] = {}
    for file, shard in opened.items():
        if index.manifest is not None:
            _same_as_index(index.manifest, shard.manifest, index, file, where)
            storages.update(storages_of(shard))
        else:
            root = tree_of(shard).root
            for name, x in root.items() if isinstance(root, dict) else ():
                if isinstance(x, ArrayRef):
                    refs[name] = x
        for e in shard.header.entries:
            if e.name in owner:
                raise FormatError(
                    f"{where}: tensor {e.name!r} is in two shards ({owner[e.name]} and {file})",
                    path=where,
                    field=e.name,
                )
            owner[e.name] = file
    _promised(index, owner, where)
    if index.manifest is not None:
        m = index.manifest
        leaves = leaf_refs(m.leaves, storages)
        root = unflatten(m.root, leaves.__getitem__, where=f"{where}: satchel manifest")
        return Tree(root, "sharded", dict(m.metadata), m.module, checksummed=True)
    flat = {name: refs[name] for name in index.weight_map}
    checksummed = verify and all(o.manifest is not None for o in opened.values())
    return Tree(flat, "sharded", {"format": "sharded"}, checksummed=checksummed)


def _pooled(index: Index, open_pool: Callable[[str], Opened], *, where: str, verify: bool) -> Tree:
    """An incremental checkpoint's item (SPEC 8.17): every stored tensor is an entry of a pool
    file in ``<root>/blobs``, ``root`` the checkpoint root the item's step folder is in.

    Each pool file is opened once (its header read, its data mapped); each entry is used by
    one stored tensor at most (two would share memory after loading, which the writer never
    means), must have that tensor's byte length and checksum and start aligned for every leaf
    viewing it. Bytes are verified on first touch (SPEC 3.7), as for any shard.

    ``open_pool`` opens a pool file by its name, from the root's folder here or from object
    storage (``_remote.reader``); the checks are the same.
    """
    m = index.manifest
    assert m is not None  # parse_index requires it beside pool references
    align: dict[str, int] = {}
    for leaf in m.leaves:
        align[leaf.data] = max(align.get(leaf.data, 1), leaf.dtype.itemsize)
    opened: dict[str, dict[str, Storage]] = {}
    entries: dict[str, dict[str, tuple[int, int, str | None]]] = {}
    used: set[tuple[str, str]] = set()
    storages: dict[str, Storage] = {}
    for name, want in m.stored.items():
        file, key = index.pool[name]
        if file not in opened:
            f = open_pool(file)
            opened[file] = stored_storages(f, verify=verify)
            sums = f.manifest.stored if f.manifest is not None else {}
            entries[file] = {
                e.name: (e.start, e.end, sums[e.name].xxh3 if e.name in sums else None)
                for e in f.header.entries
            }
        got = entries[file].get(key)
        if got is None:
            raise FormatError(
                f"{where}: tensor {name!r} references {key!r} in pool file {file}, which has "
                "no such tensor",
                path=where,
                field=name,
            )
        if (file, key) in used:
            raise FormatError(
                f"{where}: tensor {name!r} references pool entry {file}:{key} that another "
                "tensor of this item references too",
                path=where,
                field=name,
            )
        used.add((file, key))
        start, end, digest = got
        if end - start != want.nbytes or start % align.get(name, 1):
            raise FormatError(
                f"{where}: tensor {name!r}: pool entry {file}:{key} holds {end - start} bytes "
                f"at offset {start}; the manifest needs {want.nbytes}, aligned to "
                f"{align.get(name, 1)}",
                path=where,
                field=name,
            )
        if digest != want.xxh3:
            raise IntegrityError(
                f"{where}: tensor {name!r}: pool file {file} records checksum {digest} for "
                f"{key!r}, the index {want.xxh3}; the pool file changed since the save",
                path=where,
                field=name,
                reason=f"pool file {file} changed since the save",
            )
        storages[name] = opened[file][key]
    leaves = leaf_refs(m.leaves, storages)
    tree_root = unflatten(m.root, leaves.__getitem__, where=f"{where}: satchel manifest")
    return Tree(tree_root, "sharded", dict(m.metadata), m.module, checksummed=True)


def _open_pool(folder: Path, where: str, file: str) -> Opened:
    return open_file(resolve(folder, file, where))


def _bins(index: Index, shards: dict[str, Path], *, where: str, verify: bool) -> Tree:
    owner: dict[str, str] = {}
    values: dict[str, Any] = {}
    for file, path in shards.items():
        state = torch_reader.read(path, verify=verify)
        if isinstance(state, Deferred):
            state = state.resolve()
        if not isinstance(state, dict):
            raise FormatError(
                f"{where}: shard {file} holds a {type(state).__name__}, not a state dict",
                path=where,
                field=file,
            )
        for name, value in state.items():
            if name in owner:
                raise FormatError(
                    f"{where}: tensor {name!r} is in two shards ({owner[name]} and {file})",
                    path=where,
                    field=str(name),
                )
            owner[name] = file
            values[name] = value
    _promised(index, owner, where)
    flat = {name: values[name] for name in index.weight_map}
    return Tree(flat, "sharded", {"format": "sharded"}, checksummed=verify)


def _promised(index: Index, owner: dict[str, str], where: str) -> None:
    """Every tensor the index maps is in the shard it names, and only there (SPEC 9.5)."""
    for name, file in index.weight_map.items():
        found = owner.get(name)
        if found != file:
            what = f"is in {found}" if found else "is in no shard"
            raise FormatError(
                f"{where}: the index puts tensor {name!r} in {file}, but it {what}; the folder "
                "mixes files of different saves",
                path=where,
                field=name,
            )


def _same_as_index(
    m: Manifest, shard: Manifest | None, index: Index, file: str, where: str
) -> None:
    """A shard satchel wrote records the checksums the index does; anything else changed."""
    names = [n for n, f in index.weight_map.items() if f == file]
    for name in names:
        want = m.stored[name]
        got = shard.stored.get(name) if shard is not None else None
        if got is None or (got.xxh3, got.dtype, got.shape) != (want.xxh3, want.dtype, want.shape):
            raise IntegrityError(
                f"{where}: shard {file} changed since the index was written (tensor {name!r} "
                "is not the one saved); the folder mixes files of different saves",
                path=where,
                field=name,
                reason=f"shard {file} changed since the save",
            )


def _shard_path(folder: Path, name: str, where: str) -> Path:
    """``folder/name``, a regular file that is in the folder (a symlink must stay inside)."""
    path = folder / name
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise FormatError(
            f"{where}: the index names shard {name}, which does not exist",
            path=where,
            field=name,
        ) from e
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{where}: shard {name} is not a regular file", path=where, field=name)
    if path.is_symlink() and path.resolve().parent != folder.resolve():
        raise FormatError(
            f"{where}: shard {name} is a symlink out of the folder; satchel opens nothing "
            "outside the index's folder",
            path=where,
            field=name,
        )
    return path


def _read_regular(path: Path, cap: int, where: str) -> bytes:
    """At most ``cap`` bytes of a regular file (a FIFO or device would block or never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{where}: is not a regular file", path=where)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(cap)
    finally:
        os.close(fd)
