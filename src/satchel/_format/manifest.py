"""satchel's manifest: the JSON document in ``__metadata__["satchel"]`` (SPEC 3-5).

It says how the flat stored tensors become the user's structure again: the skeleton, one record
per array leaf (framework, kind, true dtype, shape, which stored tensor and where in it), and one
record per stored tensor (true dtype, shape, xxh3-64 checksum). Parsing validates every field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple, cast, get_args

from .. import dtypes
from .._tree import validate_skeleton
from ..adapters import Framework, Kind
from ..errors import FormatError
from .header import check_addressable, json_object

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_CHECKSUM_KEY",
    "MANIFEST_KEY",
    "Leaf",
    "Manifest",
    "Stored",
    "encode_manifest",
    "parse_manifest",
]

FORMAT_VERSION = 1
MANIFEST_KEY = "satchel"
MANIFEST_CHECKSUM_KEY = "satchel.xxh3"
_FRAMEWORKS = frozenset(get_args(Framework))
_STORED_KEYS = frozenset({"dtype", "shape", "xxh3"})
_LEAF_KEYS = frozenset({"framework", "kind", "dtype", "shape", "data"})
_LEAF_ALLOWED = _LEAF_KEYS | {"offset", "strides", "requires_grad"}
_HEX16 = re.compile(r"[0-9a-f]{16}")
_TWO63 = 2**63
_KINDS = frozenset(get_args(Kind))


class Stored(NamedTuple):
    """A stored tensor's true dtype and shape (the header may say U8 bytes) and its checksum."""

    # A NamedTuple, not a frozen dataclass: as immutable, and 3x cheaper to build, which
    # matters at one per tensor in files of 50,000 tensors.

    dtype: dtypes.DType
    shape: tuple[int, ...]
    xxh3: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Leaf(NamedTuple):
    """One array leaf: which stored tensor holds it, at which byte offset, with which strides.

    ``strides`` is ``None`` for a leaf that is its whole stored tensor, else element strides
    of a view into it (SPEC 3.6).
    """

    # A NamedTuple, not a frozen dataclass: as immutable, and 3x cheaper to build, which
    # matters at one per tensor in files of 50,000 tensors.

    framework: Framework
    kind: Kind
    dtype: dtypes.DType
    shape: tuple[int, ...]
    data: str
    offset: int = 0
    strides: tuple[int, ...] | None = None
    requires_grad: bool = False


@dataclass(frozen=True)
class Manifest:
    """The whole manifest: structure skeleton, leaves, stored tensors, user metadata."""

    root: Any
    leaves: tuple[Leaf, ...]
    stored: dict[str, Stored]
    metadata: dict[str, str]
    module: str | None = None  # import path of a saved nn.Module's class: information only


def encode_manifest(m: Manifest) -> str:
    """The manifest as compact JSON text (ASCII, keys in a fixed order)."""
    leaves = []
    for leaf in m.leaves:
        rec: dict[str, Any] = {
            "framework": leaf.framework,
            "kind": leaf.kind,
            "dtype": leaf.dtype.name,
            "shape": list(leaf.shape),
            "data": leaf.data,
        }
        if leaf.strides is not None:
            rec["offset"] = leaf.offset
            rec["strides"] = list(leaf.strides)
        if leaf.requires_grad:
            rec["requires_grad"] = True
        leaves.append(rec)
    stored = {
        name: {"dtype": s.dtype.name, "shape": list(s.shape), "xxh3": s.xxh3}
        for name, s in m.stored.items()
    }
    doc = {
        "version": FORMAT_VERSION,
        "root": m.root,
        "leaves": leaves,
        "stored": stored,
        "metadata": m.metadata,
    }
    if m.module is not None:
        doc["module"] = m.module
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def parse_manifest(text: str, *, where: str) -> Manifest:
    """Parse and validate a manifest (SPEC 3); cross-checks with the header live in validate.py.

    Raises:
        FormatError: naming the field at fault.
    """
    doc = json_object(text.encode("utf-8"), where=where, what="satchel manifest")
    required = {"version", "root", "leaves", "stored", "metadata"}
    if not required <= set(doc) <= required | {"module"}:
        raise FormatError(
            f"{where}: satchel manifest fields are {sorted(doc)}, expected {sorted(required)} "
            "and optionally 'module'"
        )
    module = doc.get("module")
    if "module" in doc and not (isinstance(module, str) and 0 < len(module) <= 1000):
        raise FormatError(f"{where}: manifest field 'module' must be a non-empty string")
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise FormatError(
            f"{where}: satchel format version {doc['version']!r} is not supported by this "
            f"satchel (reads version {FORMAT_VERSION}); upgrade satchel"
        )
    stored_raw, leaves_raw, meta = doc["stored"], doc["leaves"], doc["metadata"]
    if not isinstance(stored_raw, dict):
        raise FormatError(f"{where}: manifest field 'stored' must be an object")
    if not isinstance(leaves_raw, list):
        raise FormatError(f"{where}: manifest field 'leaves' must be a list")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{where}: manifest field 'metadata' must map strings to strings")
    stored = {name: _stored(name, rec, where) for name, rec in stored_raw.items()}
    leaves = tuple(_leaf(i, rec, stored, where) for i, rec in enumerate(leaves_raw))
    validate_skeleton(doc["root"], len(leaves), where=f"{where}: manifest field 'root'")
    return Manifest(doc["root"], leaves, stored, dict(meta), module)


