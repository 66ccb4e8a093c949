"""satchel's manifest: the JSON document in ``__metadata__["satchel"]`` (SPEC 3-5).

It says how the flat stored tensors become the user's structure again: the skeleton, one record
per array leaf (framework, kind, true dtype, shape, which stored tensor and where in it), and one
record per stored tensor (true dtype, shape, xxh3-64 checksum). Parsing validates every field.
"""

from __future__ import annotations

import json
import math
import re
from functools import partial
from itertools import repeat
from typing import Any, cast, get_args

from .. import dtypes
from .._tree import validate_skeleton
from ..adapters import Framework, Kind
from ..errors import FormatError
from .canonical import key_refs, plain_manifest
from .columns import COMPACT_FROM, encode_columns, parse_columns, plain_records
from .header import check_addressable, json_object
from .records import (
    Columns,
    Leaf,
    Manifest,
    Stored,
    check_view,
    dtype_field,
    int_field,
    int_list,
)
from .records import shape_field as _shape

__all__ = [
    "COMPACT_VERSION",
    "FORMAT_VERSION",
    "MANIFEST_CHECKSUM_KEY",
    "MANIFEST_KEY",
    "VERSIONS",
    "Leaf",
    "Manifest",
    "Stored",
    "encode_manifest",
    "flat_dict",
    "parse_manifest",
]

FORMAT_VERSION = 1  # one JSON object per stored tensor and per leaf
COMPACT_VERSION = 2  # the same facts as columns (SPEC 3.8), for files of many tensors
VERSIONS = (FORMAT_VERSION, COMPACT_VERSION)  # what this reader reads
MANIFEST_KEY = "satchel"
MANIFEST_CHECKSUM_KEY = "satchel.xxh3"
_FRAMEWORKS = frozenset(get_args(Framework))
_STORED_KEYS = frozenset({"dtype", "shape", "xxh3"})
_LEAF_KEYS = frozenset({"framework", "kind", "dtype", "shape", "data"})
_LEAF_ALLOWED = _LEAF_KEYS | {"offset", "strides", "requires_grad"}
_HEX16 = re.compile(r"[0-9a-f]{16}")
_KINDS = frozenset(get_args(Kind))
_BY_NAME = {d.name: d for d in dtypes.DTYPES}
_TWO63 = 2**63


def encode_manifest(m: Manifest, *, compact: bool | None = None) -> str:
    """The manifest as compact JSON text (ASCII, keys in a fixed order).

    ``compact`` picks version 2 (columns); by default it is used from ``COMPACT_FROM`` stored
    tensors on (SPEC 3.8), so smaller files stay readable by satchel versions that read 1 only.
    """
    if compact is None:
        compact = len(m.stored) >= COMPACT_FROM
    if compact:
        leaves_doc, stored_doc = encode_columns(m.leaves, m.stored)
        return _dump(COMPACT_VERSION, m, leaves_doc, stored_doc)
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
    return _dump(FORMAT_VERSION, m, leaves, stored)


def _dump(version: int, m: Manifest, leaves: object, stored: object) -> str:
    # The members every version has, in the order of version 1, so that a reader that knows
    # only version 1 reaches its version check and says "upgrade" (SPEC 3.3).
    doc = {
        "version": version,
        "root": m.root,
        "leaves": leaves,
        "stored": stored,
        "metadata": m.metadata,
    }
    if m.module is not None:
        doc["module"] = m.module
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def parse_manifest(text: str, *, where: str, columns_first: bool = True) -> Manifest:
    """Parse and validate a manifest (SPEC 3); cross-checks with the header live in validate.py.

    A version 1 plain state dict as satchel spells it is checked column by column (SPEC 3.12);
    ``columns_first=False`` takes the record-by-record path for it too (tests compare them).

    Raises:
        FormatError: naming the field at fault.
    """
    plain = plain_manifest(text) if columns_first else None
    if plain is not None:
        p_root, p_meta, p_module, p_flat, p_columns = plain
        records = partial(plain_records, p_columns)
        return Manifest(
            p_root, None, None, p_meta, p_module, p_flat, build=records, columns=p_columns
        )
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
    if type(version) is not int or version not in VERSIONS:
        raise FormatError(_version_message(version, where), path=where, field="version")
    stored_raw, leaves_raw, meta = doc["stored"], doc["leaves"], doc["metadata"]
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError(f"{where}: manifest field 'metadata' must map strings to strings")
    root = doc["root"]
    if version == COMPACT_VERSION:
        build, columns = parse_columns(leaves_raw, stored_raw, where=where)
        n_leaves = len(leaves_raw["data"])  # a list: parse_columns checked it
        flat = _flat_or_checked(root, n_leaves, where)
        return Manifest(root, None, None, dict(meta), module, flat, build=build, columns=columns)
    if not isinstance(stored_raw, dict):
        raise FormatError(f"{where}: manifest field 'stored' must be an object")
    if not isinstance(leaves_raw, list):
        raise FormatError(f"{where}: manifest field 'leaves' must be a list")
    stored = {name: _stored(name, rec, where) for name, rec in stored_raw.items()}
    leaves = tuple(_leaf(i, rec, stored, where) for i, rec in enumerate(leaves_raw))
    flat = _flat_or_checked(root, len(leaves), where)
    columns = _columns_of(leaves, stored)
    return Manifest(root, leaves, stored, dict(meta), module, flat, columns=columns)


