"""The save planner: a user object in, a :class:`Plan` out (what bytes go where). Pure.

It decides which arrays are stored once (tied weights, views of one base), names the stored
tensors, orders them so each starts aligned to its item size without padding (SPEC 2.2), and
lays out their byte ranges. A plan is frozen data that tests and later splitters (shards, ranks,
steps) can inspect; :func:`render_header` is a pure function of a plan and its digests, and the
writer in ``_io`` only executes the plan.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import attrgetter, mod, sub
from typing import Any, NamedTuple

import numpy as np

from . import dtypes
from ._format.header import Entry, encode_header
from ._format.manifest import (
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_KEY,
    Leaf,
    Manifest,
    Stored,
    encode_manifest,
)
from ._format.validate import xxh3_hex
from ._tree import Flat, Json, flatten, unique_names
from .adapters import ArrayView, describe, is_array
from .errors import UnsupportedObjectError

__all__ = [
    "PLACEHOLDER_DIGEST",
    "Plan",
    "StoredTensor",
    "digests",
    "header_len",
    "plan_flat",
    "plan_save",
    "render_header",
]

_RESERVED = frozenset({"__metadata__"})
_U8 = dtypes.get("uint8")
PLACEHOLDER_DIGEST = "0" * 16  # same width as every xxh3-64 hex digest


class StoredTensor(NamedTuple):
    """One stored tensor: its true dtype and shape (the manifest's) and its bytes, not copied."""

    name: str
    dtype: dtypes.DType
    shape: tuple[int, ...]
    data: np.ndarray[Any, np.dtype[np.uint8]]
    align: int = 1  # the largest item size of the leaves viewing it (SPEC 2.2)


@dataclass(frozen=True)
class Plan:
    """What the writer executes, as data.

    ``entries`` are the safetensors header's records in file order (name, wire dtype, shape,
    byte range relative to the data section); ``stored`` holds the same tensors with their true
    dtype and their bytes; ``leaves`` and ``skeleton`` restore the user's structure (SPEC 3-4).
    Checksums are fixed-width (16 hex digits), so the header's length does not depend on them.
    """

    entries: tuple[Entry, ...]
    stored: tuple[StoredTensor, ...]
    leaves: tuple[Leaf, ...]
    skeleton: Json
    metadata: Mapping[str, str]
    module: str | None = None

    @property
    def chunks(self) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], ...]:
        return tuple(s.data for s in self.stored)

    @property
    def data_len(self) -> int:
        return self.entries[-1].end if self.entries else 0


def digests(plan: Plan) -> list[str]:
    """xxh3-64 of every stored tensor, in file order (SPEC 3.7)."""
    return list(map(xxh3_hex, map(_DATA, plan.stored)))


def render_header(plan: Plan, digests: Sequence[str]) -> bytes:
    """The header bytes (length prefix, JSON, padding) of ``plan`` given its digests. Pure."""
    if len(digests) != len(plan.stored):
        raise ValueError(f"{len(digests)} digests for {len(plan.stored)} stored tensors")
    records = map(Stored, map(_DTYPE, plan.stored), map(_SHAPE, plan.stored), digests)
    stored = dict(zip(map(_NAME, plan.stored), records, strict=True))
    manifest = encode_manifest(
        Manifest(plan.skeleton, plan.leaves, stored, dict(plan.metadata), plan.module)
    )
    header_meta = {
        **plan.metadata,
        MANIFEST_KEY: manifest,
        MANIFEST_CHECKSUM_KEY: xxh3_hex(manifest.encode("ascii")),
    }
    return encode_header(list(plan.entries), header_meta)


def header_len(plan: Plan) -> int:
    """Where the data section starts: the header rendered with placeholder digests."""
    return len(render_header(plan, [PLACEHOLDER_DIGEST] * len(plan.stored)))


# The planner's working record of a stored tensor is the plan's own record.
_Store = StoredTensor


def plan_save(
    obj: Any, *, metadata: Mapping[str, str] | None = None, module: str | None = None
) -> Plan:
    """Plan how ``obj`` is written.

    Raises:
        UnsupportedObjectError: for anything satchel cannot store; nothing is written then.
    """
    meta = _check_metadata(metadata)
    state = _state_dict(obj)
    flat = state or flatten(obj, is_leaf=is_array)
    names = unique_names(flat.names, reserved=_RESERVED)
    plain = _plain_torch(flat.leaves, names) if state is not None else None
    if plain is not None:
        return _layout(flat.skeleton, *plain, meta, module)
    views = _describe_all(flat.leaves, flat.names)
    stores: list[_Store] = []
    leaves: list[Leaf | None] = [None] * len(views)
    for group in _groups(views):
        if len(group) == 1:
            i = group[0]
            v = views[i]
            stores.append(
                _Store(names[i], v.dtype, v.shape, _bytes_of(v.values()), v.dtype.itemsize)
            )
            leaves[i] = Leaf(
                v.framework, v.kind, v.dtype, v.shape, names[i], 0, None, v.requires_grad
            )
        else:
            _plan_shared(group, views, names, stores, leaves)
    return _layout(flat.skeleton, [x for x in leaves if x is not None], stores, meta, module)


