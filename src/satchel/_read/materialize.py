"""References in, user arrays out: NumPy arrays or torch tensors, cast and placed (SPEC 5).

The one place that turns :class:`~satchel._read.refs.ArrayRef` leaves into arrays, for every
format. Arrays over one storage share one base (a NumPy buffer or a torch uint8 tensor), so
views and tied weights come back sharing memory; each ref becomes one object, however many
paths lead to it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

from .. import dtypes
from .._tree import MAX_DEPTH
from ..adapters import numpy as np_adapter
from ..errors import FormatError, FrameworkNotAvailableError, UsageError
from .refs import ArrayRef, Deferred, Storage, ref_of_ndarray

__all__ = ["FrameworkName", "Materializer", "cast_dtype"]

FrameworkName = Literal["auto", "numpy", "torch", "tensorflow"]

# dtypes torch.from_numpy cannot take (NumPy knows them only through ml_dtypes).
_TORCH_VIEW_ONLY = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2"})


def cast_dtype(dtype: Any) -> dtypes.DType | None:
    """The floating dtype ``load(dtype=...)`` names, as satchel's DType.

    Raises:
        UsageError: not a floating dtype satchel knows.
    """
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    dt = dtypes.by_name(name)
    if dt is None:
        try:
            dt = dtypes.by_numpy(np.dtype(dtype))
        except TypeError:
            dt = None
    if dt is None or not dt.floating:
        raise UsageError(f"dtype={dtype!r}: expected a floating dtype such as 'float16'")
    return dt


class Materializer:
    """Builds user arrays from refs for one opened file, caching so sharing survives.

    ``framework="auto"`` gives each array the framework it was saved from (NumPy when the file
    does not say); ``"numpy"``/``"torch"`` force one. ``refs`` are every ref of the file: a
    storage viewed by exactly one whole ref needs no shared base, which is the fast path.
    """

    def __init__(
        self,
        refs: Iterable[ArrayRef],
        *,
        framework: FrameworkName,
        dtype: Any,
        device: Any,
        where: str,
        sole: frozenset[int] | Callable[[], frozenset[int] | None] | None = None,
    ) -> None:
        self._refs = refs
        self._framework = framework
        self._cast = cast_dtype(dtype)
        self._device = device
        self._plain_torch = self._cast is None and device is None and framework in ("auto", "torch")
        self._where = where
        # Ids of storages one whole ref views (torch only); a reader that knows them says so
        # (when asked: building them may build the file's refs).
        self._sole: frozenset[int] | set[int] | None = None if callable(sole) else sole
        self._sole_of = sole if callable(sole) else None
        self._torch: Any = None
        self._bases: dict[tuple[int, str], Any] = {}
        self._made: dict[int, Any] = {}
        self._keep: list[Any] = []  # storages made here for plain arrays: ids must stay unique

    # -- leaves --------------------------------------------------------------------------------
    def array(self, x: ArrayRef | np.ndarray[Any, Any]) -> Any:
        """The user array for one leaf; the same object for the same ref every time."""
        key = id(x)
        made = self._made.get(key)
        if made is not None:
            return made
        if (
            type(x) is ArrayRef
            and x.kind == "tensor"
            and self._plain_torch
            and (x.framework == "torch" or self._framework == "torch")
            and x.dtype.name not in _TORCH_VIEW_ONLY
            and id(x.storage) in self._sole_storages()
        ):
            # The bulk of a state dict: a whole stored tensor, no cast, no device; what
            # _torch_leaf would do, without its dispatch (50,000 times in a large file).
            data = x.storage.data
            out = self._torch_adapter().from_numpy(np.ndarray(x.shape, x.dtype.numpy, data))
        else:
            out = self._plain(x) if isinstance(x, np.ndarray) else self._from_ref(x)
        self._made[key] = out
        return out

    @property
    def plain(self) -> bool:
        """Whether arrays come back as stored: no cast, no device placement."""
        return self._cast is None and self._device is None

    def seed(self, x: ArrayRef | np.ndarray[Any, Any], made: Any) -> None:
        """Record ``made`` as the array of ``x`` (built without it, by a whole-file load)."""
        self._made[id(x)] = made

    def forget(self, x: ArrayRef | np.ndarray[Any, Any]) -> None:
        """Drop what was made for ``x`` (and the base over its storage)."""
        self._made.pop(id(x), None)
        if isinstance(x, ArrayRef):
            for fw in ("numpy", "torch"):
                self._bases.pop((id(x.storage), fw), None)

    def _from_ref(self, ref: ArrayRef) -> Any:
        fw = self._framework_of(ref)
        storage = ref.storage
        if ref.kind == "bytes":
            return bytes(storage.data)
        if fw == "torch":
            return self._torch_leaf(ref)
        if fw == "tensorflow":
            return self._tf_leaf(ref)
        arr = np_adapter.materialize(
            self._base(storage, "numpy"), ref.dtype, ref.shape, ref.offset, ref.strides
        )
        if self._cast is not None and ref.dtype.floating:
            arr = arr.astype(self._cast.numpy)
        return arr[()] if ref.kind == "scalar" else arr

    def _torch_leaf(self, ref: ArrayRef) -> Any:
        adapter = self._torch_adapter()
        if ref.dtype.name not in _TORCH_VIEW_ONLY and id(ref.storage) in self._sole_storages():
            # The common case, a whole stored tensor: one NumPy view (C order, as the storage
            # holds it), one from_numpy; a plain tensor left as it is needs nothing more.
            t = adapter.from_numpy(np.ndarray(ref.shape, ref.dtype.numpy, ref.storage.data))
            if ref.kind == "tensor" and self._cast is None and self._device is None:
                return t
        else:
            t = adapter.materialize(
                self._base(ref.storage, "torch"), ref.dtype, ref.shape, ref.offset, ref.strides
            )
        return adapter.finish(
            t,
            kind=ref.kind,
            requires_grad=ref.requires_grad,
            dtype=self._cast,
            device=self._device,
        )

    def _tf_leaf(self, ref: ArrayRef) -> Any:
        try:
            from ..adapters import tensorflow as tf_adapter
        except ImportError as e:
            raise FrameworkNotAvailableError(
                f"{self._where}: TensorFlow tensors asked for but tensorflow is not installed; "
                "pass framework='numpy' to get NumPy arrays"
            ) from e
        arr = np_adapter.materialize(
            self._base(ref.storage, "numpy"), ref.dtype, ref.shape, ref.offset, ref.strides
        )
        return tf_adapter.finish(
            arr,
            kind=ref.kind,
            requires_grad=ref.requires_grad,
            dtype=self._cast,
            device=self._device,
        )

    def _plain(self, a: np.ndarray[Any, Any]) -> Any:
        # Foreign readers may hand over a ready NumPy array (decoded, not mapped).
        if self._framework == "tensorflow":
            ref = ref_of_ndarray(a)
            self._keep.append(ref)
            return self._tf_leaf(ref)
        if self._framework != "torch":
            return a
        ref = ref_of_ndarray(a)
        self._keep.append(ref)  # bases are keyed by the storage's id: keep it alive
        return self._torch_leaf(ref)

    def _framework_of(self, ref: ArrayRef) -> str:
        if self._framework == "auto":
            return ref.framework if ref.framework in ("torch", "tensorflow") else "numpy"
        return self._framework

    def _torch_adapter(self) -> Any:
        if self._torch is None:
            try:
                from ..adapters import torch as torch_adapter
            except ImportError as e:
                raise FrameworkNotAvailableError(
                    f"{self._where}: torch tensors asked for but torch is not installed; "
                    "pass framework='numpy' to get NumPy arrays"
                ) from e
            self._torch = torch_adapter
        return self._torch

    def _sole_storages(self) -> frozenset[int] | set[int]:
        if self._sole is None and self._sole_of is not None:
            self._sole = self._sole_of()
            self._sole_of = None
        if self._sole is None:
            users: dict[int, int] = {}
            seen: set[int] = set()
            for ref in self._refs:
                if id(ref) in seen:
                    continue
                seen.add(id(ref))
                key = id(ref.storage)
                users[key] = users.get(key, 0) + (1 if ref.whole else 2)
            self._sole = {k for k, n in users.items() if n == 1}
        return self._sole

    def _base(self, storage: Storage, fw: str) -> Any:
        key = (id(storage), fw)
        base = self._bases.get(key)
        if base is None:
            raw = storage.data
            if fw == "torch":
                base = self._torch_adapter().from_numpy(raw)
            else:
                # A fresh array over the bytes (not a slice of the whole-file array), so each
                # storage is its own allocation when the result is saved again.
                base = np.frombuffer(raw.data, dtype=np.uint8) if raw.nbytes else raw
            self._bases[key] = base
            self._keep.append(storage)
        return base

    # -- structures ----------------------------------------------------------------------------
    def tree(self, obj: Any) -> Any:
        """``obj`` with every ref replaced by its array; containers rebuilt with their types.

        dict, OrderedDict (with its ``_metadata``), list and tuple are rebuilt; anything else is
        returned as is. Each container is visited once, so a structure that refers to itself
        many times (a "billion laughs" pickle) costs time linear in its size.

        Raises:
            FormatError: the structure is nested deeper than ``MAX_DEPTH`` (SPEC 4.6).
        """
        memo: dict[int, Any] = {}
        array = self.array
        where = self._where

        def walk(x: Any, depth: int) -> Any:
            # Memo keys are ids of objects that live in the structure for the whole call (never
            # of temporaries, whose ids Python reuses).
            if isinstance(x, ArrayRef | np.ndarray):
                return array(x)
            if x is None or isinstance(x, (str, int, float, bytes)):
                return x
            key = id(x)
            if key in memo:
                return memo[key]
            if depth > MAX_DEPTH:
                raise FormatError(f"{where}: structure nested deeper than {MAX_DEPTH} levels")
            out: Any
            if isinstance(x, Deferred):
                out = walk(x.resolve(), depth)
            elif isinstance(x, dict):
                out = OrderedDict() if isinstance(x, OrderedDict) else {}
                memo[key] = out
                for k, v in x.items():
                    # A dict of arrays (a state dict) is most of what is loaded: one call less.
                    out[k] = array(v) if type(v) is ArrayRef else walk(v, depth + 1)
                meta = getattr(x, "_metadata", None)
                if meta is not None:
                    out._metadata = walk(meta, depth + 1)
                return out
            elif isinstance(x, list):
                out = []
                memo[key] = out
                out.extend(walk(v, depth + 1) for v in x)
                return out
            elif isinstance(x, tuple):
                out = tuple(walk(v, depth + 1) for v in x)
            else:
                return x
            memo[key] = out
            return out

        return walk(obj, 0)
