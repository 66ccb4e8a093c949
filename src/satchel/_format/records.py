"""The manifest's records as values (stored tensors, leaves, the whole manifest) and the
field checks both manifest versions share (SPEC 3.4, 3.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import dtypes
from ..adapters import Framework, Kind
from ..errors import FormatError

__all__ = [
    "Columns",
    "Leaf",
    "Manifest",
    "Stored",
    "check_view",
    "dtype_field",
    "int_field",
    "int_list",
    "shape_field",
]

_TWO63 = 2**63


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


class Columns(NamedTuple):
    """A version 2 manifest's validated columns, kept for readers that work on whole columns
    (``load`` of a state dict builds no record per tensor).

    ``names``, ``dtypes`` (satchel names), ``shapes`` and ``digests`` (16 hex digits per
    tensor, back to back) describe the stored tensors in data order; ``data``, ``framework``
    and ``kind`` are the leaves' columns. Only kept when every leaf is its whole stored tensor,
    without requires_grad (``plain``): then the columns say everything the records would.
    """

    names: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    digests: str
    data: list[int]
    framework: list[Framework]
    kind: list[Kind]


Records = tuple[tuple[Leaf, ...], dict[str, Stored]]


class Manifest:
    """The whole manifest: structure skeleton, leaves, stored tensors, user metadata.

    ``stored`` keeps the order it was written in: data order for a single file. A manifest
    parsed from columns (version 2) builds its per-tensor records on first use: a reader that
    works on the columns (``columns``) never pays for 50,000 of them.
    """

    __slots__ = ("_build", "_leaves", "_stored", "columns", "flat", "metadata", "module", "root")

    def __init__(  # noqa: PLR0917 - the fields, in the order every caller passes them
        self,
        root: Any,
        leaves: tuple[Leaf, ...] | None,
        stored: dict[str, Stored] | None,
        metadata: dict[str, str],
        module: str | None = None,
        flat: tuple[list[str], list[int]] | None = None,
        *,
        build: Callable[[], Records] | None = None,
        columns: Columns | None = None,
    ) -> None:
        if (leaves is None or stored is None) and build is None:
            raise TypeError("Manifest needs its leaves and stored records, or how to build them")
        self.root = root
        self._leaves = leaves
        self._stored = stored
        self._build = build
        self.metadata = metadata
        self.module = module  # import path of a saved nn.Module's class: information only
        # (keys, leaf indices) when ``root`` is a plain dict of leaves, as the parser found it:
        # a reader then builds the structure in one pass. None says nothing either way.
        self.flat = flat
        self.columns = columns

    def _records(self) -> Records:
        if self._leaves is None or self._stored is None:
            assert self._build is not None
            self._leaves, self._stored = self._build()
            self._build = None
        return self._leaves, self._stored

    @property
    def leaves(self) -> tuple[Leaf, ...]:
        return self._records()[0]

    @property
    def stored(self) -> dict[str, Stored]:
        return self._records()[1]

    def _key(self) -> tuple[Any, ...]:
        return (self.root, self.leaves, self.stored, self.metadata, self.module)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self._key() == other._key()

    # Unhashable, like the dataclass it was: its contents are mutable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Manifest(root={self.root!r}, leaves={self.leaves!r}, stored={self.stored!r}, "
            f"metadata={self.metadata!r}, module={self.module!r})"
        )


def check_view(
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
    pairs = list(zip(shape, strides, strict=True))
    lo = offset + sum(min(0, (n - 1) * s) for n, s in pairs) * dt.itemsize
    hi = offset + sum(max(0, (n - 1) * s) for n, s in pairs) * dt.itemsize
    if lo < 0 or hi + dt.itemsize > base_nbytes:
        raise FormatError(
            f"{field} view reaches bytes [{lo}, {hi + dt.itemsize}) outside its stored tensor "
            f"of {base_nbytes} bytes"
        )


def dtype_field(value: object, field: str) -> dtypes.DType:
    dt = dtypes.by_name(value) if isinstance(value, str) else None
    if dt is None:
        raise FormatError(f"{field}.dtype {value!r} is not a dtype satchel knows")
    return dt


def int_field(v: object, field: str, *, signed: bool = False) -> int:
    lo = -(2**63) if signed else 0
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2**63:
        raise FormatError(f"{field} holds {v!r}; expected an integer in [{lo}, 2^63)")
    return v


def int_list(value: object, field: str, *, signed: bool = False) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 64:
        raise FormatError(f"{field} must be a list of at most 64 integers")
    return tuple(int_field(v, field, signed=signed) for v in value)


def shape_field(value: object, field: str) -> tuple[int, ...]:
    """A list of at most 64 non-negative ints below 2^63 (the fast path of ``int_list``)."""
    if type(value) is list and len(value) <= 64:
        shape = tuple(value)
        # type() is int excludes bool; one pass over a handful of dims.
        if all(type(v) is int and 0 <= v < _TWO63 for v in shape):
            return shape
    return int_list(value, field)
