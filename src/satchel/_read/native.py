"""The native reader: a satchel or plain safetensors file as a :class:`Tree` (SPEC 1-5).

Opening validates the header and manifest and maps the data section; each stored tensor is a
:class:`Storage` sliced from the mapping on first use and checked against its xxh3-64 on first
touch (SPEC 3.7), so ``ck[name]`` reads and verifies only the bytes it needs.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial

from .._format.manifest import Leaf
from .._format.validate import xxh3_hex
from .._io.reader import Opened, open_file
from .._tree import unflatten
from ..adapters import c_strides
from ..errors import IntegrityError
from .bulk import bulk_loader
from .refs import ArrayRef, Built, Storage, Tree, U8Array

__all__ = ["check_stored", "leaf_refs", "native_tree", "read_native", "stored_storages"]


def read_native(path: str | os.PathLike[str], *, mmap: bool, verify: bool) -> Tree:
    """The file's structure over lazily sliced, verify-on-first-touch storages.

    Raises:
        SatchelFileNotFoundError: no such file.
        FormatError: the header or manifest breaks a SPEC rule (names the field).
        IntegrityError: the manifest does not match its own checksum.
    """
    return native_tree(open_file(path, mmap=mmap), verify=verify)


def native_tree(opened: Opened, *, verify: bool) -> Tree:
    """:func:`read_native` of a file already opened (a shard's header read by its index)."""
    manifest = opened.manifest
    if manifest is None:
        return _plain_tree(opened, verify=verify)
    # The refs are built on first use: ``load`` of a state dict needs none (``bulk``).
    return Tree(
        None,
        "satchel",
        dict(manifest.metadata),
        manifest.module,
        checksummed=True,
        build=partial(_satchel_tree, opened, verify),
        bulk=bulk_loader(opened, verify=verify, check=check_stored),
    )


def _plain_tree(opened: Opened, *, verify: bool) -> Tree:
    # A plain safetensors file: a flat dict of NumPy arrays, in data order.
    storages = stored_storages(opened, verify=verify)
    root = {
        e.name: ArrayRef(
            storages[e.name], e.dtype, e.shape, c_strides(e.shape), 0, framework="numpy"
        )
        for e in opened.header.entries
    }
    return Tree(root, "safetensors", dict(opened.header.metadata))


def _satchel_tree(opened: Opened, verify: bool) -> Built:
    where, manifest = str(opened.path), opened.manifest
    assert manifest is not None
    storages = stored_storages(opened, verify=verify)
    refs = leaf_refs(manifest.leaves, storages)
    flat = manifest.flat
    if flat is None:
        root = unflatten(manifest.root, refs.__getitem__, where=where)
    else:  # a state dict: built in one pass (validated by flat_dict)
        root = dict(zip(flat[0], map(refs.__getitem__, flat[1]), strict=True))
    used = _in_use_order(manifest.leaves, storages, flat)
    return root, used, _sole(manifest.leaves, storages)


def _in_use_order(
    leaves: Sequence[Leaf],
    storages: Mapping[str, Storage],
    flat: tuple[list[str], list[int]] | None,
) -> tuple[Storage, ...]:
    """The storages the leaves view, in the order the structure first uses them (what a walk
    of the structure would list: errors then name the first tensor in the file's order)."""
    order = flat[1] if flat is not None else range(len(leaves))
    return tuple(dict.fromkeys(storages[leaves[i].data] for i in order))


def _sole(leaves: Sequence[Leaf], storages: Mapping[str, Storage]) -> frozenset[int]:
    """Ids of the storages exactly one leaf views, as a whole (most of them: the fast path)."""
    users = Counter(leaf.data for leaf in leaves)
    views = {leaf.data for leaf in leaves if leaf.strides is not None}
    return frozenset(
        id(storages[name]) for name, n in users.items() if n == 1 and name not in views
    )


def stored_storages(opened: Opened, *, verify: bool) -> dict[str, Storage]:
    """One storage per stored tensor, sliced from the mapping on first use; with ``verify``
    and a manifest, each checks its xxh3-64 on first touch (SPEC 3.7)."""
    where, data, manifest = str(opened.path), opened.data, opened.manifest
    checked = verify and manifest is not None
    out = {}
    for e in opened.header.entries:
        check = (
            partial(check_stored, where, e.name, manifest.stored[e.name].xxh3)  # type: ignore[union-attr]
            if checked
            else None
        )
        region = (data, e.start, e.end)
        out[e.name] = Storage(None, e.name, region=region, check=check, origin=where)
    return out


def leaf_refs(leaves: Sequence[Leaf], storages: Mapping[str, Storage]) -> list[ArrayRef]:
    """The manifest's leaves as refs over their stored tensors' storages (SPEC 3.6)."""
    strides: dict[tuple[int, ...], tuple[int, ...]] = {}  # many leaves share a few shapes
    refs = []
    for leaf in leaves:
        st = leaf.strides
        if st is None:
            st = strides.get(leaf.shape)
            if st is None:
                st = strides[leaf.shape] = c_strides(leaf.shape)
        refs.append(
            ArrayRef(
                storages[leaf.data],
                leaf.dtype,
                leaf.shape,
                st,
                leaf.offset,
                leaf.kind,
                leaf.requires_grad,
                leaf.framework,
            )
        )
    return refs


def check_stored(where: str, name: str, expected: str, data: U8Array) -> None:
    """SPEC 3.7: ``data`` hashes to ``expected``, else the IntegrityError naming the tensor."""
    actual = xxh3_hex(data)
    if actual != expected:
        reason = f"checksum mismatch (xxh3 {actual}, recorded {expected})"
        raise IntegrityError(
            f"{where}: tensor {name!r} does not match its checksum (xxh3 {actual}, "
            f"recorded {expected}); the file is corrupt. Restore it from a good copy, or "
            "pass verify=False to read it anyway",
            path=where,
            field=name,
            reason=reason,
        )