def _columns_of(leaves: tuple[Leaf, ...], stored: dict[str, Stored]) -> Columns | None:
    """Version 1 records as the columns of version 2 (3.8: they say the same), when every
    leaf is its whole stored tensor without requires_grad; else None."""
    if any(x.strides is not None or x.requires_grad for x in leaves):
        return None
    if not {x.kind for x in leaves} <= {"tensor", "parameter"}:
        return None
    index = {name: i for i, name in enumerate(stored)}
    records = stored.values()
    return Columns(
        list(stored),
        [s.dtype.name for s in records],
        [s.shape for s in records],
        "".join(s.xxh3 for s in records),
        [index[x.data] for x in leaves],
        [x.framework for x in leaves],
        [x.kind for x in leaves],
    )


def _flat_or_checked(root: object, n_leaves: int, where: str) -> tuple[list[str], list[int]] | None:
    """SPEC 4: a state dict's keys and leaf indices, checked as whole lists; any other
    structure is walked node by node (``validate_skeleton``)."""
    flat = flat_dict(root, n_leaves)
    if flat is None:
        validate_skeleton(root, n_leaves, where=f"{where}: manifest field 'root'")
    return flat


def flat_dict(root: object, n_leaves: int) -> tuple[list[str], list[int]] | None:
    """``(keys, leaf indices)`` when ``root`` is a dict of str keys, each naming a leaf
    (``{"$dict": [[k, {"$t": i}], ...]}``: a state dict), valid by SPEC 4.2-4.3; else None.

    The most common structure by far, checked with whole-list operations (``set(map(type,
    ...))`` runs in C) instead of the node-by-node walk that any structure takes.
    """
    if type(root) is not dict or len(root) != 1:
        return None
    found = key_refs(root.get("$dict"), dict)
    if found is None:
        return None
    keys, refs = found
    if not keys:
        return [], []
    index: list[Any] = list(map(dict.get, refs, repeat("$t")))
    if set(map(type, index)) != {int} or not 0 <= min(index) <= max(index) < n_leaves:
        return None
    return keys, index


def _version_message(version: object, where: str) -> str:
    """SPEC 3.3: what a reader says about a version it does not know."""
    known = " and ".join(map(str, VERSIONS))
    if type(version) is int and version > max(VERSIONS):
        return (
            f"{where}: manifest field 'version' is {version}: the file was written by a newer "
            f"satchel (this one reads format versions {known}); upgrade satchel to read it"
        )
    return (
        f"{where}: manifest field 'version' is {version!r}, not a satchel format version "
        f"(this satchel reads versions {known}); the file is damaged or not satchel's"
    )


def _stored(name: str, rec: object, where: str) -> Stored:
    # Fast path, no message built: this runs once per stored tensor.
    if type(rec) is dict and rec.keys() == _STORED_KEYS:
        wire, shape, digest = rec["dtype"], rec["shape"], rec["xxh3"]
        dt = _BY_NAME.get(wire) if type(wire) is str else None
        if (
            dt is not None
            and type(shape) is list
            and len(shape) <= 64
            and all(type(n) is int and 0 < n < _TWO63 for n in shape)
            and math.prod(shape) * dt.itemsize < _TWO63  # SPEC 2.5: addressable
            and type(digest) is str
            and _HEX16.fullmatch(digest)
        ):
            return Stored(dt, tuple(shape), digest)
    return _stored_checked(name, rec, where)


def _stored_checked(name: str, rec: object, where: str) -> Stored:
    if not isinstance(rec, dict) or rec.keys() != _STORED_KEYS:
        raise FormatError(f"{where}: manifest stored[{name!r}] must have exactly {_STORED_KEYS}")
    dt = dtype_field(rec["dtype"], f"{where}: manifest stored[{name!r}]")
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
            and fw in ("numpy", "torch", "tensorflow")
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
    dt = dtype_field(rec["dtype"], field)
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
    offset = int_field(rec["offset"], f"{field}.offset")
    strides = int_list(rec["strides"], f"{field}.strides", signed=True)
    if len(strides) != len(shape):
        raise FormatError(f"{field}.strides has {len(strides)} entries for {len(shape)} dims")
    # A dimension of size 0 or 1 never uses its stride; array libraries still reject huge
    # ones, so they are read as 0 (SPEC 3.6).
    strides = tuple(0 if n <= 1 else s for n, s in zip(shape, strides, strict=True))
    check_view(
        field, dt, shape=shape, offset=offset, strides=strides, base_nbytes=stored[data].nbytes
    )
    return Leaf(fw, kind, dt, shape, data, offset, strides, rg)