def _stored(name: str, rec: object, where: str) -> Stored:
    # Field names are built only on the error path: this runs once per stored tensor.
    if not isinstance(rec, dict) or rec.keys() != _STORED_KEYS:
        raise FormatError(f"{where}: manifest stored[{name!r}] must have exactly {_STORED_KEYS}")
    dt = _dtype(rec["dtype"], f"{where}: manifest stored[{name!r}]")
    shape = _shape(rec["shape"], f"{where}: manifest stored[{name!r}].shape")
    check_addressable(shape, dt.itemsize, f"{where}: manifest stored[{name!r}].shape")
    digest = rec["xxh3"]
    if not (isinstance(digest, str) and _HEX16.fullmatch(digest)):
        raise FormatError(
            f"{where}: manifest stored[{name!r}].xxh3 must be 16 lowercase hex digits"
        )
    return Stored(dt, shape, digest)


def _leaf(i: int, rec: object, stored: dict[str, Stored], where: str) -> Leaf:
    # Fast path for the common leaf, a whole stored tensor: everything it says is compared with
    # the stored record already validated; tuple membership tolerates unhashable values.
    if type(rec) is dict and rec.keys() == _LEAF_KEYS:
        data, fw, kind = rec["data"], rec["framework"], rec["kind"]
        base = stored.get(data) if type(data) is str else None
        if (
            base is not None
            and fw in ("numpy", "torch")
            and kind in ("tensor", "parameter")
            and rec["dtype"] == base.dtype.name
            and type(rec["shape"]) is list
            and rec["shape"] == list(base.shape)
            and all(type(n) is int for n in rec["shape"])  # 2.0 == 2, but is not a dimension
        ):
            return Leaf(fw, kind, base.dtype, base.shape, data, 0, None, False)
    return _leaf_checked(i, rec, stored, where)


