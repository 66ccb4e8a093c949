"""Nested user structures <-> a JSON skeleton plus a list of array leaves (SPEC 4).

The skeleton is plain JSON: ``None``, booleans, ints, strings and finite floats stand for
themselves; lists are JSON arrays; everything else is a one-key object tagged with ``$``:

* ``{"$t": i}``          the i-th array leaf (tensor, ndarray, NumPy scalar or bytes);
* ``{"$tuple": [...]}``  a tuple;
* ``{"$dict": [[k, v], ...]}`` / ``{"$odict": ...}``  a dict / OrderedDict (order kept,
  keys str or int);
* ``{"$float": "nan" | "inf" | "-inf"}``  a float JSON cannot spell.

An array object met twice is one leaf: that is how tied weights come back as one object.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import FormatError, UnsupportedObjectError

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "Flat",
    "flatten",
    "iter_leaves",
    "leaf_paths",
    "unflatten",
    "unique_names",
    "validate_skeleton",
]

MAX_DEPTH = 64  # SPEC 4.6: deeper structures are refused on save and on load
MAX_NODES = 5_000_000  # SPEC 4.6: values in a structure, counted as written
_MAX_INT_BITS = 13_000  # ~3,900 decimal digits: below CPython's 4,300-digit str() limit
_TAGS = frozenset({"$t", "$tuple", "$dict", "$odict", "$float"})

Json = Any  # a JSON value; mypy cannot express the recursive type usefully


@dataclass(frozen=True)
class Flat:
    """A structure taken apart: the skeleton, the distinct leaves and the first path to each."""

    skeleton: Json
    leaves: tuple[Any, ...]
    names: tuple[str, ...]


def flatten(obj: Any, *, is_leaf: Callable[[Any], bool]) -> Flat:
    """Split ``obj`` into a JSON skeleton and its array leaves (deduplicated by identity).

    Raises:
        UnsupportedObjectError: for a type satchel cannot store, a cycle, bad keys or too deep.
    """
    leaves: list[Any] = []
    names: list[str] = []
    index: dict[int, int] = {}
    active: set[int] = set()
    visits = 0

    def walk(x: Any, path: tuple[str, ...], depth: int) -> Json:
        nonlocal visits
        visits += 1
        if visits > MAX_NODES:
            # A container shared many times over (a "billion laughs" structure from a hostile
            # pickle) would be written out once per reference: refuse, do not expand.
            raise UnsupportedObjectError(
                f"structure has more than {MAX_NODES:,} values once shared containers are "
                "expanded; satchel stores each reference separately"
            )
        if depth > MAX_DEPTH:
            raise UnsupportedObjectError(
                f"structure is nested deeper than {MAX_DEPTH} levels at {_dotted(path)!r}"
            )
        if is_leaf(x):
            key = id(x)
            if key not in index:
                index[key] = len(leaves)
                leaves.append(x)
                names.append(_dotted(path))
            return {"$t": index[key]}
        if x is None or isinstance(x, (bool, str)):
            return str(x) if isinstance(x, str) else x
        if isinstance(x, int):
            if x.bit_length() > _MAX_INT_BITS:
                raise UnsupportedObjectError(
                    f"int at {_dotted(path) or '<root>'!r} has more than 4000 digits; JSON "
                    "readers refuse such numbers. Store it as bytes (x.to_bytes(...)) instead"
                )
            return int(x)
        if isinstance(x, float):
            return float(x) if math.isfinite(x) else {"$float": repr(float(x))}
        if isinstance(x, (list, tuple, dict)):
            if id(x) in active:
                raise UnsupportedObjectError(f"structure contains itself at {_dotted(path)!r}")
            active.add(id(x))
            try:
                if isinstance(x, dict):
                    pairs = []
                    for k, v in x.items():
                        if isinstance(k, bool) or not isinstance(k, (str, int)):
                            raise UnsupportedObjectError(
                                f"dict key {k!r} at {_dotted(path)!r} is a {type(k).__name__}; "
                                "satchel stores str and int keys only"
                            )
                        pairs.append([k, walk(v, (*path, str(k)), depth + 1)])
                    return {"$odict" if isinstance(x, OrderedDict) else "$dict": pairs}
                items = [walk(v, (*path, str(i)), depth + 1) for i, v in enumerate(x)]
                if isinstance(x, tuple):
                    if type(x) is not tuple:
                        raise UnsupportedObjectError(_unsupported(x, path))
                    return {"$tuple": items}
                return items
            finally:
                active.discard(id(x))
        raise UnsupportedObjectError(_unsupported(x, path))

    skeleton = walk(obj, (), 0)
    return Flat(skeleton, tuple(leaves), tuple(names))


def unflatten(skeleton: Json, leaf: Callable[[int], Any], *, where: str) -> Any:
    """Rebuild the structure; ``leaf(i)`` returns the i-th leaf (the caller caches for sharing)."""

    def build(node: Json, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FormatError(f"{where}: structure nested deeper than {MAX_DEPTH} levels")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [build(v, depth + 1) for v in node]
        tag, value = _tagged(node, where)
        if tag == "$t":
            return leaf(value)
        if tag == "$tuple":
            return tuple(build(v, depth + 1) for v in value)
        if tag == "$float":
            return float(value)
        out: dict[Any, Any] = OrderedDict() if tag == "$odict" else {}
        for k, v in value:
            out[k] = build(v, depth + 1)
        return out

    return build(skeleton, 0)


def leaf_paths(skeleton: Json, *, where: str) -> Iterator[tuple[str, int]]:
    """Every (dotted path, leaf index) in structure order; a shared leaf appears once per path."""

    def walk(node: Json, path: tuple[str, ...], depth: int) -> Iterator[tuple[str, int]]:
        if depth > MAX_DEPTH:
            raise FormatError(f"{where}: structure nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, (*path, str(i)), depth + 1)
        elif isinstance(node, dict):
            tag, value = _tagged(node, where)
            if tag == "$t":
                yield _dotted(path), value
            elif tag == "$tuple":
                for i, v in enumerate(value):
                    yield from walk(v, (*path, str(i)), depth + 1)
            elif tag in ("$dict", "$odict"):
                for k, v in value:
                    yield from walk(v, (*path, str(k)), depth + 1)

    yield from walk(skeleton, (), 0)


def validate_skeleton(skeleton: Json, n_leaves: int, *, where: str) -> None:
    """SPEC 4.2-4.6: every node well-formed, every leaf index in range, depth bounded.

    Raises:
        FormatError: naming the first offending node.
    """
    stack: list[tuple[Json, int]] = [(skeleton, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(f"{where}: structure nested deeper than {MAX_DEPTH} levels")
        if node is None or isinstance(node, (bool, int, float, str)):
            continue
        if isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
            continue
        tag, value = _tagged(node, where)
        if tag == "$t":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_leaves:
                raise FormatError(f"{where}: leaf reference {value!r} is not in 0..{n_leaves - 1}")
        elif tag == "$tuple":
            if not isinstance(value, list):
                raise FormatError(f"{where}: '$tuple' must hold a list, got {type(value).__name__}")
            stack.extend((v, depth + 1) for v in value)
        elif tag == "$float":
            if value not in ("nan", "inf", "-inf"):
                raise FormatError(f"{where}: '$float' must be nan, inf or -inf, got {value!r}")
        else:
            if not isinstance(value, list):
                raise FormatError(f"{where}: {tag!r} must hold a list of pairs")
            seen: set[Any] = set()
            for pair in value:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise FormatError(f"{where}: {tag!r} entries must be [key, value] pairs")
                k = pair[0]
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise FormatError(f"{where}: dict key {k!r} is not a str or int")
                if k in seen:
                    raise FormatError(f"{where}: dict key {k!r} appears twice")
                seen.add(k)
                stack.append((pair[1], depth + 1))


def unique_names(paths: Iterable[str], *, reserved: frozenset[str] = frozenset()) -> list[str]:
    """Display names for dotted paths: the root is ``tensor``; a clash gets ``#1``, ``#2``...."""
    given = list(paths)
    distinct = set(given)
    if len(distinct) == len(given) and "" not in distinct and distinct.isdisjoint(reserved):
        return given  # no clash: every path is its own name (what the loop below gives)
    taken: set[str] = set(reserved)
    next_k: dict[str, int] = {}  # per stem, so many clashes stay linear
    out = []
    for p in given:
        stem = p or "tensor"
        name, k = stem, next_k.get(stem, 1)
        while name in taken:
            name, k = f"{stem}#{k}", k + 1
        next_k[stem] = k
        taken.add(name)
        out.append(name)
    return out


