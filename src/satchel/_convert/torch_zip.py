"""Writing a PyTorch zip checkpoint without torch (docs/formats.md#torch-writer).

The pickle is protocol 2 and uses only the opcodes and globals ``torch.load(weights_only=True)``
accepts: ``_rebuild_tensor_v2`` (``_v3`` with ``UntypedStorage`` for dtypes that have no legacy
storage class), ``collections.OrderedDict``, ``_codecs.encode`` for bytes. Records are stored
uncompressed with payloads 64-byte aligned through a ``FB`` padding extra field, as torch does.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from .._io.atomic import atomic_file
from .._tree import MAX_NODES
from ..errors import UnsupportedObjectError

__all__ = ["write_torch"]

_STORAGE_CLASS = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "bfloat16": "BFloat16Storage", "complex128": "ComplexDoubleStorage",
    "complex64": "ComplexFloatStorage",
}  # fmt: skip
_ALIGN = 64


class _Pickler:
    """Emits protocol-2 opcodes for plain containers and arrays; arrays become storages."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.storages: list[np.ndarray[Any, np.dtype[np.uint8]]] = []
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []  # objects whose id() is memoized must stay alive
        self.visits = 0

    def w(self, b: bytes) -> None:
        self.out.write(b)

    def dump(self, obj: Any) -> bytes:
        self.w(b"\x80\x02")
        self.save(obj, 0)
        self.w(b".")
        return self.out.getvalue()

    def glob(self, module: str, name: str) -> None:
        self.w(f"c{module}\n{name}\n".encode("ascii"))

    def save(self, x: Any, depth: int) -> None:
        self.visits += 1
        if self.visits > MAX_NODES:
            raise UnsupportedObjectError(
                f"structure has more than {MAX_NODES:,} values once shared containers are expanded"
            )
        if depth > 64:
            raise UnsupportedObjectError("structure nested deeper than 64 levels")
        if x is None:
            self.w(b"N")
        elif x is True:
            self.w(b"\x88")
        elif x is False:
            self.w(b"\x89")
        elif isinstance(x, (np.ndarray, np.generic)):
            self.array(np.asarray(x) if isinstance(x, np.generic) else x)
        elif isinstance(x, int):
            self.int(int(x))
        elif isinstance(x, float):
            self.w(b"G" + struct.pack(">d", x))
        elif isinstance(x, str):
            self.str(x)
        elif isinstance(x, (bytes, bytearray)):
            # Protocol 2 spells bytes as _codecs.encode(text, 'latin1'), allowed by torch.
            self.glob("_codecs", "encode")
            self.str(bytes(x).decode("latin1"))
            self.str("latin1")
            self.w(b"\x86R")
        elif isinstance(x, tuple):
            self.w(b"(")
            for v in x:
                self.save(v, depth + 1)
            self.w(b"t")
        elif isinstance(x, list):
            self.w(b"]")
            if x:
                self.w(b"(")
                for v in x:
                    self.save(v, depth + 1)
                self.w(b"e")
        elif isinstance(x, dict):
            if isinstance(x, OrderedDict):
                self.glob("collections", "OrderedDict")
                self.w(b")R")
            else:
                self.w(b"}")
            if x:
                self.w(b"(")
                for k, v in x.items():
                    self.save(k, depth + 1)
                    self.save(v, depth + 1)
                self.w(b"u")
        else:
            raise UnsupportedObjectError(
                f"cannot write a {type(x).__name__} into a torch checkpoint"
            )

    def int(self, n: int) -> None:
        if 0 <= n < 256:
            self.w(b"K" + bytes([n]))
        elif 0 <= n < 65536:
            self.w(b"M" + struct.pack("<H", n))
        elif -(2**31) <= n < 2**31:
            self.w(b"J" + struct.pack("<i", n))
        else:
            raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.w(b"\x8a" + bytes([len(raw)]) + raw)

    def str(self, s: str) -> None:
        raw = s.encode("utf-8", "surrogatepass")
        self.w(b"X" + struct.pack("<I", len(raw)) + raw)

    def array(self, a: np.ndarray[Any, Any]) -> None:
        if id(a) in self.memo:
            self.w(b"j" + struct.pack("<I", self.memo[id(a)]))  # LONG_BINGET: same tensor
            return
        dt = dtypes.by_numpy(a.dtype)
        if dt is None and a.dtype.byteorder == ">":
            dt = dtypes.by_numpy(a.dtype.newbyteorder("<"))
        if dt is None:
            raise UnsupportedObjectError(f"array of dtype {a.dtype} has no torch equivalent")
        c = np.asarray(a, dtype=dt.numpy, order="C")  # 0-d stays 0-d
        key = str(len(self.storages))
        self.storages.append(c.reshape(-1).view(np.uint8))
        shape = tuple(int(n) for n in c.shape)
        strides, step = [], 1
        for n in reversed(shape):
            strides.append(step)
            step *= max(n, 1)
        cls = _STORAGE_CLASS.get(dt.name)
        self.glob("torch._utils", "_rebuild_tensor_v2" if cls else "_rebuild_tensor_v3")
        self.w(b"(")
        # The storage: a persistent id ('storage', <class>, key, location, numel).
        self.w(b"(")
        self.str("storage")
        if cls:
            self.glob("torch", cls)
        else:
            # The spelling torch itself writes, and the one weights_only accepts.
            self.glob("torch.storage", "UntypedStorage")
        self.str(key)
        self.str("cpu")
        self.int(c.size if cls else c.nbytes)
        self.w(b"tQ")
        self.int(0)
        self.save(shape, 1)
        self.save(tuple(reversed(strides)), 1)
        self.w(b"\x89")  # requires_grad
        self.glob("collections", "OrderedDict")
        self.w(b")R")
        if not cls:
            self.glob("torch", dt.name)
        self.w(b"tR")
        index = len(self.memo)
        self.memo[id(a)] = index
        self.keep.append(a)
        self.w(b"r" + struct.pack("<I", index))  # LONG_BINPUT


def write_torch(obj: Any, path: Path) -> None:
    """Write ``obj`` (plain containers and NumPy arrays) as a ``torch.save`` zip, atomically."""
    pickler = _Pickler()
    data_pkl = pickler.dump(obj)
    prefix = re.sub(r"[^A-Za-z0-9_]", "_", path.name.split(".")[0]) or "archive"
    records: list[tuple[str, Any]] = [
        ("data.pkl", data_pkl),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", b"little"),
        *((f"data/{i}", s) for i, s in enumerate(pickler.storages)),
        ("version", b"3\n"),
    ]
    with atomic_file(path) as fd, os.fdopen(os.dup(fd), "w+b") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, payload in records:
                _write_aligned(zf, f"{prefix}/{name}", payload)
        f.flush()


def _write_aligned(zf: zipfile.ZipFile, name: str, payload: Any) -> None:
    """Add a stored member whose payload starts on a 64-byte boundary (torch's layout)."""
    data = memoryview(payload).cast("B")
    big = data.nbytes * 1.05 > zipfile.ZIP64_LIMIT
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    assert zf.fp is not None
    offset = zf.fp.tell()
    header = 30 + len(name.encode("utf-8")) + 4 + (20 if big else 0)
    pad = (-(offset + header)) % _ALIGN
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    with zf.open(info, "w", force_zip64=big) as out:
        step = 1 << 26
        for i in range(0, data.nbytes, step):
            out.write(data[i : i + step])
