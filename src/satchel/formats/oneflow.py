"""OneFlow checkpoints without OneFlow: all three generations (docs/formats.md#oneflow).

(a) legacy snapshot folder: ``<var>/meta`` (protobuf text) + ``<var>/out`` (raw bytes),
    ``snapshot_done``; (b) ``oneflow.save`` 0.5-0.9 folder: ``pickled_data`` + ``tensor_N/``;
(c) the 1.0 single file: a pickle of ``{"protocol_version": 1, "__oneflow__": None, "data":
    obj}`` with tensors carrying pickled NumPy arrays. Pickles go through satchel's
interpreter; tensor folders are resolved as plain names inside the checkpoint folder only.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import dtypes
from .._read.refs import ArrayRef, Deferred, Storage, make_ref, ref_of_ndarray
from ..errors import FormatError, UnsafeContentError
from ._codecs.pickle import Buildable, Global, unpickle
from ._codecs.pickle_ndarray import NDARRAY_GLOBALS
from ._codecs.source import map_file
from ._reader import Probe

__all__ = ["DATA_TYPES", "parse_meta", "read", "sniff"]

# oneflow/core/common/data_type.proto: enum value -> (text name, satchel dtype)
DATA_TYPES: dict[int, tuple[str, str]] = {
    1: ("kChar", "int8"), 2: ("kFloat", "float32"), 3: ("kDouble", "float64"),
    4: ("kInt8", "int8"), 5: ("kInt32", "int32"), 6: ("kInt64", "int64"), 7: ("kUInt8", "uint8"),
    9: ("kFloat16", "float16"), 11: ("kBFloat16", "bfloat16"), 12: ("kBool", "bool"),
    13: ("kUInt16", "uint16"), 14: ("kUInt32", "uint32"), 15: ("kUInt64", "uint64"),
    17: ("kInt16", "int16"), 20: ("kComplex64", "complex64"), 21: ("kComplex128", "complex128"),
}  # fmt: skip
_BY_TEXT = {text: name for text, name in DATA_TYPES.values()}
_MAX_META = 64 << 10
_MAX_PICKLE = 1 << 30
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def parse_meta(text: bytes, *, where: str) -> tuple[tuple[int, ...], dtypes.DType]:
    """Shape and dtype from a ``VariableMetaInfo`` in protobuf text format.

    Only ``shape { dim: N ... }`` and ``data_type: kX`` are read; unknown fields are skipped
    (a later revision added ``stride``), as protobuf text readers do.
    """
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: meta is not ASCII protobuf text") from e
    dims: list[int] = []
    dtype: str | None = None
    block: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("{"):
            block.append(line[:-1].strip())
        elif line == "}":
            if not block:
                raise FormatError(f"{where}: unbalanced '}}' in meta")
            block.pop()
        elif ":" in line:
            key, value = (p.strip() for p in line.split(":", 1))
            if block == ["shape"] and key == "dim":
                if not value.isdigit() or len(value) > 19:
                    raise FormatError(f"{where}: meta dim {value!r} is not a size")
                dims.append(int(value))
            elif not block and key == "data_type":
                dtype = value
        if len(dims) > 64 or len(block) > 8:
            raise FormatError(f"{where}: meta has too many dims or nested blocks")
    if block:
        raise FormatError(f"{where}: meta ends inside a '{{' block")
    if dtype is None:
        raise FormatError(f"{where}: meta has no data_type")
    name = _BY_TEXT.get(dtype)
    if name is None:
        raise FormatError(f"{where}: meta data_type {dtype!r} is not a dense dtype satchel reads")
    return tuple(dims), dtypes.get(name)


def _variable(
    folder: Path, *, where: str, kind: Literal["tensor", "parameter"] = "tensor"
) -> ArrayRef:
    """One ``<folder>/{meta,out}`` pair as an array over the mapped ``out`` file."""
    meta = folder / "meta"
    out = folder / "out"
    if not meta.is_file() or meta.is_symlink():
        raise FormatError(
            f"{where}: has no meta file (very old snapshots keep dtype and shape in the model "
            "definition only); satchel cannot know how to read its bytes"
        )
    if out.is_symlink() or not out.is_file():
        raise FormatError(f"{where}: 'out' is missing or not a regular file")
    with meta.open("rb") as f:
        text = f.read(_MAX_META + 1)
    if len(text) > _MAX_META:
        raise FormatError(f"{where}: meta is larger than {_MAX_META} bytes")
    shape, dt = parse_meta(text, where=f"{where}/meta")
    data = map_file(out)
    need = math.prod(shape) * dt.itemsize
    if data.nbytes != need:
        raise FormatError(
            f"{where}/out: holds {data.nbytes} bytes, meta says {dt.name}{list(shape)} = {need}"
        )
    return make_ref(
        Storage(data, str(out)),
        dt,
        shape,
        where=where,
        kind=kind,
        requires_grad=kind == "parameter",
    )


# -- pickle stand-ins ---------------------------------------------------------------------------
class _DTypeTag(Buildable):
    def __init__(self) -> None:
        self.dtype: dtypes.DType | None = None

    def build(self, state: Any, *, where: str) -> None:
        if isinstance(state, bool) or not isinstance(state, int) or state not in DATA_TYPES:
            raise FormatError(f"{where}: oneflow dtype {state!r} is not a dense dtype")
        self.dtype = dtypes.get(DATA_TYPES[state][1])


class _Tensor(Deferred, Buildable):
    """``oneflow.Tensor``/``oneflow.nn.Parameter``: NEWOBJ, then BUILD gives where the data is."""

    def __init__(self, folder: Path | None, kind: Literal["tensor", "parameter"], where: str):
        self.folder, self.kind, self.where = folder, kind, where
        self.value: ArrayRef | np.ndarray[Any, Any] | None = None

    def build(self, state: Any, *, where: str) -> None:
        if not isinstance(state, dict):
            raise FormatError(f"{where}: oneflow tensor state is not a dict")
        if set(state) == {"path"}:
            self.value = self._from_folder(state["path"])
        elif {"data", "dtype"} <= set(state) <= {"data", "dtype", "device"}:
            data = state["data"]
            if isinstance(data, Deferred):
                data = data.resolve()
            if not isinstance(data, np.ndarray):
                raise FormatError(f"{where}: oneflow tensor data is not an array")
            self.value = data
        else:
            raise FormatError(f"{where}: oneflow tensor state has fields {sorted(state)}")

    def _from_folder(self, rel: Any) -> ArrayRef:
        if self.folder is None:
            raise FormatError(f"{self.where}: tensor refers to a folder in a single-file save")
        if not isinstance(rel, str) or not _NAME.match(rel) or rel in (".", ".."):
            raise UnsafeContentError(
                f"{self.where}: tensor path {str(rel)[:80]!r} is not a plain folder name "
                "inside the checkpoint"
            )
        sub = self.folder / rel
        if sub.is_symlink() or not sub.is_dir():
            raise FormatError(f"{self.where}: tensor folder {rel!r} is missing")
        return _variable(sub, where=f"{self.folder}/{rel}", kind=self.kind)

    def resolve(self) -> ArrayRef | np.ndarray[Any, Any]:
        if self.value is None:
            raise FormatError(f"{self.where}: a tensor never received its data")
        if isinstance(self.value, np.ndarray):
            # Generation (c) carries the data as a pickled array; keep Parameter-ness.
            self.value = ref_of_ndarray(
                self.value, kind=self.kind, requires_grad=self.kind == "parameter"
            )
        return self.value


def _allowlist(folder: Path | None, where: str) -> dict[tuple[str, str], Global]:
    def od(*args: Any, where: str) -> OrderedDict[Any, Any]:
        if args:
            raise FormatError(f"{where}: OrderedDict with arguments")
        return OrderedDict()

    return {
        ("collections", "OrderedDict"): Global("collections.OrderedDict", call=od),
        ("oneflow", "Tensor"): Global(
            "oneflow.Tensor", call=lambda *a, where: _Tensor(folder, "tensor", where)
        ),
        ("oneflow.nn", "Parameter"): Global(
            "oneflow.nn.Parameter", call=lambda *a, where: _Tensor(folder, "parameter", where)
        ),
        ("oneflow._oneflow_internal", "dtype"): Global(
            "oneflow._oneflow_internal.dtype", call=lambda *a, where: _DTypeTag()
        ),
        **NDARRAY_GLOBALS,
    }


_LEAVES = (Deferred,)  # tensors and pickled arrays, resolved by the read pipeline


def _payload(value: Any, *, where: str, single_file: bool) -> Any:
    if not isinstance(value, dict) or value.get("protocol_version") != 1 or "data" not in value:
        raise FormatError(f"{where}: not a oneflow.save payload (protocol_version 1 + data)")
    if single_file and "__oneflow__" not in value:
        raise FormatError(f"{where}: single-file payload lacks the '__oneflow__' marker")
    return value["data"]


# -- registry hooks -----------------------------------------------------------------------------
def sniff(probe: Probe) -> bool:
    """A protocol 2+ pickle naming the ``__oneflow__`` key near its start (generation c), or a
    folder with ``pickled_data`` (generation b) or ``snapshot_done`` (generation a)."""
    if probe.is_dir:
        p = probe.path
        return (p / "pickled_data").is_file() or (p / "snapshot_done").is_file()
    return probe.head[:1] == b"\x80" and b"__oneflow__" in probe.head[:256]


def read(path: Path, *, verify: bool = True) -> Any:
    """The object ``oneflow.load`` returns, tensors as ArrayRefs or NumPy arrays."""
    where = str(path)
    if path.is_dir():
        pickled = path / "pickled_data"
        if pickled.is_file() and not pickled.is_symlink():
            if pickled.stat().st_size > _MAX_PICKLE:
                raise FormatError(f"{pickled}: pickled_data larger than {_MAX_PICKLE} bytes")
            data = map_file(pickled)
            allowed = _allowlist(path, where)
            value = unpickle(data.data, where=str(pickled), allowed=allowed, leaves=_LEAVES).value
            return _payload(value, where=where, single_file=False)
        return _read_snapshot(path)
    data = map_file(path)
    value = unpickle(data.data, where=where, allowed=_allowlist(None, where), leaves=_LEAVES).value
    return _payload(value, where=where, single_file=True)


def _read_snapshot(folder: Path) -> dict[str, ArrayRef]:
    """Generation (a): every sub-folder is one variable, in name order (listdir has none)."""
    if not (folder / "snapshot_done").is_file():
        raise FormatError(f"{folder}: no snapshot_done marker: the snapshot did not finish")
    out: dict[str, ArrayRef] = {}
    for sub in sorted(folder.iterdir(), key=lambda q: q.name):
        if sub.is_dir() and not sub.is_symlink():
            out[sub.name] = _variable(sub, where=str(sub))
    return out
