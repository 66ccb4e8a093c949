"""The one dtype table: satchel name <-> safetensors wire name <-> item size <-> NumPy dtype.

No framework is imported here; bfloat16 and float8 come from ``ml_dtypes``, which extends NumPy.
Adapters map their own dtypes onto the satchel names below.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = ["DTYPES", "DType", "by_name", "by_numpy", "by_wire", "get"]


@dataclass(frozen=True)
class DType:
    """One element type.

    ``wire`` is the safetensors dtype string used in the header, or ``None`` when safetensors has
    no such type: then the tensor is stored as raw ``U8`` bytes and its true dtype lives only in
    the satchel manifest (SPEC 2.4).
    """

    name: str
    wire: str | None
    itemsize: int
    numpy: np.dtype[np.generic]
    floating: bool


def _d(name: str, wire: str | None, np_type: object, *, floating: bool = False) -> DType:
    dt = np.dtype(np_type)  # type: ignore[call-overload]
    return DType(name, wire, dt.itemsize, dt, floating)


DTYPES: tuple[DType, ...] = (
    _d("bool", "BOOL", np.bool_),
    _d("uint8", "U8", np.uint8),
    _d("int8", "I8", np.int8),
    _d("uint16", "U16", np.uint16),
    _d("int16", "I16", np.int16),
    _d("uint32", "U32", np.uint32),
    _d("int32", "I32", np.int32),
    _d("uint64", "U64", np.uint64),
    _d("int64", "I64", np.int64),
    _d("float16", "F16", np.float16, floating=True),
    _d("bfloat16", "BF16", ml_dtypes.bfloat16, floating=True),
    _d("float32", "F32", np.float32, floating=True),
    _d("float64", "F64", np.float64, floating=True),
    _d("float8_e4m3fn", "F8_E4M3", ml_dtypes.float8_e4m3fn, floating=True),
    _d("float8_e5m2", "F8_E5M2", ml_dtypes.float8_e5m2, floating=True),
    _d("complex64", "C64", np.complex64),
    _d("complex128", None, np.complex128),
)

_BY_NAME = {d.name: d for d in DTYPES}
_BY_WIRE = {d.wire: d for d in DTYPES if d.wire is not None}
# Native byte order only: the format is little-endian (SPEC 2.3) and adapters byteswap first.
_BY_NUMPY = {d.numpy: d for d in DTYPES}


def by_name(name: str) -> DType | None:
    """The dtype called ``name`` in a satchel manifest, or ``None`` when unknown."""
    return _BY_NAME.get(name)


def get(name: str) -> DType:
    """The dtype called ``name``; for names written in satchel's own code, never file input."""
    return _BY_NAME[name]


def by_wire(wire: str) -> DType | None:
    """The dtype for a safetensors header dtype string, or ``None`` when unknown."""
    return _BY_WIRE.get(wire)


def by_numpy(dt: np.dtype[np.generic]) -> DType | None:
    """The dtype matching a NumPy dtype (native or little-endian byte order), else ``None``."""
    if dt.byteorder == ">":
        return None
    return _BY_NUMPY.get(dt.newbyteorder("="))
