"""NumPy adapter: ndarrays and NumPy scalars in, ndarrays (views of the mapped file) out."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dtypes
from ..errors import UnsupportedObjectError
from ._view import ArrayView, Kind, Memory

__all__ = ["describe", "describe_bytes", "materialize"]


def describe(x: np.ndarray[Any, Any] | np.generic, *, where: str) -> ArrayView:
    """An :class:`ArrayView` of a NumPy array or scalar; big-endian data is byteswapped first."""
    kind: Kind = "scalar" if isinstance(x, np.generic) else "tensor"
    arr = np.asarray(x)
    dt = dtypes.by_numpy(arr.dtype)
    if dt is None and arr.dtype.byteorder == ">":
        # SPEC 2.3: data is little-endian; swapping here costs one copy of this array only.
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        dt = dtypes.by_numpy(arr.dtype)
    if dt is None:
        raise UnsupportedObjectError(
            f"cannot save array {where or '<root>'!r} of dtype {arr.dtype}: satchel stores "
            f"{', '.join(d.name for d in dtypes.DTYPES)} (object, string and structured arrays "
            "would need pickle); convert it first"
        )
    shape = tuple(int(n) for n in arr.shape)
    return ArrayView(
        framework="numpy",
        kind=kind,
        dtype=dt,
        shape=shape,
        requires_grad=False,
        memory=_memory(arr, dt.itemsize),
        values=lambda: np.asarray(arr, order="C"),
    )


def describe_bytes(b: bytes) -> ArrayView:
    """``bytes`` are stored as a uint8 tensor so they are checksummed like any data."""
    arr = np.frombuffer(b, dtype=np.uint8)
    dt = dtypes.by_numpy(arr.dtype)
    assert dt is not None
    return ArrayView("numpy", "bytes", dt, (len(b),), False, None, lambda: arr)


def _memory(arr: np.ndarray[Any, Any], itemsize: int) -> Memory | None:
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    contiguous = root.flags.c_contiguous or root.flags.f_contiguous
    if not contiguous or any(s % itemsize for s in arr.strides):
        return None
    offset = arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    strides = tuple(s // itemsize for s in arr.strides)
    return Memory(
        key=("numpy", id(root)),
        offset=offset,
        strides=strides,
        # order="K" walks memory order, so a Fortran-ordered root is also a view, not a copy.
        whole=lambda: root.ravel(order="K").view(np.uint8),
    )


def materialize(
    base: np.ndarray[Any, np.dtype[np.uint8]],
    dtype: dtypes.DType,
    shape: tuple[int, ...],
    offset: int,
    strides: tuple[int, ...],
) -> np.ndarray[Any, Any]:
    """A NumPy view into ``base`` (already validated to lie inside it); no copy."""
    return np.ndarray(
        shape,
        dtype=dtype.numpy,
        buffer=base,
        offset=offset,
        strides=tuple(s * dtype.itemsize for s in strides),
    )
