"""Zarr arrays (v2 ``.zarray`` and v3 ``zarr.json``) read from a key-value store.

Orbax writes each array under its parameter name through tensorstore: zarr v2 by default
(``use_zarr3: false``), zarr v3 when asked. What satchel reads, and refuses clearly otherwise:

* v2: ``dtype`` a plain little/big-endian number or bool type (or ``bfloat16``/float8 names),
  ``compressor`` null, ``zstd``, ``zlib`` or ``gzip``, no ``filters``, ``order`` C or F, chunk
  keys joined by ``dimension_separator`` (``"0"`` for a 0-d array).
* v3: ``regular`` chunk grid, ``default``/``v2`` chunk key encoding, codecs ``bytes`` (with
  endian) then at most one of ``zstd``/``gzip``; no sharding, no transpose.

A missing chunk holds the fill value, as in zarr. Before anything is allocated the array's size
is bounded by the bytes actually stored (a compressed chunk cannot expand more than its codec
allows) plus a small budget for missing chunks, so a few hostile bytes cannot claim gigabytes.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from ..._format.header import MAX_DIMS, json_object
from ...errors import FormatError
from .inflate import DEFLATE_RATIO, ZSTD_RATIO, inflate, inflate_zstd
from .ocdbt import Store

__all__ = ["read_array"]

_MAX_META = 1 << 20  # a .zarray / zarr.json is a few hundred bytes
_MAX_ARRAY = 1 << 34  # 16 GiB, as for inflated zip members
_MAX_CHUNKS = 1 << 22  # grid cells visited per array
_MAX_FILL = 1 << 30  # bytes of fill value for missing chunks, per array
_RATIO = {None: 1, "zstd": ZSTD_RATIO, "zlib": DEFLATE_RATIO, "gzip": DEFLATE_RATIO}
_CODECS = ("zstd", "zlib", "gzip")
_SLACK = 1 << 17
_V2_DTYPE = re.compile(r"^([<>|])([biufc])(\d{1,2})$")
_ML = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
_V3_DTYPES = {"bool": "|b1", "int8": "|i1", "uint8": "|u1", "int16": "<i2", "uint16": "<u2",
              "int32": "<i4", "uint32": "<u4", "int64": "<i8", "uint64": "<u8",
              "float16": "<f2", "float32": "<f4", "float64": "<f8", "complex64": "<c8",
              "complex128": "<c16"}  # fmt: skip


def _dims(value: Any, field: str, where: str, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise FormatError(f"{where}: {field} must be a list of at most {MAX_DIMS} integers")
    for n in value:
        if isinstance(n, bool) or not isinstance(n, int) or not minimum <= n < 1 << 62:
            raise FormatError(f"{where}: {field} entry {n!r} is not an integer >= {minimum}")
    return tuple(value)


def _dtype(spec: Any, where: str) -> np.dtype[Any]:
    if isinstance(spec, str) and spec in _ML:
        ml: np.dtype[Any] = np.dtype(getattr(ml_dtypes, spec))
        return ml
    m = _V2_DTYPE.match(spec) if isinstance(spec, str) else None
    allowed = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
    if m is None or int(m.group(3)) not in allowed[m.group(2)]:
        raise FormatError(f"{where}: dtype {spec!r} is not a numeric type satchel reads")
    dt: np.dtype[Any] = np.dtype(spec)
    return dt


def _fill(value: Any, dt: np.dtype[Any], where: str) -> Any:
    if value is None:
        return 0
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity") and dt.kind in "fcV":
        return float(value.replace("Infinity", "inf"))
    if isinstance(value, (bool, int, float)):
        return value
    raise FormatError(f"{where}: fill_value {value!r} is not supported")


def _conf(obj: dict[str, Any], where: str) -> dict[str, Any]:
    conf = obj.get("configuration", {})
    if not isinstance(conf, dict):
        raise FormatError(
            f"{where}: configuration {conf!r} of {obj.get('name')!r} is not an object"
        )
    return conf


class _Spec:
    """What one array's metadata says, validated."""

    def __init__(self, meta: dict[str, Any], where: str) -> None:
        self.where = where
        fmt = meta.get("zarr_format")
        if fmt == 2:
            self._v2(meta)
        elif fmt == 3:
            self._v3(meta)
        else:
            raise FormatError(f"{where}: zarr_format {fmt!r} is not 2 or 3")
        if len(self.chunks) != len(self.shape):
            raise FormatError(f"{where}: chunks {self.chunks} do not match shape {self.shape}")
        self.chunk_nbytes = math.prod(self.chunks) * self.dtype.itemsize
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        if self.nbytes > _MAX_ARRAY or self.chunk_nbytes > _MAX_ARRAY:
            raise FormatError(f"{where}: array of {self.nbytes} bytes exceeds {_MAX_ARRAY}")

    def _v2(self, meta: dict[str, Any]) -> None:
        w = self.where
        self.shape = _dims(meta.get("shape"), "shape", w, minimum=0)
        self.chunks = _dims(meta.get("chunks"), "chunks", w, minimum=1)
        self.dtype = _dtype(meta.get("dtype"), w)
        comp = meta.get("compressor")
        if comp is not None and (not isinstance(comp, dict) or comp.get("id") not in _CODECS):
            raise FormatError(f"{w}: compressor {comp!r} is not supported (zstd, zlib, gzip)")
        self.codec = None if comp is None else comp["id"]
        if meta.get("filters") not in (None, []):
            raise FormatError(f"{w}: filters {meta['filters']!r} are not supported")
        order = meta.get("order", "C")
        if order not in ("C", "F"):
            raise FormatError(f"{w}: order {order!r} is not C or F")
        self.order = order
        sep = meta.get("dimension_separator", ".")
        if sep not in (".", "/"):
            raise FormatError(f"{w}: dimension_separator {sep!r} is not '.' or '/'")
        self.sep: str = sep
        self.key_prefix = ""
        self.fill = _fill(meta.get("fill_value"), self.dtype, w)

    def _v3(self, meta: dict[str, Any]) -> None:
        w = self.where
        if meta.get("node_type") != "array":
            raise FormatError(f"{w}: node_type {meta.get('node_type')!r} is not 'array'")
        self.shape = _dims(meta.get("shape"), "shape", w, minimum=0)
        grid = meta.get("chunk_grid")
        if not isinstance(grid, dict) or grid.get("name") != "regular":
            raise FormatError(f"{w}: chunk_grid {grid!r} is not a regular grid")
        conf = grid.get("configuration")
        shape = conf.get("chunk_shape") if isinstance(conf, dict) else None
        self.chunks = _dims(shape, "chunk_shape", w, minimum=1)
        name = meta.get("data_type")
        if name in _ML:
            self.dtype = np.dtype(getattr(ml_dtypes, str(name)))
        elif isinstance(name, str) and name in _V3_DTYPES:
            self.dtype = np.dtype(_V3_DTYPES[name])
        else:
            raise FormatError(f"{w}: data_type {name!r} is not supported")
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        if not isinstance(enc, dict):
            raise FormatError(f"{w}: chunk_key_encoding {enc!r} is not an object")
        name = enc.get("name")
        enc_conf = _conf(enc, w)
        sep = enc_conf.get("separator", "/" if name == "default" else ".")
        if name not in ("default", "v2") or sep not in (".", "/"):
            raise FormatError(f"{w}: chunk_key_encoding {enc!r} is not supported")
        self.sep = str(sep)
        self.key_prefix, self.order = ("c" if name == "default" else ""), "C"
        codecs = meta.get("codecs")
        if not isinstance(codecs, list) or not codecs or not isinstance(codecs[0], dict):
            raise FormatError(f"{w}: codecs {codecs!r} must start with 'bytes'")
        first, rest = codecs[0], codecs[1:]
        endian = _conf(first, w).get("endian", "little")
        if first.get("name") != "bytes" or endian not in ("little", "big"):
            raise FormatError(f"{w}: first codec {first!r} is not 'bytes' (sharding unsupported)")
        if endian == "big":
            self.dtype = self.dtype.newbyteorder(">")
        names = [c.get("name") if isinstance(c, dict) else c for c in rest]
        if len(names) > 1 or (names and names[0] not in _CODECS):
            raise FormatError(f"{w}: codecs {names!r} after 'bytes' are not supported")
        self.codec = names[0] if names else None
        self.fill = _fill(meta.get("fill_value"), self.dtype, w)

    def key(self, index: tuple[int, ...]) -> str:
        parts = [self.key_prefix] if self.key_prefix else []
        parts += [str(i) for i in index] if index else ([] if self.key_prefix else ["0"])
        return self.sep.join(parts)

    def decode(self, raw: bytes, where: str) -> np.ndarray[Any, Any]:
        n = self.chunk_nbytes
        data: bytes | np.ndarray[Any, np.dtype[np.uint8]] = raw
        if self.codec == "zstd":
            data = inflate_zstd(raw, n, where=where)
        elif self.codec in ("zlib", "gzip"):
            wbits = zlib.MAX_WBITS | (16 if self.codec == "gzip" else 0)
            data = inflate(raw, n, where=where, what=f"{self.codec} chunk", wbits=wbits)
        if len(data) != n:
            raise FormatError(f"{where}: chunk decodes to {len(data)} bytes, expected {n}")
        flat = np.frombuffer(data, dtype=self.dtype)
        return flat.reshape(self.chunks, order="F" if self.order == "F" else "C")