def _leaf_checked(i: int, rec: object, stored: dict[str, Stored], where: str) -> Leaf:
    field = f"{where}: manifest leaves[{i}]"
    if not isinstance(rec, dict) or not _LEAF_KEYS <= rec.keys() <= _LEAF_ALLOWED:
        raise FormatError(f"{field} must have framework, kind, dtype, shape, data")
    if not isinstance(rec["framework"], str) or rec["framework"] not in _FRAMEWORKS:
        raise FormatError(f"{field}.framework {rec['framework']!r} is not one of {_FRAMEWORKS}")
    if not isinstance(rec["kind"], str) or rec["kind"] not in _KINDS:
        raise FormatError(f"{field}.kind {rec['kind']!r} is not one of {sorted(_KINDS)}")
    dt = _dtype(rec["dtype"], field)
    shape = _shape(rec["shape"], f"{field}.shape")
    check_addressable(shape, dt.itemsize, f"{field}.shape")
    fw = cast(Framework, rec["framework"])  # both checked against their Literal sets above
    kind = cast(Kind, rec["kind"])
    if (kind == "scalar" and shape != ()) or (
        kind == "bytes"
        and (dt.name, len(shape))
        != (
            "uint8",
            1,
        )
    ):
        raise FormatError(f"{field}: a {kind} leaf cannot be {dt.name}{list(shape)}")
    data = rec["data"]
    if not isinstance(data, str) or data not in stored:
        raise FormatError(f"{field}.data {data!r} names no stored tensor")
    rg = rec.get("requires_grad", False)
    if not isinstance(rg, bool):
        raise FormatError(f"{field}.requires_grad must be a boolean")
    if rg and not (dt.floating or dt.name.startswith("complex")):
        raise FormatError(f"{field}: requires_grad on a {dt.name} leaf (only float/complex)")
    if ("offset" in rec) != ("strides" in rec):
        raise FormatError(f"{field} must have both offset and strides, or neither")
    if "strides" not in rec:
        base = stored[data]
        if dt != base.dtype or shape != base.shape:
            raise FormatError(
                f"{field} is {dt.name}{list(shape)} but stored tensor {data!r} is "
                f"{base.dtype.name}{list(base.shape)}; a whole-tensor leaf must match it"
            )
        return Leaf(fw, kind, dt, shape, data, 0, None, rg)
    offset = _int(rec["offset"], f"{field}.offset")
    strides = _int_list(rec["strides"], f"{field}.strides", signed=True)
    if len(strides) != len(shape):
        raise FormatError(f"{field}.strides has {len(strides)} entries for {len(shape)} dims")
    # A dimension of size 0 or 1 never uses its stride; array libraries still reject huge
    # ones, so they are read as 0 (SPEC 3.6).
    strides = tuple(0 if n <= 1 else s for n, s in zip(shape, strides, strict=True))
    _check_view(
        field, dt, shape=shape, offset=offset, strides=strides, base_nbytes=stored[data].nbytes
    )
    return Leaf(fw, kind, dt, shape, data, offset, strides, rg)


def _check_view(
    field: str,
    dt: dtypes.DType,
    *,
    shape: tuple[int, ...],
    offset: int,
    strides: tuple[int, ...],
    base_nbytes: int,
) -> None:
    """SPEC 3.6: every element a view can reach lies inside its stored tensor."""
    if offset % dt.itemsize:
        raise FormatError(f"{field}.offset {offset} is not a multiple of the item size")
    if math.prod(shape) == 0:
        if offset > base_nbytes:
            raise FormatError(f"{field}.offset {offset} is past the stored tensor's end")
        return
    lo = (
        offset + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) * dt.itemsize
    )
    hi = (
        offset + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) * dt.itemsize
    )
    if lo < 0 or hi + dt.itemsize > base_nbytes:
        raise FormatError(
            f"{field} view reaches bytes [{lo}, {hi + dt.itemsize}) outside its stored tensor "
            f"of {base_nbytes} bytes"
        )


def _dtype(value: object, field: str) -> dtypes.DType:
    dt = dtypes.by_name(value) if isinstance(value, str) else None
    if dt is None:
        raise FormatError(f"{field}.dtype {value!r} is not a dtype satchel knows")
    return dt


def _int(v: object, field: str, *, signed: bool = False) -> int:
    lo = -(2**63) if signed else 0
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2**63:
        raise FormatError(f"{field} holds {v!r}; expected an integer in [{lo}, 2^63)")
    return v


def _int_list(value: object, field: str, *, signed: bool = False) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 64:
        raise FormatError(f"{field} must be a list of at most 64 integers")
    return tuple(_int(v, field, signed=signed) for v in value)


def _shape(value: object, field: str) -> tuple[int, ...]:
    """A list of at most 64 non-negative ints below 2^63 (the fast path of ``_int_list``)."""
    if type(value) is list and len(value) <= 64:
        shape = tuple(value)
        # type() is int excludes bool; one pass over a handful of dims.
        if all(type(v) is int and 0 <= v < _TWO63 for v in shape):
            return shape
    return _int_list(value, field)
