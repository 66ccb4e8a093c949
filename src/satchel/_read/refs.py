"""The common currency of every reader: arrays as (storage bytes, dtype, layout).

A reader, native or foreign, returns the structure its framework's loader would return (dicts,
lists, tuples, plain values), with each array as an :class:`ArrayRef` into a flat uint8
:class:`Storage` (usually a zero-copy slice of the mapped file) or as a plain NumPy array.
``_read.materialize`` turns refs into NumPy arrays or torch tensors, so arrays over one storage
keep sharing memory, exactly as in the framework that wrote them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from .. import dtypes
from .._format.header import check_addressable
from ..adapters import c_strides
from ..errors import FormatError

__all__ = [
    "ArrayRef",
    "Deferred",
    "Kind",
    "Ranged",
    "Storage",
    "Tree",
    "c_strides",
    "make_ref",
    "ref_of_ndarray",
]

U8Array = np.ndarray[Any, np.dtype[np.uint8]]
Kind = Literal["tensor", "parameter", "scalar", "bytes"]
Check = Callable[[U8Array], None]


class Ranged(Protocol):
    """Bytes fetched when sliced (an object in a remote store: ``_remote.ranged``)."""

    def __getitem__(self, s: slice, /) -> U8Array: ...


class Storage:
    """A flat run of bytes that one or more arrays view (identity matters: it is the sharing).

    The bytes are given (``data``), declared now and filled later (legacy torch streams store
    them after the structure: ``nbytes`` then :meth:`fill`), or sliced on first use from a
    larger buffer (``region=(buffer, start, end)``: the native reader's mapped data section).
    ``check``, when given, runs once on the bytes before anyone sees them (verify on first
    touch: xxh3 for satchel files, the format's own CRC elsewhere); it raises
    ``IntegrityError``, and keeps raising on every later touch.
    """

    __slots__ = ("_check", "_data", "_region", "name", "nbytes", "origin")

    def __init__(
        self,
        data: U8Array | None,
        name: str,
        *,
        nbytes: int | None = None,
        region: tuple[U8Array | Ranged, int, int] | None = None,
        check: Check | None = None,
        origin: str = "",
    ) -> None:
        self._data = data
        self.origin = origin  # the file the bytes live in (a shard of a sharded checkpoint)
        self._region = region
        self._check = check
        self.name = name
        if data is not None:
            self.nbytes = int(data.nbytes)
        elif region is not None:
            self.nbytes = region[2] - region[1]
        else:
            self.nbytes = int(nbytes or 0)

    @property
    def data(self) -> U8Array:
        """The bytes, checked on first touch when a check was given."""
        d = self._data
        if d is None:
            if self._region is None:
                raise FormatError(f"storage {self.name!r} was declared but its bytes never came")
            buf, start, end = self._region
            d = self._data = buf[start:end]
        if self._check is not None:
            self._check(d)
            self._check = None  # only once it passed: a failed check fails every touch
        return d

    @property
    def checked(self) -> bool:
        """Whether nothing is left to check (no check given, or it passed)."""
        return self._check is None

    def release(self) -> None:
        """Drop the bytes and the mapping they come from (``load_state`` streams shard by
        shard); touching them afterwards is an error."""
        self._data = self._region = None
        self._check = None

    def fill(self, data: U8Array) -> None:
        """Provide the bytes of a storage created with a declared size."""
        if data.nbytes != self.nbytes:
            raise FormatError(f"storage {self.name!r}: {data.nbytes} bytes for {self.nbytes}")
        self._data = data


# Mutable slots, not a frozen dataclass: refs are built once per tensor (50,000 in a
# many-tensor file) and a frozen init costs 4x more; nothing assigns to a ref after it is made.
@dataclass(slots=True, eq=False)
class ArrayRef:
    """An array viewing ``storage`` at byte ``offset`` with element ``strides``.

    ``framework`` is the framework the array was saved from, when the file records it (satchel
    files do); ``None`` means the file's own framework, which comes back as NumPy by default.
    """

    storage: Storage
    dtype: dtypes.DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int
    kind: Kind = "tensor"
    requires_grad: bool = False
    framework: str | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def whole(self) -> bool:
        """Whether this ref is its storage, C-contiguous from byte 0 (no view into a base)."""
        return (
            self.offset == 0
            and self.nbytes == self.storage.nbytes
            and self.strides == c_strides(self.shape)
        )


class Deferred:
    """A stand-in built while a pickle is interpreted, that becomes an array afterwards.

    Pickles create an object first and give it its state later (NEWOBJ, then BUILD), while
    containers already hold it; the pipeline asks each one for its array at the end.
    """

    def resolve(self) -> ArrayRef | np.ndarray[Any, Any]:
        raise NotImplementedError


def make_ref(
    storage: Storage,
    dtype: dtypes.DType,
    shape: tuple[int, ...],
    *,
    strides: tuple[int, ...] | None = None,
    offset: int = 0,
    where: str,
    kind: Literal["tensor", "parameter"] = "tensor",
    requires_grad: bool = False,
) -> ArrayRef:
    """A validated ref: every element it can reach lies inside the storage.

    Raises:
        FormatError: a dimension or stride is not a sane integer, or the view leaves the storage.
    """
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**63:
            raise FormatError(f"{where}: dimension {n!r} in shape {shape!r} is not valid")
    check_addressable(shape, dtype.itemsize, f"{where}: shape")
    strides = c_strides(shape) if strides is None else strides
    if len(strides) != len(shape) or any(
        isinstance(s, bool) or not isinstance(s, int) or abs(s) >= 2**63 for s in strides
    ):
        raise FormatError(f"{where}: strides {strides!r} do not fit shape {shape!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise FormatError(f"{where}: storage offset {offset!r} is not valid")
    isz = dtype.itemsize
    if math.prod(shape) > 0:
        lo = offset + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) * isz
        hi = offset + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) * isz
        if lo < 0 or hi + isz > storage.nbytes:
            raise FormatError(
                f"{where}: array {dtype.name}{list(shape)} at offset {offset} reaches byte "
                f"{hi + isz} of a storage holding {storage.nbytes}; the file is corrupt"
            )
    elif offset > storage.nbytes:
        raise FormatError(f"{where}: storage offset {offset} is past the storage end")
    if offset % isz:
        raise FormatError(f"{where}: offset {offset} is not a multiple of the item size {isz}")
    return ArrayRef(storage, dtype, shape, tuple(strides), offset, kind, requires_grad)


def ref_of_ndarray(
    a: np.ndarray[Any, Any],
    *,
    kind: Literal["tensor", "parameter"] = "tensor",
    requires_grad: bool = False,
) -> ArrayRef:
    """An ArrayRef over a NumPy array's bytes (copied only if not C-contiguous/native)."""
    dt = dtypes.by_numpy(a.dtype)
    if dt is None and a.dtype.byteorder == ">":
        dt = dtypes.by_numpy(a.dtype.newbyteorder("<"))
    if dt is None:
        raise FormatError(f"array of dtype {a.dtype} has no torch equivalent")
    c = np.asarray(a, dtype=dt.numpy, order="C")  # keeps 0-d arrays 0-d
    data = c.reshape(-1).view(np.uint8)
    shape = tuple(int(n) for n in c.shape)
    return ArrayRef(Storage(data, "ndarray"), dt, shape, c_strides(shape), 0, kind, requires_grad)


Built = tuple[Any, "tuple[Storage, ...] | None", "frozenset[int] | None"]


class Tree:
    """What every reader produces: the saved structure with :class:`ArrayRef` leaves.

    ``root`` is nested dicts, lists, tuples and plain values; arrays are refs (foreign readers
    may also leave :class:`Deferred` stand-ins or decoded NumPy arrays). ``format`` names the
    reader; ``metadata`` is the file's string metadata; ``module`` the class path of a saved
    ``nn.Module`` (information only); ``checksummed`` says whether the bytes carry checksums
    that reading verifies.

    A reader may give ``build`` instead of the root: it returns ``(root, storages, sole)`` and
    runs on first use of any of them. ``bulk``, when given, loads the whole structure at once
    without building a ref per array (``ArrayFile.load`` of a state dict); it takes the
    framework asked for and returns ``None`` where it does not apply.
    """

    __slots__ = (
        "_build",
        "_root",
        "_sole",
        "_storages",
        "bulk",
        "checksummed",
        "format",
        "metadata",
        "module",
    )

    def __init__(  # noqa: PLR0917 - the fields, in the order every reader passes them
        self,
        root: Any,
        format: str,
        metadata: dict[str, str],
        module: str | None = None,
        checksummed: bool = False,
        storages: tuple[Storage, ...] | None = None,
        sole: frozenset[int] | None = None,
        *,
        build: Callable[[], Built] | None = None,
        bulk: Callable[[str], Any] | None = None,
    ) -> None:
        self._root = root
        self.format = format
        self.metadata = metadata
        self.module = module
        self.checksummed = checksummed
        # What a reader may know in bulk, so opening need not walk the structure: every
        # storage the arrays view, and the ids of those viewed by exactly one ref that is the
        # whole storage.
        self._storages = storages
        self._sole = sole
        self._build = build
        self.bulk = bulk

    @property
    def deferred(self) -> bool:
        """Whether the structure is still to be built (a reader that defers it knows its
        storages: nothing has to be walked at open)."""
        return self._build is not None

    def _built(self) -> None:
        if self._build is not None:
            self._root, self._storages, self._sole = self._build()
            self._build = None

    @property
    def root(self) -> Any:
        self._built()
        return self._root

    @property
    def storages(self) -> tuple[Storage, ...] | None:
        self._built()
        return self._storages

    @property
    def sole(self) -> frozenset[int] | None:
        self._built()
        return self._sole