def _plain_torch(values: Sequence[Any], names: list[str]) -> tuple[list[Leaf], list[_Store]] | None:
    """What the loop of ``plan_save`` makes of a state dict of plain torch tensors (each its
    own allocation, so each stored whole), built over whole lists; None for anything else."""
    if "torch" not in sys.modules:
        return None
    from .adapters import torch as torch_adapter  # noqa: PLC0415 - torch is imported already

    described = torch_adapter.describe_plain(values)
    if described is None:
        return None
    dts, shapes, data = described
    stores = list(map(_Store, names, dts, shapes, data, map(_ITEMSIZE, dts)))
    leaves = list(map(Leaf, repeat("torch"), repeat("tensor"), dts, shapes, names))  # type: ignore[arg-type]
    return leaves, stores


def _describe_all(leaves: Sequence[Any], names: Sequence[str]) -> list[ArrayView]:
    """``describe`` of every leaf; plain torch tensors go straight to the torch adapter (the
    generic dispatch re-imports it per call, which shows at 50,000 tensors)."""
    if "torch" not in sys.modules:
        return [describe(x, where=name) for x, name in zip(leaves, names, strict=True)]
    import torch  # noqa: PLC0415 - already imported: the user's leaves are torch tensors

    from .adapters import torch as torch_adapter  # noqa: PLC0415 - imports torch at its top

    direct = (torch.Tensor, torch.nn.Parameter)
    return [
        torch_adapter.describe(x, where=name) if type(x) in direct else describe(x, where=name)
        for x, name in zip(leaves, names, strict=True)
    ]


def _state_dict(obj: Any) -> Flat | None:
    """What :func:`flatten` makes of a plain dict of str keys to distinct arrays (a state dict,
    the most common thing saved), in one pass instead of a walk; None for anything else."""
    if type(obj) is not dict or not obj:
        return None
    keys = list(obj)
    values = list(obj.values())
    if set(map(type, keys)) != {str}:
        return None
    if not set(map(type, values)) <= _array_types() and not all(map(is_array, values)):
        return None
    if len(set(map(id, values))) != len(values):
        return None  # tied arrays: the walk stores each once
    skeleton = {"$dict": [[k, {"$t": i}] for i, k in enumerate(keys)]}
    return Flat(skeleton, tuple(values), tuple(keys))


def _array_types() -> set[type]:
    """Types whose every instance is an array leaf (``is_array``'s answer, known in bulk)."""
    found: set[type] = {np.ndarray}
    torch = sys.modules.get("torch")
    if torch is not None:
        found.add(torch.Tensor)
    return found


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise UnsupportedObjectError(
                f"metadata must map str to str (safetensors' rule); got {k!r}: {type(v).__name__}"
            )
        if k.startswith(MANIFEST_KEY):
            raise UnsupportedObjectError(
                f"metadata key {k!r}: keys starting 'satchel' are reserved"
            )
    return meta


def _groups(views: list[ArrayView]) -> list[list[int]]:
    """Leaves grouped by the allocation they live in; empty or unshareable ones stand alone."""
    by_key: dict[object, list[int]] = {}
    order: list[list[int]] = []
    for i, v in enumerate(views):
        if (
            v.memory is None
            or math.prod(v.shape) == 0
            or v.kind == "bytes"
            or v.memory.offset % v.dtype.itemsize
        ):
            order.append([i])
            continue
        if v.memory.key not in by_key:
            by_key[v.memory.key] = []
            order.append(by_key[v.memory.key])
        by_key[v.memory.key].append(i)
    return order


def _extent(v: ArrayView) -> tuple[int, int]:
    assert v.memory is not None
    isz = v.dtype.itemsize
    lo = sum(min(0, (n - 1) * s) for n, s in zip(v.shape, v.memory.strides, strict=True))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(v.shape, v.memory.strides, strict=True))
    return v.memory.offset + lo * isz, v.memory.offset + hi * isz + isz


