"""Inert stand-ins for pickled NumPy arrays (``numpy.core.multiarray._reconstruct``).

A pickled ndarray is ``_reconstruct(ndarray, (0,), b'b')`` followed by BUILD with
``(version, shape, dtype, is_fortran, raw bytes)``, and its dtype is ``numpy.dtype(code,
False, True)`` followed by BUILD with the byte order. These stand-ins accept exactly that and
build the array from the raw bytes; object dtypes (whose payload would be more pickle) are
refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..._read.refs import Deferred
from ...errors import FormatError, UnsafeContentError
from .pickle_machine import Buildable, Global

__all__ = ["NDARRAY_GLOBALS"]

# Plain numeric dtype codes only: no objects, strings, structured or datetime types.
_CODES = {
    "b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "c8", "c16",
}  # fmt: skip


class _DType(Buildable):
    def __init__(self, code: str, *, where: str) -> None:
        if code not in _CODES:
            raise UnsafeContentError(
                f"{where}: pickled NumPy dtype {code!r} is refused (numeric dtypes only)"
            )
        self.code = code
        self.order = "<"

    def build(self, state: Any, *, where: str) -> None:
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")):
            raise FormatError(f"{where}: pickled NumPy dtype state is malformed")
        self.order = "<" if state[1] in ("|", "=") else state[1]

    @property
    def numpy(self) -> np.dtype[Any]:
        return np.dtype(self.order + self.code)


class _Array(Deferred, Buildable):
    def __init__(self, where: str) -> None:
        self.where = where
        self.array: np.ndarray[Any, Any] | None = None

    def build(self, state: Any, *, where: str) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise FormatError(f"{where}: pickled NumPy array state is not a 5-tuple")
        _version, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DType):
            raise UnsafeContentError(f"{where}: pickled array with a non-numeric dtype")
        if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**63 for n in shape
        ):
            raise FormatError(f"{where}: pickled array shape {shape!r} is not valid")
        if not isinstance(raw, (bytes, bytearray)):
            raise FormatError(f"{where}: pickled array data is not bytes")
        dt = dtype.numpy
        if len(raw) != math.prod(shape) * dt.itemsize:
            raise FormatError(
                f"{where}: pickled array {shape} of {dt} needs {math.prod(shape) * dt.itemsize} "
                f"bytes, has {len(raw)}"
            )
        arr = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")
        self.array = np.asarray(arr, dtype=dt.newbyteorder("="), order="C")

    def resolve(self) -> np.ndarray[Any, Any]:
        if self.array is None:
            raise FormatError(f"{self.where}: pickled array never received its data")
        return self.array


def _reconstruct(cls: Any, shape: Any, code: Any, *, where: str) -> _Array:
    if cls is not _NDARRAY:
        raise UnsafeContentError(f"{where}: _reconstruct of something other than ndarray")
    return _Array(where)


def _dtype(code: Any, align: Any = False, copy: Any = True, *, where: str) -> _DType:
    if not isinstance(code, str):
        raise FormatError(f"{where}: numpy.dtype needs a type code")
    return _DType(code, where=where)


_NDARRAY = Global("numpy.ndarray")
_RECONSTRUCT = Global("numpy.core.multiarray._reconstruct", call=_reconstruct)
_DTYPE = Global("numpy.dtype", call=_dtype)

NDARRAY_GLOBALS: dict[tuple[str, str], Global] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
}
