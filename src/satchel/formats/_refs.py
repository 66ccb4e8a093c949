"""The common currency of foreign-format readers: arrays as (storage bytes, dtype, layout).

A reader returns the structure its framework's loader would return (dicts, lists, tuples,
plain values), with each array as an :class:`ArrayRef` into a flat uint8 *storage* (usually a
zero-copy slice of the mapped file) or as a plain NumPy array. :func:`finalize` turns refs into
NumPy arrays or torch tensors with the same adapters the native reader uses, so arrays over one
storage keep sharing memory, exactly as in the framework that wrote them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .. import dtypes
from .._format.header import check_addressable
from ..adapters import c_strides
from ..adapters import numpy as np_adapter
from ..errors import FormatError

__all__ = [
    "MAX_NESTING",
    "ArrayRef",
    "Deferred",
    "Storage",
    "c_strides",
    "finalize",
    "make_ref",
    "ref_of_ndarray",
]

# Foreign structures deeper than this are hostile (real checkpoints nest a handful of levels).
MAX_NESTING = 256

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


class Storage:
    """A flat run of bytes that one or more arrays view (identity matters: it is the sharing).

    ``data`` is a little-endian uint8 array; readers byteswap big-endian storages once. A
    format that stores bytes after the structure (legacy torch) creates the storage with its
    declared ``nbytes`` and fills ``data`` later; arrays are validated against ``nbytes``.
    """

    __slots__ = ("_data", "name", "nbytes")

    def __init__(self, data: U8Array | None, name: str, *, nbytes: int | None = None) -> None:
        self._data = data
        self.name = name
        self.nbytes = int(data.nbytes) if data is not None else int(nbytes or 0)

    @property
    def data(self) -> U8Array:
        if self._data is None:
            raise FormatError(f"storage {self.name!r} was declared but its bytes never came")
        return self._data

    def fill(self, data: U8Array) -> None:
        """Provide the bytes of a storage created with a declared size."""
        if data.nbytes != self.nbytes:
            raise FormatError(f"storage {self.name!r}: {data.nbytes} bytes for {self.nbytes}")
        self._data = data


@dataclass(frozen=True)
class ArrayRef:
    """An array viewing ``storage`` at byte ``offset`` with element ``strides``."""

    storage: Storage
    dtype: dtypes.DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int
    kind: Literal["tensor", "parameter"] = "tensor"
    requires_grad: bool = False


class Deferred:
    """A stand-in built while a pickle is interpreted, that becomes an array afterwards.

    Pickles create an object first and give it its state later (NEWOBJ, then BUILD), while
    containers already hold it; ``finalize`` asks each one for its array at the end.
    """

    def resolve(self) -> ArrayRef | np.ndarray[Any, Any]:
        raise NotImplementedError


def make_ref(
    storage: Storage,
    dtype: dtypes.DType,
    shape: tuple[int, ...],
    *,
    strides: tuple[int, ...] | None = None,
    offset: int = 0,
    where: str,
    kind: Literal["tensor", "parameter"] = "tensor",
    requires_grad: bool = False,
) -> ArrayRef:
    """A validated ref: every element it can reach lies inside the storage.

    Raises:
        FormatError: a dimension or stride is not a sane integer, or the view leaves the storage.
    """
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**63:
            raise FormatError(f"{where}: dimension {n!r} in shape {shape!r} is not valid")
    check_addressable(shape, dtype.itemsize, f"{where}: shape")
    strides = c_strides(shape) if strides is None else strides
    if len(strides) != len(shape) or any(
        isinstance(s, bool) or not isinstance(s, int) or abs(s) >= 2**63 for s in strides
    ):
        raise FormatError(f"{where}: strides {strides!r} do not fit shape {shape!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise FormatError(f"{where}: storage offset {offset!r} is not valid")
    isz = dtype.itemsize
    if math.prod(shape) > 0:
        lo = offset + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) * isz
        hi = offset + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) * isz
        if lo < 0 or hi + isz > storage.nbytes:
            raise FormatError(
                f"{where}: array {dtype.name}{list(shape)} at offset {offset} reaches byte "
                f"{hi + isz} of a storage holding {storage.nbytes}; the file is corrupt"
            )
    elif offset > storage.nbytes:
        raise FormatError(f"{where}: storage offset {offset} is past the storage end")
    if offset % isz:
        raise FormatError(f"{where}: offset {offset} is not a multiple of the item size {isz}")
    return ArrayRef(storage, dtype, shape, tuple(strides), offset, kind, requires_grad)


def finalize(
    obj: Any, *, framework: Literal["numpy", "torch"], dtype: Any = None, device: Any = None
) -> Any:
    """Replace every :class:`ArrayRef` in ``obj`` by a NumPy array or torch tensor.

    Containers are rebuilt with their types (dict, OrderedDict with its ``_metadata``, list,
    tuple); anything else is returned as is. Each container is visited once, so a structure that
    refers to itself many times (a "billion laughs" pickle) costs time linear in its size.
    """
    from .._lazy import _cast_dtype

    cast = _cast_dtype(dtype)
    memo: dict[int, Any] = {}
    bases: dict[int, Any] = {}

    def base(storage: Storage) -> Any:
        if id(storage) not in bases:
            if framework == "torch":
                from ..adapters import torch as torch_adapter

                bases[id(storage)] = torch_adapter.from_numpy(storage.data)
            else:
                raw = storage.data
                bases[id(storage)] = np.frombuffer(raw.data, dtype=np.uint8) if raw.nbytes else raw
        return bases[id(storage)]

    def leaf(ref: ArrayRef) -> Any:
        if framework == "torch":
            from ..adapters import torch as torch_adapter

            t = torch_adapter.materialize(
                base(ref.storage), ref.dtype, ref.shape, ref.offset, ref.strides
            )
            return torch_adapter.finish(
                t, kind=ref.kind, requires_grad=ref.requires_grad, dtype=cast, device=device
            )
        arr = np_adapter.materialize(
            base(ref.storage), ref.dtype, ref.shape, ref.offset, ref.strides
        )
        if cast is not None and ref.dtype.floating:
            arr = arr.astype(cast.numpy)
        return arr

    def walk(x: Any, depth: int) -> Any:
        # Memo keys are ids of objects that live in the structure for the whole call (never of
        # temporaries, whose ids Python reuses).
        key = id(x)
        if key in memo:
            return memo[key]
        if depth > MAX_NESTING:
            raise FormatError(f"structure nested deeper than {MAX_NESTING} levels")
        out: Any
        if isinstance(x, Deferred):
            out = walk(x.resolve(), depth)
        elif isinstance(x, ArrayRef):
            out = leaf(x)
        elif isinstance(x, np.ndarray) and framework == "torch":
            ref = ref_of_ndarray(x)
            keep.append(ref)  # bases are keyed by the storage's id: keep it alive
            out = leaf(ref)
        elif isinstance(x, OrderedDict):
            out = OrderedDict()
            memo[key] = out
            for k, v in x.items():
                out[k] = walk(v, depth + 1)
            meta = getattr(x, "_metadata", None)
            if meta is not None:
                out._metadata = walk(meta, depth + 1)
            return out
        elif isinstance(x, dict):
            out = {}
            memo[key] = out
            for k, v in x.items():
                out[k] = walk(v, depth + 1)
            return out
        elif isinstance(x, list):
            out = []
            memo[key] = out
            out.extend(walk(v, depth + 1) for v in x)
            return out
        elif isinstance(x, tuple):
            out = tuple(walk(v, depth + 1) for v in x)
        else:
            return x
        memo[key] = out
        return out

    keep: list[Any] = []
    return walk(obj, 0)


def ref_of_ndarray(
    a: np.ndarray[Any, Any],
    *,
    kind: Literal["tensor", "parameter"] = "tensor",
    requires_grad: bool = False,
) -> ArrayRef:
    """An ArrayRef over a NumPy array's bytes (copied only if not C-contiguous/native)."""
    dt = dtypes.by_numpy(a.dtype)
    if dt is None and a.dtype.byteorder == ">":
        dt = dtypes.by_numpy(a.dtype.newbyteorder("<"))
    if dt is None:
        raise FormatError(f"array of dtype {a.dtype} has no torch equivalent")
    c = np.asarray(a, dtype=dt.numpy, order="C")  # keeps 0-d arrays 0-d
    data = c.reshape(-1).view(np.uint8)
    shape = tuple(int(n) for n in c.shape)
    return ArrayRef(Storage(data, "ndarray"), dt, shape, c_strides(shape), 0, kind, requires_grad)
