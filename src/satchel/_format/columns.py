"""The compact manifest (format version 2, SPEC 3.8-3.11): stored tensors and leaves as columns.

Version 1 spells one JSON object per stored tensor and per leaf; a file of 50,000 tensors then
carries 100,000 small objects that are built, hooked for duplicate keys and validated one by
one. Version 2 carries the same facts as a few long arrays::

    "stored": {"names": [...], "dtypes": [...], "shapes": [[...], ...], "xxh3": "<16 hex> * n"}
    "leaves": {"data": [i, ...], "framework": [...], "kind": [...],
               "requires_grad": [leaf, ...], "views": [[leaf, dtype, shape, offset, strides]]}

Stored columns are in data order (a single file's data section lays them out back to back,
SPEC 2.6, so their offsets are the running sum of their sizes); a leaf's ``data`` is an index
into them. A leaf is its whole stored tensor unless it is listed in ``views``. Every column is
checked with whole-list operations before any record is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from itertools import chain, compress
from operator import attrgetter
from typing import Any, get_args

from .. import dtypes
from ..adapters import Framework, Kind
from ..errors import FormatError
from .header import MAX_DIMS, MAX_ENTRIES, check_addressable
from .records import (
    Columns,
    Leaf,
    Records,
    Stored,
    check_view,
    dtype_field,
    int_field,
    int_list,
    shape_field,
)

__all__ = ["COMPACT_FROM", "encode_columns", "parse_columns", "plain_records"]

COMPACT_FROM = 1000  # SPEC 3.8: writers use version 2 from this many stored tensors on
_TWO63 = 2**63
_HEX = re.compile(r"[0-9a-f]*")
_STORED_KEYS = frozenset({"names", "dtypes", "shapes", "xxh3"})
_LEAF_KEYS = frozenset({"data", "framework", "kind", "requires_grad", "views"})
_FRAMEWORKS = frozenset(get_args(Framework))
_KINDS = frozenset(get_args(Kind))
_BY_NAME = {d.name: d for d in dtypes.DTYPES}
_DTYPE_NAMES = frozenset(_BY_NAME)
_WHOLE_KINDS = frozenset({"tensor", "parameter"})


def encode_columns(
    leaves: tuple[Leaf, ...], stored: dict[str, Stored]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``leaves`` and ``stored`` members of a version 2 manifest (JSON values)."""
    names = list(stored)
    index = {name: i for i, name in enumerate(names)}
    records = stored.values()
    stored_doc = {
        "names": names,
        "dtypes": list(map(_DTYPE_NAME, records)),
        "shapes": list(map(list, map(_SHAPE, records))),
        "xxh3": "".join(map(_XXH3, records)),
    }
    strides = list(map(_STRIDES, leaves))
    viewing = [s is not None for s in strides]
    views = [
        [i, x.dtype.name, list(x.shape), x.offset, list(x.strides)]
        for i, x in compress(enumerate(leaves), viewing)
        if x.strides is not None
    ]
    leaves_doc = {
        "data": list(map(index.__getitem__, map(_DATA, leaves))),
        "framework": list(map(_FRAMEWORK, leaves)),
        "kind": list(map(_KIND, leaves)),
        "requires_grad": list(compress(range(len(leaves)), map(_GRAD, leaves))),
        "views": views,
    }
    return leaves_doc, stored_doc


_DTYPE_NAME, _SHAPE, _XXH3 = attrgetter("dtype.name"), attrgetter("shape"), attrgetter("xxh3")
_STRIDES, _DATA, _GRAD = attrgetter("strides"), attrgetter("data"), attrgetter("requires_grad")
_FRAMEWORK, _KIND = attrgetter("framework"), attrgetter("kind")


def parse_columns(
    leaves_doc: object, stored_doc: object, *, where: str
) -> tuple[Callable[[], Records], Columns | None]:
    """Validate the columns (SPEC 3.9-3.11); how to build the records, and the columns
    themselves when every leaf is its whole stored tensor without requires_grad (then the
    records are built only if someone asks for them).

    Raises:
        FormatError: naming the column (``stored.shapes``, ``leaves.views[3]``...) at fault.
    """
    field = f"{where}: manifest (version 2)"
    names, dts, shapes, digests = _stored_columns(stored_doc, field)
    cols = _columns(leaves_doc, _LEAF_KEYS, f"{field} field 'leaves'")
    data, fws, kinds = _leaf_columns(cols, len(names), field)
    empty = [cols["requires_grad"], cols["views"]] == [[], []]  # lists, and empty
    if empty and set(kinds) <= _WHOLE_KINDS:
        # The usual file: every leaf a whole tensor or parameter without grad.
        columns = Columns(names, dts, shapes, digests, data, fws, kinds)
        return partial(plain_records, columns), columns
    records = _records(names, dts, shapes, digests)
    leaves = _leaves(cols, data, fws, kinds, names, records, field)
    stored = dict(zip(names, records, strict=True))
    return lambda: (leaves, stored), None


