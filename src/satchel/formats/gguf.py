"""GGUF (llama.cpp / ggml) files, read without ``gguf``: header, metadata and tensors.

Layout (docs/formats.md#gguf; ggml ``docs/gguf.md``, gguf-py ``constants.py``)::

    "GGUF" u32 version (2 or 3); u64 tensor_count; u64 kv_count
    kv_count x { string key; u32 value_type; value }     string = u64 len + utf-8
    tensor_count x { string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type; u64 offset }
    padding to `general.alignment` (default 32); tensor data, each tensor padded the same way

Every count, length, dimension, type id and offset is checked against caps and the bytes that
remain before it is used (docs/formats.md rules N1-N9, the GGUF CVEs): counts times their smallest
record size must fit, ``n_dims <= 4``, element counts stay below 2**63, the alignment is a power
of two, keys and tensor names are unique, and tensors tile the data section in order, each at
the offset ggml itself expects (no holes, overlaps or trailing bytes). Big-endian files (the
version reads byte-swapped) are read too; version 1 (32-bit counts) is refused, as gguf-py does.

Returned structure, mirroring ``gguf.GGUFReader`` (the fixture's ground truth)::

    {"fields": {"GGUF.version": 3, "GGUF.tensor_count": n, "GGUF.kv_count": m,
                <key>: <value>, ...},                 # file order; values as plain Python
     "tensors": {<name>: <array>, ...}}               # file order

Scalars become ``int``/``float``/``bool``/``str``, arrays become lists. A tensor of F32, F16,
BF16, F64, I8, I16, I32 or I64 is an :class:`~satchel._read.refs.ArrayRef` whose shape is
the reverse of ``ne`` (NumPy order). A quantised tensor is returned undecoded as
``{"ggml_type": "Q8_0", "shape": (rows, ..., cols), "blocks": <uint8 ArrayRef>}`` where
``blocks`` has gguf-py's shape ``(*shape[:-1], cols // block_size * type_size)``.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from .._read.refs import Storage, make_ref
from ..errors import FormatError
from ._codecs.source import map_file
from ._reader import Probe
from .numpy import byteswapped

__all__ = ["GGML_TYPES", "MAGIC", "read", "read_gguf", "sniff"]

MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ALIGNMENT = 1 << 20  # real files use 32..4096; a larger value only inflates padding
_MAX_ARRAY_DEPTH = 8  # nested arrays (gguf-py allows them; ggml does not)
_ALIGNMENT_KEY = "general.alignment"
_MIN_KV = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR = 8 + 4 + 4 + 8  # name length, n_dims, ggml_type, offset

# value_type -> struct code (docs/formats.md#gguf); 7 bool, 8 string and 9 array are handled apart.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "B",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY, _BOOL = 8, 9, 7

# ggml_type -> (name, block size, bytes per block, satchel dtype for unquantised types)
# from gguf-py constants.py GGML_QUANT_SIZES (QK_K = 256).
GGML_TYPES: dict[int, tuple[str, int, int, str | None]] = {
    0: ("F32", 1, 4, "float32"), 1: ("F16", 1, 2, "float16"), 2: ("Q4_0", 32, 18, None),
    3: ("Q4_1", 32, 20, None), 6: ("Q5_0", 32, 22, None), 7: ("Q5_1", 32, 24, None),
    8: ("Q8_0", 32, 34, None), 9: ("Q8_1", 32, 40, None), 10: ("Q2_K", 256, 84, None),
    11: ("Q3_K", 256, 110, None), 12: ("Q4_K", 256, 144, None), 13: ("Q5_K", 256, 176, None),
    14: ("Q6_K", 256, 210, None), 15: ("Q8_K", 256, 292, None), 16: ("IQ2_XXS", 256, 66, None),
    17: ("IQ2_XS", 256, 74, None), 18: ("IQ3_XXS", 256, 98, None), 19: ("IQ1_S", 256, 50, None),
    20: ("IQ4_NL", 32, 18, None), 21: ("IQ3_S", 256, 110, None), 22: ("IQ2_S", 256, 82, None),
    23: ("IQ4_XS", 256, 136, None), 24: ("I8", 1, 1, "int8"), 25: ("I16", 1, 2, "int16"),
    26: ("I32", 1, 4, "int32"), 27: ("I64", 1, 8, "int64"), 28: ("F64", 1, 8, "float64"),
    29: ("IQ1_M", 256, 56, None), 30: ("BF16", 1, 2, "bfloat16"), 34: ("TQ1_0", 256, 54, None),
    35: ("TQ2_0", 256, 66, None), 39: ("MXFP4", 32, 17, None), 40: ("NVFP4", 64, 36, None),
    41: ("Q1_0", 128, 18, None),
}  # fmt: skip

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


class _Cursor:
    """Reads little- or big-endian fields, checking each length against the bytes left."""

    def __init__(self, buf: U8Array, where: str, order: str) -> None:
        self.buf, self.raw, self.pos, self.where, self.order = buf, buf.data, 0, where, order

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.remaining():
            raise FormatError(
                f"{self.where}: {what} needs {n} bytes at offset {self.pos} but only "
                f"{self.remaining()} remain; the file is truncated or corrupt"
            )

    def scalar(self, code: str, what: str) -> Any:
        size = struct.calcsize(code)
        self.need(size, what)
        (v,) = struct.unpack_from(self.order + code, self.raw, self.pos)
        self.pos += size
        return v

    def count(self, what: str, min_size: int) -> int:
        n = int(self.scalar("Q", what))
        # Rule N1: a count must fit in the bytes that remain.
        if n * min_size > self.remaining():
            raise FormatError(
                f"{self.where}: {what} is {n} but only {self.remaining()} bytes remain "
                f"(each needs at least {min_size}); the file is corrupt or hostile"
            )
        return n

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{self.where}: {what} is not valid UTF-8") from e

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise FormatError(f"{self.where}: {what} nests arrays deeper than {depth}")
            etype = int(self.scalar("I", f"element type of {what}"))
            if etype in _SCALARS:
                return self.numbers(etype, what)
            if etype not in (_STRING, _ARRAY):
                raise FormatError(f"{self.where}: {what} has unknown element type {etype}")
            n = self.count(f"element count of {what}", 8 if etype == _STRING else 12)
            return [self.value(etype, f"{what}[{i}]", depth + 1) for i in range(n)]
        if vtype not in _SCALARS:
            raise FormatError(f"{self.where}: {what} has unknown value type {vtype}")
        v = self.scalar(_SCALARS[vtype], what)
        return self.boolean(v, what) if vtype == _BOOL else v

    def numbers(self, etype: int, what: str) -> list[Any]:
        code = _SCALARS[etype]
        size = struct.calcsize(code)
        n = self.count(f"element count of {what}", size)
        dt = np.dtype(self.order + code)
        vals = np.frombuffer(self.raw, dtype=dt, count=n, offset=self.pos).tolist()
        self.pos += n * size
        return [self.boolean(v, what) for v in vals] if etype == _BOOL else vals

    def boolean(self, v: int, what: str) -> bool:
        if v not in (0, 1):
            raise FormatError(f"{self.where}: {what} is a bool stored as {v}, not 0 or 1")
        return bool(v)


def read_gguf(buf: U8Array, *, where: str) -> dict[str, Any]:
    """The fields and tensors of a GGUF image (see the module docstring for the structure).

    Raises:
        FormatError: anything that breaks docs/formats.md#gguf or the checks listed above.
    """
    if len(buf) < 24 or bytes(buf[:4]) != MAGIC:
        raise FormatError(f"{where}: not a GGUF file (no 'GGUF' magic or shorter than 24 bytes)")
    version = int.from_bytes(bytes(buf[4:8]), "little")
    order = "<"
    if version not in (2, 3) and int.from_bytes(bytes(buf[4:8]), "big") in (2, 3):
        order, version = ">", int.from_bytes(bytes(buf[4:8]), "big")
    if version not in (2, 3):
        hint = " (version 1 used 32-bit counts; gguf-py refuses it too)" if version == 1 else ""
        raise FormatError(f"{where}: GGUF version {version} is not 2 or 3{hint}")
    cur = _Cursor(buf, where, order)
    cur.pos = 8
    n_tensors = cur.count("tensor_count", _MIN_TENSOR)
    n_kv = cur.count("kv_count", _MIN_KV)
    fields: dict[str, Any] = {
        "GGUF.version": version, "GGUF.tensor_count": n_tensors, "GGUF.kv_count": n_kv,
    }  # fmt: skip
    alignment = 32
    for i in range(n_kv):
        key = cur.string(f"key of metadata entry {i}")
        vtype = int(cur.scalar("I", f"value type of {key!r}"))
        # Rule N9: duplicate keys would make readers disagree about the value.
        if key in fields:
            raise FormatError(f"{where}: metadata key {key!r} appears twice")
        fields[key] = cur.value(vtype, f"metadata {key!r}")
        if key == _ALIGNMENT_KEY:
            alignment = _alignment(fields[key], vtype, where)
    infos = [_tensor_info(cur, i) for i in range(n_tensors)]
    names = [name for name, *_ in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise FormatError(f"{where}: tensor {dup!r} is listed twice")
    data_start = _pad(cur.pos, alignment)
    tensors: dict[str, Any] = {}
    expected = 0
    for name, shape, gtype, offset in infos:
        tname, block, type_size, dt_name = GGML_TYPES[gtype]
        nbytes = math.prod(shape) // block * type_size
        # ggml's own check: each tensor starts where the previous one, padded, ended.
        if offset != expected:
            raise FormatError(
                f"{where}: tensor {name!r} data offset is {offset}, expected {expected} "
                f"(tensors must follow each other, aligned to {alignment}, without gaps)"
            )
        start = data_start + offset
        if start + nbytes > len(buf):
            raise FormatError(
                f"{where}: tensor {name!r} ({tname}{list(shape)}) needs bytes {start}.."
                f"{start + nbytes} but the file has {len(buf)}; it is truncated"
            )
        raw = buf[start : start + nbytes]
        if dt_name is None:
            rows = (*shape[:-1], shape[-1] // block * type_size)
            blocks = make_ref(Storage(raw, name), dtypes.get("uint8"), rows, where=where)
            tensors[name] = {"ggml_type": tname, "shape": shape, "blocks": blocks}
        else:
            dt = dtypes.get(dt_name)
            if order == ">":
                raw = byteswapped(raw, dt)
            tensors[name] = make_ref(Storage(raw, name), dt, shape, where=f"{where}: {name}")
        expected = _pad(offset + nbytes, alignment)
    end = data_start + expected if infos else data_start
    if len(buf) > end:
        raise FormatError(
            f"{where}: {len(buf) - end} unexplained bytes after the last tensor (a polyglot?)"
        )
    return {"fields": fields, "tensors": tensors}


def _tensor_info(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
    where = cur.where
    name = cur.string(f"name of tensor {i}")
    n_dims = int(cur.scalar("I", f"n_dims of tensor {name!r}"))
    if n_dims > _MAX_DIMS:  # rule N2
        raise FormatError(f"{where}: tensor {name!r} has {n_dims} dimensions; ggml allows 4")
    ne = [int(cur.scalar("Q", f"ne of tensor {name!r}")) for _ in range(n_dims)]
    gtype = int(cur.scalar("I", f"ggml_type of tensor {name!r}"))
    offset = int(cur.scalar("Q", f"offset of tensor {name!r}"))
    if gtype not in GGML_TYPES:  # rule N8
        raise FormatError(f"{where}: tensor {name!r} has unknown ggml_type {gtype}")
    tname, block, _, _ = GGML_TYPES[gtype]
    # Rule N3: Python ints cannot wrap; ggml requires every count below 2**63.
    if any(n >= 2**63 for n in ne) or math.prod(ne) >= 2**63:
        raise FormatError(f"{where}: tensor {name!r} dimensions {ne} overflow 64 bits")
    if (ne[0] if ne else 1) % block:
        raise FormatError(
            f"{where}: tensor {name!r} row length {ne[0] if ne else 1} is not a multiple of "
            f"the {tname} block size {block}"
        )
    return name, tuple(reversed(ne)), gtype, offset


def _alignment(value: Any, vtype: int, where: str) -> int:
    # Rules N5 and N7: the right type, a non-zero power of two, and sane.
    if vtype != 4 or not 0 < value <= _MAX_ALIGNMENT or value & (value - 1):
        raise FormatError(
            f"{where}: {_ALIGNMENT_KEY} must be a uint32 power of two up to {_MAX_ALIGNMENT}, "
            f"got {value!r} (value type {vtype})"
        )
    return int(value)


def _pad(n: int, alignment: int) -> int:
    return n + (-n % alignment)


# -- registry hooks -----------------------------------------------------------------------------
def sniff(probe: Probe) -> bool:
    """The ``GGUF`` magic."""
    return probe.head[:4] == MAGIC


def read(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """``{"fields": ..., "tensors": ...}`` of a GGUF file (see the module docstring)."""
    return read_gguf(map_file(path), where=str(path))
