"""TensorFlow tensor bundles ("V2" checkpoints) without TensorFlow: docs/formats.md#tensorflow.

A checkpoint is named by its *prefix* ``P``: ``P.index`` (a table of ``BundleEntryProto``s keyed
by tensor name, §4.1-4.2) and the shards ``P.data-0000k-of-0000N`` (raw bytes, §4.3). Any of
these reaches it: the folder holding a ``checkpoint`` state file (its ``model_checkpoint_path``
is resolved by *basename* inside that folder, never followed elsewhere), the state file itself,
the ``.index`` file, or the prefix. Shard names are derived from the prefix, never read.

:func:`read` returns what ``tf.train.load_checkpoint(P)`` offers through ``get_tensor``: a flat
dict ``{tensor name: value}`` in TF's (sorted) order. Numeric tensors are
:class:`~satchel._read.refs.ArrayRef` views of the mapped shard (NumPy arrays when merged
from slices, byte-swapped or of a dtype satchel does not store). ``DT_STRING`` tensors become
``bytes`` (0-d) or nested lists of ``bytes``, which satchel can save (``S`` arrays it cannot).
Partitioned variables come back merged under their own name, their slice entries hidden, as
TF's reader does. Object-based (TF2) keys are kept verbatim, ``_CHECKPOINTABLE_OBJECT_GRAPH``
included; :func:`object_paths` maps each key to readable paths through the object graph.

Example::

    >>> ck = satchel.load("tf2_ckpt")  # the folder, "tf2_ckpt/ckpt-1" or its .index
    >>> ck["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"].shape
    (20, 256)
    >>> object_paths("tf2_ckpt")["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
    ['optimizer/_trainable_variables/0', 'model/_functional/_operations/1/_kernel']
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .. import dtypes
from .._read.refs import Storage, make_ref
from ..errors import FormatError, IntegrityError
from ._codecs.crc32c import crc32c, unmask
from ._codecs.protobuf import (
    BundleEntry,
    BundleHeader,
    parse_entry,
    parse_header,
    parse_object_graph,
    read_varint,
    readable_paths,
)
from ._codecs.source import map_file
from ._codecs.sstable import FOOTER_SIZE, MAGIC, read_table, slice_key
from ._reader import Probe

__all__ = [
    "OBJECT_GRAPH_KEY",
    "object_paths",
    "read",
    "resolve_prefix",
    "sniff",
    "split_key",
]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_STATE_FILE = "checkpoint"
_STATE_CAP = 1 << 20  # a CheckpointState is a few lines; more is not one
_MAX_SHARDS = 99_999  # naming.cc formats the shard count with %05d
_DT_STRING = 7
_BUNDLE_VERSION = 1  # kTensorBundleVersion; readers call CheckVersions(version, 1, 0)
# DataType enum (docs/formats.md#tf-protos) -> satchel dtype; quantized types read as integers.
_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
           8: "complex64", 9: "int64", 10: "bool", 11: "int8", 12: "uint8", 13: "int32",
           14: "bfloat16", 15: "int16", 16: "uint16", 17: "uint16", 18: "complex128",
           19: "float16", 22: "uint32", 23: "uint64", 24: "float8_e5m2",
           25: "float8_e4m3fn"}  # fmt: skip
# Types only ml_dtypes knows: returned as NumPy arrays (one byte per element, as TF stores them).
_ML_DTYPES = {26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz", 28: "float8_e5m2fnuz",
              29: "int4", 30: "uint4", 31: "int2", 32: "uint2", 33: "float4_e2m1fn"}  # fmt: skip
_UNSUPPORTED = {20: "DT_RESOURCE", 21: "DT_VARIANT"}

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


# -- finding the checkpoint ---------------------------------------------------------------------
def resolve_prefix(path: str | os.PathLike[str]) -> Path:
    """The prefix ``P`` (``P.index`` exists) that ``path`` names.

    Raises:
        FormatError: a folder without a usable ``checkpoint`` state file or single ``.index``,
            or a state file naming a checkpoint that is not in its folder.
    """
    p = Path(path)
    if p.is_dir():
        state = p / _STATE_FILE
        if state.is_file():
            return _from_state(state)
        found = [e for e in _index_files(p) if _looks_like_index(e)]
        if len(found) != 1:
            raise FormatError(
                f"{p}: no '{_STATE_FILE}' state file and {len(found)} TensorFlow .index files; "
                "pass the .index file (or its prefix) of the checkpoint to read"
            )
        return Path(str(found[0])[: -len(".index")])
    if p.name.endswith(".index") and p.is_file():
        return Path(str(p)[: -len(".index")])
    if Path(f"{p}.index").is_file():
        return p
    if p.is_file():
        with p.open("rb") as f:
            if _is_state_text(f.read(4096)):
                return _from_state(p)
    raise FormatError(f"{p}: neither a TensorFlow .index file, its prefix nor a checkpoint folder")


def _from_state(state: Path) -> Path:
    """The newest checkpoint a ``checkpoint`` state file names, by basename in its folder."""
    with state.open("rb") as f:
        text = f.read(_STATE_CAP + 1)
    if len(text) > _STATE_CAP:
        raise FormatError(f"{state}: larger than {_STATE_CAP} bytes; not a checkpoint state file")
    m = re.search(rb'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\\n]|\\.)*)"\s*$', text, re.M)
    if m is None:
        raise FormatError(f"{state}: has no model_checkpoint_path line")
    named = _unescape(m.group(1), where=str(state))
    # TF1 Savers write the writer's absolute path; a copy elsewhere (or a hostile file) must
    # not make us read outside this folder: keep only the last path component.
    base = re.split(r"[/\\]", named)[-1]
    if base in ("", ".", "..") or "\x00" in base:
        raise FormatError(f"{state}: model_checkpoint_path {named!r} names no checkpoint")
    prefix = state.parent / base
    if not Path(f"{prefix}.index").is_file():
        raise FormatError(
            f"{state}: names checkpoint {named!r}, but {base}.index is not in {state.parent}"
        )
    return prefix


_ESCAPE = re.compile(rb"\\(?:([ntr\\\"'])|[xX]([0-9a-fA-F]{1,2})|([0-7]{1,3}))")


def _unescape(raw: bytes, *, where: str) -> str:
    """A text-format string literal's contents (C escapes), decoded as UTF-8."""

    def one(m: re.Match[bytes]) -> bytes:
        if m.group(1):
            return {b"n": b"\n", b"t": b"\t", b"r": b"\r"}.get(m.group(1), m.group(1))
        return bytes([int(m.group(2), 16) if m.group(2) else int(m.group(3), 8) & 0xFF])

    try:
        return _ESCAPE.sub(one, raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: model_checkpoint_path is not UTF-8") from e


def _index_files(folder: Path) -> Iterator[Path]:
    with os.scandir(folder) as it:
        for e in it:
            if e.name.endswith(".index") and e.is_file():
                yield Path(e.path)


def _looks_like_index(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(4)
            size = os.fstat(f.fileno()).st_size
            if size < FOOTER_SIZE:
                return False
            f.seek(size - 8)
            tail = f.read(8)
    except OSError:
        return False
    return _index_bytes(head, tail, size)


def _index_bytes(head: bytes, tail: bytes, size: int) -> bool:
    # The first entry of every bundle index has the empty key (shared 0, non-shared 0).
    return size >= FOOTER_SIZE and tail[-8:] == MAGIC.to_bytes(8, "little") and head[:2] == b"\0\0"


def _is_state_text(head: bytes) -> bool:
    return head.lstrip().startswith(b"model_checkpoint_path")


# -- the bundle ---------------------------------------------------------------------------------
@dataclass
class _Bundle:
    prefix: Path
    header: BundleHeader
    entries: dict[str, BundleEntry]  # visible tensors, in key order
    slices: dict[bytes, BundleEntry]  # slice entries of partitioned variables, by encoded key
    shards: dict[int, U8Array] = field(default_factory=dict)

    def shard(self, shard_id: int, name: str) -> U8Array:
        n = self.header.num_shards
        if not 0 <= shard_id < n:
            raise FormatError(f"{self.prefix}: tensor {name!r} is in shard {shard_id} of {n}")
        if shard_id not in self.shards:
            path = Path(f"{self.prefix}.data-{shard_id:05d}-of-{n:05d}")
            self.shards[shard_id] = map_file(path)
        return self.shards[shard_id]


def _open(path: str | os.PathLike[str]) -> _Bundle:
    prefix = resolve_prefix(path)
    where = f"{prefix}.index"
    table = read_table(map_file(Path(where)), where=where)
    if not table or table[0][0] != b"":
        raise FormatError(f"{where}: the first entry is not the bundle header; not a TF bundle")
    header = parse_header(table[0][1], where=f"{where}: header")
    if not 1 <= header.num_shards <= _MAX_SHARDS:
        raise FormatError(f"{where}: header declares {header.num_shards} data shards")
    if header.endianness not in (0, 1):
        raise FormatError(f"{where}: header endianness {header.endianness} is neither 0 nor 1")
    if header.min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in header.bad_consumers:
        raise FormatError(
            f"{where}: written for readers of bundle version >= {header.min_consumer}; satchel "
            f"reads version {_BUNDLE_VERSION} (re-save it with an older TensorFlow)"
        )
    raw = {
        key: parse_entry(value, where=f"{where}: entry {key[:60]!r}") for key, value in table[1:]
    }
    hidden = {
        slice_key(key, ext)
        for key, e in raw.items()
        for ext in e.slices
        if not key.startswith(b"\0")
    }
    entries: dict[str, BundleEntry] = {}
    for key, entry in raw.items():
        if key in hidden:
            continue
        try:
            entries[key.decode("utf-8")] = entry
        except UnicodeDecodeError as e:
            raise FormatError(f"{where}: tensor name {key[:60]!r} is not UTF-8") from e
    return _Bundle(prefix, header, entries, {k: raw[k] for k in hidden if k in raw})


def _value(b: _Bundle, name: str, entry: BundleEntry, *, verify: bool) -> Any:
    where = f"{b.prefix}: tensor {name!r}"
    shape = _shape(entry, where)
    if entry.slices:
        return _merge(b, name, entry, shape, verify=verify)
    data = _bytes_of(b, name, entry, verify=verify)
    if entry.dtype == _DT_STRING:
        return _strings(data, shape, entry, where=where, verify=verify)
    dt = _dtype(entry.dtype, where)
    if isinstance(dt, np.dtype):
        return _checked_size(data, shape, dt.itemsize, where).view(dt).reshape(shape)
    _checked_size(data, shape, dt.itemsize, where)
    if b.header.endianness == 1 and dt.itemsize > 1:
        # Big-endian writer: the CRC covered the stored bytes, so swap only after checking it.
        swapped = data.view(dt.numpy.newbyteorder(">")).astype(dt.numpy).view(np.uint8)
        return swapped.view(dt.numpy).reshape(shape)
    return make_ref(Storage(data, name), dt, shape, where=where)


def _shape(entry: BundleEntry, where: str) -> tuple[int, ...]:
    if entry.shape is None or any(not 0 <= d < 1 << 62 for d in entry.shape):
        raise FormatError(f"{where}: shape {entry.shape!r} is not a known, valid shape")
    return entry.shape


def _dtype(code: int, where: str) -> dtypes.DType | np.dtype[Any]:
    if code in _DTYPES:
        return dtypes.get(_DTYPES[code])
    if code in _ML_DTYPES and hasattr(ml_dtypes, _ML_DTYPES[code]):
        found: np.dtype[Any] = np.dtype(getattr(ml_dtypes, _ML_DTYPES[code]))
        return found
    kind = _UNSUPPORTED.get(code, f"DataType {code}")
    raise FormatError(f"{where}: has dtype {kind}, which satchel does not read")


def _bytes_of(b: _Bundle, name: str, entry: BundleEntry, *, verify: bool) -> U8Array:
    """The tensor's stored bytes, inside its shard, CRC-checked when ``verify``."""
    shard = b.shard(entry.shard_id, name)
    start, size = entry.offset, entry.size
    if not 0 <= start <= start + size <= shard.size:
        raise FormatError(
            f"{b.prefix}: tensor {name!r} at bytes {start}..{start + size} lies outside its "
            f"shard of {shard.size} bytes; the data file is truncated or the index corrupt"
        )
    data = shard[start : start + size]
    if verify and entry.dtype != _DT_STRING and crc32c(data) != unmask(entry.crc32c):
        raise IntegrityError(
            f"{b.prefix}: tensor {name!r} fails its CRC-32C check; its bytes are damaged"
        )
    return data


def _checked_size(data: U8Array, shape: tuple[int, ...], itemsize: int, where: str) -> U8Array:
    want = math.prod(shape) * itemsize
    if data.size != want:
        raise FormatError(f"{where}: holds {data.size} bytes, its shape {shape} needs {want}")
    return data


def _strings(
    data: U8Array, shape: tuple[int, ...], entry: BundleEntry, *, where: str, verify: bool
) -> Any:
    """A DT_STRING tensor (docs/formats.md#tf-data): varint lengths, their masked CRC, the bytes."""
    n = math.prod(shape)
    buf = data.data
    if n > len(buf) or math.prod(shape[:-1]) > max(n, 1 << 16):
        # (the second: a shape like [2**40, 0] would build 2**40 empty lists)
        raise FormatError(f"{where}: shape {shape} does not fit in {len(buf)} bytes")
    lengths, pos = [], 0
    for _ in range(n):
        length, pos = read_varint(buf, pos, where=where)
        lengths.append(length)
    if pos + 4 > len(buf) or sum(lengths) != len(buf) - pos - 4:
        raise FormatError(f"{where}: string lengths do not add up to the {len(buf)} bytes stored")
    body = pos + 4
    if verify:
        # The CRCs cover each length as u32 (u64 when it does not fit), not as a varint.
        packed = b"".join(n.to_bytes(4 if n <= 0xFFFFFFFF else 8, "little") for n in lengths)
        if crc32c(packed) != unmask(int.from_bytes(buf[pos:body], "little")):
            raise IntegrityError(f"{where}: string lengths fail their CRC-32C check")
        if crc32c(buf[body:], crc32c(buf[pos:body], crc32c(packed))) != unmask(entry.crc32c):
            raise IntegrityError(f"{where}: fails its CRC-32C check; its bytes are damaged")
    flat = []
    for length in lengths:
        flat.append(bytes(buf[body : body + length]))
        body += length
    return _nest(flat, shape)


def _nest(flat: list[bytes], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


# -- partitioned variables ----------------------------------------------------------------------
def _merge(
    b: _Bundle, name: str, entry: BundleEntry, shape: tuple[int, ...], *, verify: bool
) -> Any:
    """A partitioned variable's slices copied into one array (docs/formats.md#tf-protos)."""
    where = f"{b.prefix}: partitioned tensor {name!r}"
    dt = _dtype(entry.dtype, where) if entry.dtype != _DT_STRING else None
    if dt is None:
        raise FormatError(f"{where}: partitioned string tensors are not supported")
    npdt = dt if isinstance(dt, np.dtype) else dt.numpy
    # Every slice's bytes are found and size-checked first, so the merged array allocated
    # below is backed by that many bytes in the file (a hostile index cannot size it).
    parts: list[tuple[tuple[slice, ...], np.ndarray[Any, Any]]] = []
    for ext in entry.slices:
        if len(ext) != len(shape):
            raise FormatError(f"{where}: a slice has {len(ext)} extents for rank {len(shape)}")
        dims: list[slice] = []
        for (start, length), dim in zip(ext, shape, strict=True):
            full = length == -1 and start == 0
            if not full and not (start >= 0 and length >= 0 and start + length <= dim):
                raise FormatError(f"{where}: slice extent {start}+{length} leaves dimension {dim}")
            dims.append(slice(0, dim) if full else slice(start, start + length))
        sub = tuple(s.stop - s.start for s in dims)
        part = b.slices.get(slice_key(name.encode(), ext))
        if part is None or part.slices or part.dtype != entry.dtype or part.shape != sub:
            raise FormatError(f"{where}: slice {ext} is missing or does not match the tensor")
        data = _checked_size(_bytes_of(b, name, part, verify=verify), sub, npdt.itemsize, where)
        parts.append((tuple(dims), data.view(npdt).reshape(sub)))
    total = sum(p.size for _, p in parts)
    if total != math.prod(shape):
        raise FormatError(
            f"{where}: slices hold {total} elements, the tensor has {math.prod(shape)}"
        )
    covered = np.zeros(shape, dtype=bool)
    out = np.empty(shape, dtype=npdt)
    for box, values in parts:
        if covered[box].any():
            raise FormatError(f"{where}: slices overlap at {box}")
        covered[box] = True
        out[box] = values
    if b.header.endianness == 1:
        out = out.byteswap()
    return out


# -- TF2 object graph ---------------------------------------------------------------------------
def object_paths(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, list[str]]:
    """Each checkpoint key of an object-based (TF2) checkpoint -> readable object paths.

    A path joins the objects' local names (unescaped, as the program named them) from the root,
    e.g. ``model/_functional/_operations/1/_kernel`` for the key
    ``optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE``. Paths come in
    breadth-first order, so the first is the one TF built the key from; at most 16 per key.
    An attribute other than ``VARIABLE_VALUE`` appends ``/.ATTRIBUTES/<name>``; an optimizer
    slot reads ``<variable path>/.OPTIMIZER_SLOT/<optimizer path>/<slot name>``. Name-based
    (TF1) checkpoints have no object graph: the result is empty.

    Raises:
        FormatError: the object graph is malformed. IntegrityError: it fails its CRC.
    """
    b = _open(path)
    entry = b.entries.get(OBJECT_GRAPH_KEY)
    if entry is None:
        return {}
    raw = _value(b, OBJECT_GRAPH_KEY, entry, verify=verify)
    if not isinstance(raw, bytes):
        raise FormatError(f"{b.prefix}: {OBJECT_GRAPH_KEY} is not a scalar string")
    nodes = parse_object_graph(raw, where=f"{b.prefix}: {OBJECT_GRAPH_KEY}")
    return readable_paths(nodes)


def split_key(key: str) -> list[str]:
    """A checkpoint key's components with TF's escaping undone (``..`` -> ``.``, ``.S`` -> ``/``).

    Reserved components (``.ATTRIBUTES``, ``.OPTIMIZER_SLOT``) keep their leading dot.
    """
    return [
        part
        if part.startswith(".") and part[1:2] not in (".", "S")
        else re.sub(r"\.(.)", lambda m: "/" if m.group(1) == "S" else m.group(1), part)
        for part in key.split("/")
    ]


# -- registry hooks -----------------------------------------------------------------------------
def sniff(probe: Probe) -> bool:
    """A bundle ``.index`` (table magic, empty first key), its prefix, or a state file; a folder
    with a ``checkpoint`` state file or exactly one bundle ``.index``."""
    if probe.is_dir:
        return _sniff_folder(probe.path)
    if probe.size == -1:
        return _looks_like_index(Path(f"{probe.path}.index"))
    return _index_bytes(probe.head, probe.tail, probe.size) or _is_state_text(probe.head)


def _sniff_folder(folder: Path) -> bool:
    state = folder / _STATE_FILE
    if state.is_file():
        try:
            with state.open("rb") as f:
                return _is_state_text(f.read(4096))
        except OSError:
            return False
    return sum(1 for p in _index_files(folder) if _looks_like_index(p)) == 1


def read(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """Every tensor of the checkpoint at ``path`` (see the module docstring for the structure).

    Raises:
        FormatError: a damaged index, a tensor outside its shard, an unsupported dtype.
        IntegrityError: a tensor's bytes fail their CRC-32C (names the tensor).
        SatchelFileNotFoundError: a data shard is missing.
    """
    b = _open(path)
    return {name: _value(b, name, e, verify=verify) for name, e in b.entries.items()}
