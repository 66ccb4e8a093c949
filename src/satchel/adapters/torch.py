"""PyTorch adapter: tensors and Parameters in, tensors sharing the mapped file's memory out.

Imported only when a torch object is saved or a torch leaf is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter, methodcaller, mul, sub
from typing import Any

import numpy as np
import torch

from .. import dtypes
from ..errors import UnsupportedObjectError
from . import numpy as np_adapter
from ._view import ArrayView, Kind, Memory

__all__ = [
    "describe",
    "describe_plain",
    "finish",
    "from_numpy",
    "materialize",
    "to_torch_dtype",
]

_TO_NAME: dict[torch.dtype, str] = {
    torch.bool: "bool",
    torch.uint8: "uint8",
    torch.int8: "int8",
    torch.uint16: "uint16",
    torch.int16: "int16",
    torch.uint32: "uint32",
    torch.int32: "int32",
    torch.uint64: "uint64",
    torch.int64: "int64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float8_e4m3fn: "float8_e4m3fn",
    torch.float8_e5m2: "float8_e5m2",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
}
_FROM_NAME = {v: k for k, v in _TO_NAME.items()}
_DTYPES = {k: dtypes.get(v) for k, v in _TO_NAME.items()}
# dtypes whose tensors Tensor.numpy() can return directly (bfloat16/float8 it cannot).
_NUMPY_NATIVE = frozenset(_TO_NAME) - {torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2}


def to_torch_dtype(dt: dtypes.DType) -> torch.dtype:
    """The torch dtype for a satchel dtype (every satchel dtype has one)."""
    return _FROM_NAME[dt.name]


def describe(x: Any, *, where: str) -> ArrayView:
    """An :class:`ArrayView` of a tensor; GPU tensors are copied to host, conj/neg bits resolved."""
    if not isinstance(x, torch.Tensor):
        raise UnsupportedObjectError(f"cannot save {type(x).__qualname__} at {where!r}")
    name = _TO_NAME.get(x.dtype)
    if name is None or x.layout != torch.strided or x.is_quantized:
        raise UnsupportedObjectError(
            f"cannot save tensor {where or '<root>'!r}: dtype {x.dtype}, layout {x.layout} is not "
            "supported (dense tensors of bool, ints, floats, bfloat16, float8 and complex are); "
            "convert it with .to_dense() or .to(torch.float32) first"
        )
    dt = _DTYPES[x.dtype]
    # issubclass, not isinstance: Parameter's metaclass makes isinstance ten times slower.
    kind: Kind = "parameter" if issubclass(type(x), torch.nn.Parameter) else "tensor"
    requires_grad = bool(x.requires_grad)
    t = x.detach() if requires_grad else x
    memory: Memory | None = None
    if not t.is_cpu or t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg().cpu()
    else:
        storage = t.untyped_storage()
        memory = Memory(
            ("torch", storage.data_ptr(), storage.nbytes()),
            int(t.storage_offset()) * dt.itemsize,
            tuple(t.stride()),
            lambda: torch.empty(0, dtype=torch.uint8).set_(storage).numpy(),
        )
    shape = tuple(t.shape)

    def values() -> np.ndarray[Any, Any]:
        if x.dtype in _NUMPY_NATIVE and t.is_contiguous():
            return t.numpy()  # one call, no copy: the common case
        flat = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        return flat.view(dt.numpy).reshape(shape)

    return ArrayView("torch", kind, dt, shape, requires_grad, memory, values)


def describe_plain(
    values: Sequence[Any],
) -> tuple[list[dtypes.DType], list[tuple[int, ...]], list[np.ndarray[Any, Any]]] | None:
    """For plain tensors (exact ``torch.Tensor``: dense CPU, C-contiguous, no grad, no
    conj/neg bit, not empty, a dtype NumPy holds, each in its own allocation): their dtypes,
    shapes and bytes as flat uint8 arrays (no copy), checked over the whole list at once.

    ``None`` when any tensor is not plain: ``describe`` then takes each in turn (what it
    would make of these is exactly this).
    """
    if set(map(type, values)) != {torch.Tensor}:
        return None
    types = list(map(_TYPE, values))
    if not _NUMPY_NATIVE.issuperset(types):
        return None
    if (
        set(map(_LAYOUT, values)) != {torch.strided}
        or any(map(_GRAD, values))
        or any(map(_QUANTIZED, values))
        or not all(map(_CPU, values))
        or any(map(torch.Tensor.is_conj, values))
        or any(map(torch.Tensor.is_neg, values))
        or not all(map(torch.Tensor.is_contiguous, values))
        or not all(map(torch.Tensor.numel, values))
    ):
        return None
    dts = list(map(_DTYPES.__getitem__, types))
    # A non-empty allocation starts where no other live one does: distinct starts mean no
    # two tensors share one (the planner would store them once, as views).
    offsets = map(mul, map(torch.Tensor.storage_offset, values), map(attrgetter("itemsize"), dts))
    starts = set(map(sub, map(torch.Tensor.data_ptr, values), offsets))
    if len(starts) != len(values):
        return None
    shapes = list(map(tuple, map(_SHAPE, values)))
    arrays = map(torch.Tensor.numpy, values)
    if set(map(len, shapes)) != {1}:  # one-dimensional arrays are flat already
        arrays = map(_FLATTEN, arrays)
    flat = list(map(_U8_VIEW, arrays, repeat(np.uint8)))
    return dts, shapes, flat


_TYPE, _LAYOUT, _SHAPE = attrgetter("dtype"), attrgetter("layout"), attrgetter("shape")
_GRAD, _QUANTIZED, _CPU = (
    attrgetter("requires_grad"),
    attrgetter("is_quantized"),
    attrgetter("is_cpu"),
)
_FLATTEN = methodcaller("reshape", -1)
_U8_VIEW = np.ndarray.view


def materialize(
    base: torch.Tensor,
    dtype: dtypes.DType,
    shape: tuple[int, ...],
    offset: int,
    strides: tuple[int, ...],
) -> torch.Tensor:
    """A tensor viewing ``base`` (a flat uint8 tensor) at byte ``offset``; no copy.

    All leaves built from one ``base`` share its storage, so views and tied weights stay shared.
    """
    isz = dtype.itemsize
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=to_torch_dtype(dtype))
    if any(s < 0 for s in strides):
        # torch has no negative strides (NumPy does): this leaf comes back as a copy.
        flipped = base.numpy()
        arr = np_adapter.materialize(flipped, dtype, shape, offset, strides)
        return (
            from_numpy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
            .view(to_torch_dtype(dtype))
            .reshape(shape)
        )
    usable = base.numel() - base.numel() % isz
    typed = base[:usable].view(to_torch_dtype(dtype))
    return typed.as_strided(shape, strides, offset // isz)


def finish(
    t: torch.Tensor,
    *,
    kind: str,
    requires_grad: bool,
    dtype: dtypes.DType | None,
    device: Any,
) -> torch.Tensor:
    """Cast floating tensors, place on ``device``, and make a Parameter again if it was one."""
    if dtype is not None and t.is_floating_point():
        t = t.to(to_torch_dtype(dtype))
    if device is not None:
        t = t.to(device)
    if kind == "parameter":
        return torch.nn.Parameter(t, requires_grad=requires_grad)
    if kind == "scalar":
        return t.reshape(())
    return t


def from_numpy(arr: np.ndarray[Any, Any]) -> torch.Tensor:
    """Wrap a NumPy array (a view of the mapped file) as a tensor without copying.

    satchel maps files copy-on-write, so its arrays are writable; a read-only array (bytes
    from a pickle) is copied, since torch has no read-only tensors.
    """
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