def iter_leaves(obj: Any, *, where: str) -> list[tuple[tuple[str, ...], Any]]:
    """Every non-container value with its key path, in order; each container visited once.

    Containers are dict, list and tuple. A container met again (shared, or a pickle's memo
    trick) is not walked twice, so the cost is linear in the structure's real size.
    """
    seen: set[int] = set()
    out: list[tuple[tuple[str, ...], Any]] = []
    stack: list[tuple[Any, tuple[str, ...]]] = [(obj, ())]
    while stack:
        x, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise FormatError(f"{where}: structure nested deeper than {MAX_DEPTH} levels")
        if isinstance(x, (dict, list, tuple)):
            if id(x) in seen:
                continue
            seen.add(id(x))
            items = x.items() if isinstance(x, dict) else enumerate(x)
            stack.extend(reversed([(v, (*path, str(k))) for k, v in items]))
        else:
            out.append((path, x))
    return out


def _tagged(node: Json, where: str) -> tuple[str, Any]:
    if not isinstance(node, dict) or len(node) != 1:
        raise FormatError(f"{where}: structure node {str(node)[:60]!r} is not a tagged object")
    ((tag, value),) = node.items()
    if tag not in _TAGS:
        raise FormatError(f"{where}: unknown structure tag {tag!r}")
    return tag, value


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _unsupported(x: Any, path: tuple[str, ...]) -> str:
    kind = f"{type(x).__module__}.{type(x).__qualname__}"
    return (
        f"cannot save a {kind} at {_dotted(path) or '<root>'!r}: satchel stores tensors, arrays, "
        "dict/list/tuple, None, bool, int, float, str and bytes (never pickle); "
        "convert it to one of those first"
    )