def _plan_shared(
    group: list[int],
    views: list[ArrayView],
    names: list[str],
    stores: list[_Store],
    leaves: list[Leaf | None],
) -> None:
    """Store the byte span covering every view of one allocation once (SPEC 3.6)."""
    extents = [_extent(views[i]) for i in group]
    align = max(views[i].dtype.itemsize for i in group)
    start = min(lo for lo, _ in extents)
    end = max(hi for _, hi in extents)
    # A leaf that is C-contiguous and covers the span exactly becomes the stored tensor itself,
    # so safetensors readers see it under its own name, dtype and shape.
    owner = next(
        (
            i
            for i, (lo, hi) in zip(group, extents, strict=True)
            if (lo, hi) == (start, end)
            and _c_contiguous(views[i])
            and views[i].dtype.itemsize == align
        ),
        None,
    )
    first = views[group[0]]
    whole = first.memory.whole() if first.memory else None
    assert whole is not None
    if owner is not None:
        v = views[owner]
        base_name = names[owner]
        store = _Store(base_name, v.dtype, v.shape, whole[start:end], align)
    else:
        # Round the span start down to the largest item size: every member's offset is a
        # multiple of its own (power-of-two) item size, so offsets into the span stay aligned.
        start -= start % align
        base_name = _span_name(names[group[0]], names)
        same = {views[i].dtype for i in group}
        dt = same.pop() if len(same) == 1 else _U8
        if (end - start) % dt.itemsize:
            dt = _U8
        store = _Store(base_name, dt, ((end - start) // dt.itemsize,), whole[start:end], align)
    stores.append(store)
    for i in group:
        v = views[i]
        assert v.memory is not None
        if i == owner:
            leaves[i] = Leaf(
                v.framework, v.kind, v.dtype, v.shape, base_name, 0, None, v.requires_grad
            )
        else:
            leaves[i] = Leaf(
                v.framework,
                v.kind,
                v.dtype,
                v.shape,
                base_name,
                v.memory.offset - start,
                v.memory.strides,
                v.requires_grad,
            )


def _span_name(first: str, names: list[str]) -> str:
    name = f"{first}.__base__"
    k = 1
    while name in names:
        name = f"{first}.__base__#{k}"
        k += 1
    names.append(name)  # reserve it against later collisions
    return name


def _c_contiguous(v: ArrayView) -> bool:
    assert v.memory is not None
    expected = 1
    for n, s in zip(reversed(v.shape), reversed(v.memory.strides), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _padded(s: _Store) -> _Store:
    """A span of mixed-dtype views whose length is not a multiple of its alignment gets zero
    padding (one copy of that span only), so the tensors after it stay aligned (SPEC 2.2)."""
    if s.data.nbytes % s.align == 0:
        return s
    data = np.zeros(s.data.nbytes + (-s.data.nbytes % s.align), dtype=np.uint8)
    data[: s.data.nbytes] = s.data
    return _Store(s.name, _U8, (data.nbytes,), data, s.align)


def _bytes_of(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    return arr.reshape(-1).view(np.uint8)


def _layout(
    skeleton: Json,
    leaves: list[Leaf],
    stores: list[_Store],
    meta: dict[str, str],
    module: str | None,
) -> Plan:
    # SPEC 2.2: larger item sizes first; every size divides the ones before it and each tensor's
    # byte length is a multiple of its item size, so each start stays aligned with no padding.
    sizes = list(map(_NBYTES, stores))
    aligns = list(map(_ALIGN, stores))
    if any(map(mod, sizes, aligns)):
        stores = [_padded(s) for s in stores]
        sizes = list(map(_NBYTES, stores))
    ordered = stores if len(set(aligns)) <= 1 else sorted(stores, key=_by_align)  # stable
    if ordered is not stores:
        sizes = list(map(_NBYTES, ordered))
    ends = list(accumulate(sizes))
    starts = list(map(sub, ends, sizes))
    dts = list(map(_DTYPE, ordered))
    if all(map(_WIRE, dts)):
        names = map(_NAME, ordered)
        entries = list(map(Entry, names, dts, map(_SHAPE, ordered), starts, ends))
    else:  # SPEC 2.4: a dtype safetensors cannot name goes on the wire as U8 bytes
        entries = [
            Entry(s.name, s.dtype, s.shape, a, b)
            if s.dtype.wire
            else Entry(s.name, _U8, (b - a,), a, b)
            for s, a, b in zip(ordered, starts, ends, strict=True)
        ]
    return Plan(tuple(entries), tuple(ordered), tuple(leaves), skeleton, meta, module)


_NBYTES, _ALIGN = attrgetter("data.nbytes"), attrgetter("align")
_DTYPE, _NAME, _SHAPE = attrgetter("dtype"), attrgetter("name"), attrgetter("shape")
_WIRE, _ITEMSIZE, _DATA = attrgetter("wire"), attrgetter("itemsize"), attrgetter("data")


def _by_align(s: StoredTensor) -> int:
    return -s.align


def plan_flat(
    stored: Sequence[StoredTensor],
    frameworks: Mapping[str, str],
    *,
    metadata: Mapping[str, str],
) -> Plan:
    """A plan for a file holding ``stored`` as a flat dict, each tensor whole (a shard).

    ``stored`` keeps its order in the structure; the data section is laid out by SPEC 2.2.
    ``frameworks`` names each tensor's framework (default NumPy).
    """
    leaves = [
        Leaf(frameworks.get(s.name, "numpy"), "tensor", s.dtype, s.shape, s.name)  # type: ignore[arg-type]
        for s in stored
    ]
    skeleton = {"$dict": [[s.name, {"$t": i}] for i, s in enumerate(stored)]}
    stores = list(stored)
    return _layout(skeleton, leaves, stores, dict(metadata), None)
