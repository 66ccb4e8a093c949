"""A version 1 manifest of a plain state dict, read as columns (SPEC 3.12).

Most files hold a dict of whole tensors. Their version 1 manifest spells one object per stored
tensor and per leaf, always with the members in the writer's order. Parsed with each object
as a tuple of pairs (hooks that run in C, and duplicate keys stay visible), every field is
checked with whole-column operations, and the per-tensor records are built only if someone
asks. The general parse calls a Python hook per object and builds a record per tensor and per
leaf; on a 51-tensor file this path takes half its time.

Anything else (another structure, views, requires_grad, zero-size shapes, members in another
order, a field out of range) returns ``None``: the general parse then reads it and names what
is wrong. This path accepts only what the general one accepts, with the same meaning
(``tests/test_speed_paths.py`` compares the two).
"""

from __future__ import annotations

import json
import math
import re
from itertools import chain
from operator import itemgetter, mul
from typing import Any

from .. import dtypes
from .header import MAX_CONTAINERS, MAX_DIMS
from .records import Columns

__all__ = ["Plain", "key_refs", "plain_manifest"]

# The parts of a Manifest, in its constructor's order: root, metadata, module, flat, columns.
Plain = tuple[dict[str, Any], dict[str, str], "str | None", tuple[list[str], list[int]], Columns]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Objects come back as tuples of pairs, arrays as lists: both hooks run in C.
_PAIRS = json.JSONDecoder(object_pairs_hook=tuple, parse_constant=_no_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a lone surrogate is not text
_DOC_KEYS = ("version", "root", "leaves", "stored", "metadata")
_STORED_KEYS = ("dtype", "shape", "xxh3")
_LEAF_KEYS = ("framework", "kind", "dtype", "shape", "data")
_FRAMEWORKS = frozenset({"numpy", "torch", "tensorflow"})
_WHOLE_KINDS = frozenset({"tensor", "parameter"})
_ITEMSIZE = {d.name: d.itemsize for d in dtypes.DTYPES}
_HEX = re.compile(r"[0-9a-f]*")
_TWO63 = 2**63
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def plain_manifest(text: str) -> Plain | None:
    """The parts of ``text``'s manifest when it is a version 1 plain state dict as satchel
    writes it, every field valid; else ``None``."""
    # SPEC 1.6's cap comes before any parse; the general parse reports it, and surrogates.
    if not text.startswith("{") or text.count("{") + text.count("[") > MAX_CONTAINERS:
        return None
    if _SURROGATE_ESCAPE.search(text):
        return None
    try:
        doc = _PAIRS.decode(text)
    except (ValueError, RecursionError):
        return None
    if type(doc) is not tuple or tuple(map(_FIRST, doc[:5])) != _DOC_KEYS:
        return None
    version, root, leaves, stored, meta = map(_SECOND, doc[:5])
    valid, module = _module(doc[5:])
    if type(version) is not int or version != 1 or not valid:
        return None
    metadata = _metadata(meta)
    flat = _flat(root)
    found = _stored(stored)
    if metadata is None or flat is None or found is None:
        return None
    names, dts, shapes, digests = found
    leaf_columns = _leaves(leaves, names, dts, shapes)
    keys, index = flat
    if leaf_columns is None or (index and not 0 <= min(index) <= max(index) < len(leaves)):
        return None
    data, fws, kinds = leaf_columns
    # The root as the general parse gives it (readers of non-flat structures use it).
    root_doc = {"$dict": [[key, {"$t": i}] for key, i in zip(keys, index, strict=True)]}
    columns = Columns(names, dts, list(map(tuple, shapes)), digests, data, fws, kinds)
    return root_doc, metadata, module, flat, columns


def _module(rest: tuple[Any, ...]) -> tuple[bool, str | None]:
    """Whether the members after ``metadata`` are valid, and the module name they give."""
    if not rest:
        return True, None
    module = rest[0][1]
    if len(rest) != 1 or rest[0][0] != "module" or type(module) is not str:
        return False, None
    return 0 < len(module) <= 1000, module


def _metadata(meta: object) -> dict[str, str] | None:
    if type(meta) is not tuple:
        return None
    out = dict(meta)
    if len(out) != len(meta) or not _strings(list(out.values())):
        return None
    return out


def _flat(root: object) -> tuple[list[str], list[int]] | None:
    """``(keys, leaf indices)`` of ``{"$dict": [[key, {"$t": i}], ...]}``, keys unique."""
    if type(root) is not tuple or len(root) != 1 or root[0][0] != "$dict":
        return None
    found = key_refs(root[0][1], tuple)
    if found is None:
        return None
    keys, refs = found
    if not keys:
        return [], []
    ref_pairs = list(map(_FIRST, refs))
    if set(map(_FIRST, ref_pairs)) != {"$t"}:
        return None
    index = list(map(_SECOND, ref_pairs))
    if set(map(type, index)) != {int}:
        return None
    return keys, index


def key_refs(pairs: object, ref_type: type) -> tuple[list[Any], list[Any]] | None:
    """The keys and references of a state dict's ``[[key, ref], ...]`` (SPEC 4.2-4.3) when
    every key is a distinct string and every reference a one-member ``ref_type`` (an object
    as the parser gives it); else None."""
    if type(pairs) is not list:
        return None
    if not pairs:
        return [], []
    if set(map(type, pairs)) != {list} or set(map(len, pairs)) != {2}:
        return None
    keys, refs = list(map(_FIRST, pairs)), list(map(_SECOND, pairs))
    if not _strings(keys) or len(set(keys)) != len(keys):
        return None
    if set(map(type, refs)) != {ref_type} or set(map(len, refs)) != {1}:
        return None
    return keys, refs


def _stored(stored: object) -> tuple[list[str], list[str], list[list[int]], str] | None:
    """Names, dtype names, shapes and digests (joined) of ``{name: {dtype, shape, xxh3}}``."""
    if type(stored) is not tuple:
        return None
    names = list(map(_FIRST, stored))
    records = list(map(_SECOND, stored))
    if len(set(names)) != len(names) or "__metadata__" in names:
        return None
    if not records:
        return [], [], [], ""
    if set(map(type, records)) != {tuple} or set(map(len, records)) != {3}:
        return None
    dt_pairs, shape_pairs, digest_pairs = zip(*records, strict=True)
    if _keys(dt_pairs, shape_pairs, digest_pairs) != _STORED_KEYS:
        return None
    dts = list(map(_SECOND, dt_pairs))
    shapes = list(map(_SECOND, shape_pairs))
    digests = list(map(_SECOND, digest_pairs))
    if not _strings(dts) or not set(dts) <= _ITEMSIZE.keys() or not _positive_shapes(shapes):
        return None
    # SPEC 2.5: every tensor addressable (an int64 byte count).
    if max(map(mul, map(math.prod, shapes), map(_ITEMSIZE.__getitem__, dts))) >= _TWO63:
        return None
    if not _strings(digests) or set(map(len, digests)) != {16}:
        return None
    joined = "".join(digests)
    if not _HEX.fullmatch(joined):
        return None
    return names, dts, shapes, joined


def _leaves(
    leaves: object, names: list[str], dts: list[str], shapes: list[list[int]]
) -> tuple[list[int], list[Any], list[Any]] | None:
    """Stored indices, frameworks and kinds of leaves that are each a whole stored tensor."""
    if type(leaves) is not list:
        return None
    if not leaves:
        return [], [], []
    if set(map(type, leaves)) != {tuple} or set(map(len, leaves)) != {5}:
        return None
    columns = list(zip(*leaves, strict=True))
    if _keys(*columns) != _LEAF_KEYS:
        return None
    fws, kinds, leaf_dts, leaf_shapes, data = (list(map(_SECOND, c)) for c in columns)
    if not (_strings(fws) and _strings(kinds) and _strings(data)):
        return None
    if not set(fws) <= _FRAMEWORKS or not set(kinds) <= _WHOLE_KINDS:
        return None
    position = {name: i for i, name in enumerate(names)}
    if not position.keys() >= set(data):
        return None
    index = list(map(position.__getitem__, data))
    # A whole-tensor leaf repeats its stored tensor's dtype and shape (ints: 2.0 == 2 in
    # Python, but is not a dimension).
    if list(map(dts.__getitem__, index)) != leaf_dts:
        return None
    if list(map(shapes.__getitem__, index)) != leaf_shapes or not _int_shapes(leaf_shapes):
        return None
    return index, fws, kinds


def _strings(column: list[Any]) -> bool:
    return set(map(type, column)) <= {str}


def _keys(*columns: tuple[tuple[str, Any], ...]) -> tuple[str, ...] | None:
    """The one key of each column of pairs, or None when a column mixes keys."""
    out = []
    for column in columns:
        found = set(map(_FIRST, column))
        if len(found) != 1:
            return None
        out.append(found.pop())
    return tuple(out)


def _positive_shapes(shapes: list[Any]) -> bool:
    """Every shape a list of at most 64 ints in (0, 2^63) (zero sizes take the general path)."""
    if set(map(type, shapes)) != {list} or max(map(len, shapes)) > MAX_DIMS:
        return False
    dims = list(chain.from_iterable(shapes))
    return not dims or (set(map(type, dims)) == {int} and 0 < min(dims) <= max(dims) < _TWO63)


def _int_shapes(shapes: list[Any]) -> bool:
    dims = list(chain.from_iterable(shapes))
    return not dims or set(map(type, dims)) == {int}