def _records(
    names: list[str], dts: list[str], shapes: list[tuple[int, ...]], digests: str
) -> list[Stored]:
    types = map(_BY_NAME.__getitem__, dts)
    sums = map(
        digests.__getitem__,
        map(slice, range(0, 16 * len(names), 16), range(16, 16 * len(names) + 16, 16)),
    )
    return list(map(Stored, types, shapes, sums))


def plain_records(c: Columns) -> Records:
    """The records that plain columns (every leaf its whole stored tensor) stand for."""
    records = _records(c.names, c.dtypes, c.shapes, c.digests)
    leaves = tuple(
        Leaf(fw, kind, records[j].dtype, records[j].shape, c.names[j], 0, None, False)
        for j, fw, kind in zip(c.data, c.framework, c.kind, strict=True)
    )
    return leaves, dict(zip(c.names, records, strict=True))


def _columns(doc: object, keys: frozenset[str], field: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.keys() != keys:
        raise FormatError(f"{field} must be an object of the columns {sorted(keys)}")
    return doc


def _list(value: object, field: str, n: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        want = "a list" if n is None else f"a list of {n} items (one per entry)"
        raise FormatError(f"{field} must be {want}")
    return value


def _stored_columns(
    doc: object, field: str
) -> tuple[list[str], list[str], list[tuple[int, ...]], str]:
    cols = _columns(doc, _STORED_KEYS, f"{field} field 'stored'")
    names = _list(cols["names"], f"{field} stored.names")
    n = len(names)
    if n > MAX_ENTRIES:
        raise FormatError(f"{field} stored.names lists {n:,} tensors, cap is {MAX_ENTRIES:,}")
    if not set(map(type, names)) <= {str}:
        raise FormatError(f"{field} stored.names must hold strings only")
    if len(set(names)) != n:
        raise FormatError(f"{field} stored.names holds a name twice")
    if "__metadata__" in names:
        raise FormatError(f"{field} stored.names may not use '__metadata__'")
    dtype_names = _list(cols["dtypes"], f"{field} stored.dtypes", n)
    unknown = _values(dtype_names) - _DTYPE_NAMES
    if unknown:
        raise FormatError(f"{field} stored.dtypes holds {sorted(unknown)[:3]}, not dtypes")
    raw = _list(cols["shapes"], f"{field} stored.shapes", n)
    shapes, zero = _shapes(raw, f"{field} stored.shapes")
    if zero:  # only zero-size shapes can describe more than they hold (SPEC 2.5)
        for i, (name, shape) in enumerate(zip(dtype_names, shapes, strict=True)):
            if 0 in shape:
                check_addressable(shape, _BY_NAME[name].itemsize, f"{field} stored.shapes[{i}]")
    digests = cols["xxh3"]
    if not (isinstance(digests, str) and len(digests) == 16 * n and _HEX.fullmatch(digests)):
        raise FormatError(
            f"{field} stored.xxh3 must be {n} checksums of 16 lowercase hex digits, back to back"
        )
    return names, dtype_names, shapes, digests


def _values(column: list[Any]) -> set[str]:
    """The distinct values of a column of strings; anything else shows as its type's name."""
    if set(map(type, column)) <= {str}:
        return set(column)
    return {x if type(x) is str else f"<{type(x).__name__}>" for x in column}


def _shapes(raw: list[Any], field: str) -> tuple[list[tuple[int, ...]], bool]:
    """Every shape a list of at most 64 ints in [0, 2^63), checked over the whole column;
    the shapes as tuples, and whether any has a zero dimension."""
    if raw and (set(map(type, raw)) != {list} or max(map(len, raw)) > MAX_DIMS):
        bad = next(i for i, s in enumerate(raw) if not (type(s) is list and len(s) <= MAX_DIMS))
        raise FormatError(f"{field}[{bad}] must be a list of at most {MAX_DIMS} integers")
    dims = list(chain.from_iterable(raw))
    if dims and not (set(map(type, dims)) == {int} and min(dims) >= 0 and max(dims) < _TWO63):
        bad = next(
            i
            for i, s in enumerate(raw)
            if not all(type(d) is int for d in s) or any(not 0 <= d < _TWO63 for d in s)
        )
        raise FormatError(f"{field}[{bad}] holds {raw[bad]!r}; expected integers in [0, 2^63)")
    return list(map(tuple, raw)), bool(dims) and min(dims) == 0


def _leaf_columns(
    cols: dict[str, Any], count: int, field: str
) -> tuple[list[int], list[Framework], list[Kind]]:
    data = _list(cols["data"], f"{field} leaves.data")
    n = len(data)
    if data and (set(map(type, data)) != {int} or not 0 <= min(data) <= max(data) < count):
        raise FormatError(f"{field} leaves.data must hold indices into stored (0..{count - 1})")
    fws = _list(cols["framework"], f"{field} leaves.framework", n)
    if not _values(fws) <= _FRAMEWORKS:
        raise FormatError(f"{field} leaves.framework holds a value not in {sorted(_FRAMEWORKS)}")
    kinds = _list(cols["kind"], f"{field} leaves.kind", n)
    if not _values(kinds) <= _KINDS:
        raise FormatError(f"{field} leaves.kind holds a value not in {sorted(_KINDS)}")
    return data, fws, kinds


def _leaves(  # noqa: PLR0917 - private: the columns checked so far
    cols: dict[str, Any],
    data: list[int],
    fws: list[Framework],
    kinds: list[Kind],
    names: list[str],
    records: list[Stored],
    field: str,
) -> tuple[Leaf, ...]:
    n = len(data)
    grad = _index_set(cols["requires_grad"], n, f"{field} leaves.requires_grad")
    views = _views(cols["views"], n, data, records, field)
    out = []
    for i, (j, fw, kind) in enumerate(zip(data, fws, kinds, strict=True)):
        base = records[j]
        view = views.get(i)
        dt, shape = (base.dtype, base.shape) if view is None else view[:2]
        if (kind == "scalar" and shape != ()) or (
            kind == "bytes" and (dt.name != "uint8" or len(shape) != 1)
        ):
            bad = f"{dt.name}{list(shape)}"
            raise FormatError(f"{field} leaves[{i}]: a {kind} leaf cannot be {bad}")
        rg = i in grad
        if rg and not (dt.floating or dt.name.startswith("complex")):
            raise FormatError(f"{field} leaves[{i}]: requires_grad on a {dt.name} leaf")
        if view is None:
            out.append(Leaf(fw, kind, dt, shape, names[j], 0, None, rg))
        else:
            out.append(Leaf(fw, kind, dt, shape, names[j], view[2], view[3], rg))
    return tuple(out)


def _index_set(value: object, n: int, field: str) -> set[int]:
    items = _list(value, field)
    ok = all(type(i) is int for i in items) and (not items or 0 <= min(items) <= max(items) < n)
    if not ok or len(set(items)) != len(items) or items != sorted(items):
        raise FormatError(f"{field} must list leaf indices (0..{n - 1}), ascending, each once")
    return set(items)


def _views(
    value: object, n: int, data: list[int], records: list[Stored], field: str
) -> dict[int, tuple[dtypes.DType, tuple[int, ...], int, tuple[int, ...]]]:
    """SPEC 3.10: ``[leaf, dtype, shape, offset, strides]``, leaves ascending, each inside its
    stored tensor (the checks of SPEC 3.6)."""
    out: dict[int, tuple[dtypes.DType, tuple[int, ...], int, tuple[int, ...]]] = {}
    last = -1
    for k, rec in enumerate(_list(value, f"{field} leaves.views")):
        at = f"{field} leaves.views[{k}]"
        if not (isinstance(rec, list) and len(rec) == 5):
            raise FormatError(f"{at} must be [leaf, dtype, shape, offset, strides]")
        i = int_field(rec[0], f"{at} leaf")
        if not last < i < n:
            raise FormatError(f"{at} leaf {i} is out of order or not in 0..{n - 1}")
        last = i
        dt = dtype_field(rec[1], at)
        shape = shape_field(rec[2], f"{at}.shape")
        check_addressable(shape, dt.itemsize, f"{at}.shape")
        offset = int_field(rec[3], f"{at}.offset")
        strides = int_list(rec[4], f"{at}.strides", signed=True)
        if len(strides) != len(shape):
            raise FormatError(f"{at}.strides has {len(strides)} entries for {len(shape)} dims")
        # As in version 1: a dimension of size 0 or 1 never uses its stride (SPEC 3.6).
        strides = tuple(0 if d <= 1 else s for d, s in zip(shape, strides, strict=True))
        base = records[data[i]]
        check_view(at, dt, shape=shape, offset=offset, strides=strides, base_nbytes=base.nbytes)
        out[i] = (dt, shape, offset, strides)
    return out