def read_array(store: Store, prefix: str, *, where: str) -> np.ndarray[Any, Any]:
    """The array stored under ``prefix`` (``prefix/.zarray`` or ``prefix/zarr.json``).

    Raises:
        FormatError: missing or invalid metadata, an unsupported codec or dtype, a damaged or
            wrongly sized chunk, or more bytes claimed than the stored data can hold.
    """
    for name in (".zarray", "zarr.json"):
        raw = store.read(f"{prefix}/{name}".encode(), cap=_MAX_META)
        if raw is not None:
            break
    else:
        raise FormatError(f"{where}: no '{prefix}/.zarray' or '{prefix}/zarr.json' in the store")
    here = f"{where}: {prefix}/{name}"
    spec = _Spec(json_object(raw, where=here, what="array metadata"), here)
    grid = tuple(-(-s // c) for s, c in zip(spec.shape, spec.chunks, strict=True))
    cells = math.prod(grid)
    if cells > _MAX_CHUNKS:
        raise FormatError(f"{here}: {cells} chunks exceed the {_MAX_CHUNKS} satchel visits")
    found: list[tuple[tuple[int, ...], bytes]] = []
    stored = missing = 0
    for index in itertools.product(*(range(g) for g in grid)):
        key = f"{prefix}/{spec.key(index)}".encode()
        v = store.values.get(key)
        if v is None:
            missing += 1
            continue
        stored += len(v.inline) if v.inline is not None else v.length
        found.append((index, key))
    # Bound the allocation by what the stored bytes can expand to, before allocating.
    if len(found) * spec.chunk_nbytes > stored * _RATIO[spec.codec] + _SLACK * len(found):
        raise FormatError(
            f"{here}: {len(found)} chunks of {spec.chunk_nbytes} bytes cannot come from "
            f"{stored} stored bytes; the store is corrupt or hostile"
        )
    if missing * spec.chunk_nbytes > _MAX_FILL and spec.nbytes > _MAX_FILL:
        raise FormatError(
            f"{here}: {missing} missing chunks would be {missing * spec.chunk_nbytes} bytes of "
            f"fill value, more than the {_MAX_FILL} satchel fills in"
        )
    try:
        out = np.full(spec.shape, spec.fill, dtype=spec.dtype.newbyteorder("="))
    except (ValueError, OverflowError, TypeError) as e:
        raise FormatError(f"{here}: fill_value {spec.fill!r} does not fit {spec.dtype}") from e
    for index, key in found:
        raw_chunk = store.read(key, cap=_MAX_ARRAY)
        assert raw_chunk is not None
        chunk = spec.decode(raw_chunk, f"{where}: chunk {key.decode()!r}")
        sl = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(index, spec.chunks, spec.shape, strict=True)
        )
        out[sl] = chunk[tuple(slice(0, x.stop - x.start) for x in sl)]
    return out
