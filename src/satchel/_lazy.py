"""The reader behind ``satchel.open`` and ``satchel.load``: one pipeline for both (SPEC 5).

Opening validates the header and manifest and maps the data section; tensor bytes are read,
checksummed and wrapped only when asked for. Closing drops the reader's own references: arrays
already handed out keep the mapping alive and stay valid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np

from . import dtypes
from ._format.header import Header
from ._format.manifest import Leaf, Manifest, Stored
from ._format.validate import xxh3_hex
from ._io.reader import Opened, open_file
from ._progress import ProgressArg, reporter
from ._tree import leaf_paths, unflatten, unique_names
from .adapters import c_strides
from .adapters import numpy as np_adapter
from .errors import (
    FrameworkNotAvailableError,
    IntegrityError,
    MissingKeyError,
    SatchelError,
    UsageError,
)

__all__ = ["ArrayFile", "FrameworkName", "LazyFile", "TensorInfo"]

FrameworkName = Literal["auto", "numpy", "torch"]


@dataclass(frozen=True)
class TensorInfo:
    """What a stored array is, known from the header alone (no data read)."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    framework: str


_F = TypeVar("_F", bound="ArrayFile")


class ArrayFile:
    """What ``satchel.open`` returns for any format: names of arrays, read on demand.

    Subclasses fill ``_index`` (name -> where to find the array) and implement ``info``,
    ``__getitem__``, ``load`` and ``close``.
    """

    _index: dict[str, Any]

    def keys(self) -> list[str]:
        """Dotted paths of every array leaf, in structure order (``tensor`` for a lone tensor)."""
        return list(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _F) -> _F:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LazyFile(ArrayFile):
    """A validated satchel or safetensors file; tensors are read on first access.

    Use as a context manager::

        with satchel.open("mlp.params") as ck:
            ck.keys(); ck.info("hidden.weight"); w = ck["hidden.weight"]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mmap: bool = True,
        verify: bool = True,
        framework: FrameworkName = "auto",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self._opened: Opened | None = open_file(path, mmap=mmap)
        self._where = str(self._opened.path)
        self._manifest = self._opened.manifest or _implicit_manifest(self._opened.header)
        self._verify = verify and self._opened.manifest is not None
        self._framework = framework
        self._device = device
        self._cast = _cast_dtype(dtype)
        self._verified: set[str] = set()
        self._raw: dict[str, np.ndarray[Any, np.dtype[np.uint8]]] = {}
        self._torch_ok: bool | None = None
        # Stored tensors that exactly one leaf uses, as a whole: no storage to share.
        users: dict[str, int] = {}
        for leaf in self._manifest.leaves:
            users[leaf.data] = users.get(leaf.data, 0) + (1 if leaf.strides is None else 2)
        self._sole = {name for name, n in users.items() if n == 1}
        self._bases: dict[tuple[str, str], Any] = {}
        self._cache: dict[int, Any] = {}
        paths = list(leaf_paths(self._manifest.root, where=self._where))
        names = unique_names(p for p, _ in paths)
        self._index = {name: i for name, (_, i) in zip(names, paths, strict=True)}

    # -- public surface ------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._where

    @property
    def metadata(self) -> dict[str, str]:
        """The user metadata given to ``save`` (for plain safetensors: its ``__metadata__``)."""
        return dict(self._manifest.metadata)

    @property
    def structure(self) -> Any:
        """The saved structure with a :class:`TensorInfo` where each array is (no data read)."""
        infos = [
            TensorInfo(
                leaf.dtype.name,
                leaf.shape,
                int(np.prod(leaf.shape, dtype=object)) * leaf.dtype.itemsize,
                leaf.framework,
            )
            for leaf in self._manifest.leaves
        ]
        return unflatten(self._manifest.root, infos.__getitem__, where=self._where)

    @property
    def module_class(self) -> str | None:
        """For a saved ``nn.Module``: its class's import path (never imported by satchel)."""
        return self._manifest.module

    @property
    def checksummed(self) -> bool:
        """Whether this file carries per-tensor checksums (satchel files do; plain ones don't)."""
        return self._opened is not None and self._opened.manifest is not None

    def info(self, name: str) -> TensorInfo:
        """dtype, shape and byte size of ``name`` without reading its data."""
        leaf = self._leaf(name)
        nbytes = int(np.prod(leaf.shape, dtype=object)) * leaf.dtype.itemsize
        return TensorInfo(leaf.dtype.name, leaf.shape, nbytes, leaf.framework)

    def __getitem__(self, name: str) -> Any:
        """The array at ``name``; reads (and verifies) only the bytes of its stored tensor."""
        self._leaf(name)
        return self._build(self._index[name])

    def load(self, *, progress: ProgressArg = None) -> Any:
        """The whole saved structure, every stored tensor verified first (when verifying)."""
        total = sum(s.nbytes for s in self._manifest.stored.values())
        report = reporter(progress, total, f"loading {Path(self._where).name}")
        done = 0
        if self._verify:
            for name, stored in self._manifest.stored.items():
                self._check(name)
                done += stored.nbytes
                if report is not None:
                    report(done)
        if report is not None:
            report(total)
        return unflatten(self._manifest.root, self._build, where=self._where)

    def close(self) -> None:
        """Forget the file; arrays already returned stay valid (they hold the mapping)."""
        self._opened = None
        self._bases.clear()
        self._cache.clear()
        self._raw.clear()

    def __repr__(self) -> str:
        state = "closed" if self._opened is None else f"{len(self._index)} arrays"
        return f"<satchel.LazyFile {self._where!r} {state}>"

    # -- internals -----------------------------------------------------------------------------
    def _leaf(self, name: str) -> Leaf:
        if name not in self._index:
            near = ", ".join(list(self._index)[:5])
            raise MissingKeyError(f"{self._where}: no array named {name!r} (keys start: {near})")
        return self._manifest.leaves[int(self._index[name])]

    def _data(self) -> Opened:
        if self._opened is None:
            raise SatchelError(f"{self._where}: file is closed; open it again to read more")
        return self._opened

    def _stored_bytes(self, name: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
        raw = self._raw.get(name)
        if raw is None:
            opened = self._data()
            entry = opened.header.entry(name)
            assert entry is not None  # manifest_of checked the names match
            raw = self._raw[name] = opened.data[entry.start : entry.end]
        return raw

    def _check(self, name: str) -> None:
        if name in self._verified:
            return
        expected = self._manifest.stored[name].xxh3
        actual = xxh3_hex(self._stored_bytes(name))
        if actual != expected:
            raise IntegrityError(
                f"{self._where}: tensor {name!r} does not match its checksum (xxh3 {actual}, "
                f"recorded {expected}); the file is corrupt. Restore it from a good copy, or "
                "pass verify=False to read it anyway"
            )
        self._verified.add(name)

    def _framework_of(self, leaf: Leaf) -> str:
        fw = leaf.framework if self._framework == "auto" else self._framework
        if fw == "torch" and self._torch_ok is None:
            self._torch_ok = _torch_available()
        if fw == "torch" and not self._torch_ok:
            raise FrameworkNotAvailableError(
                f"{self._where}: array saved from torch but torch is not installed; "
                "pass framework='numpy' to get NumPy arrays"
            )
        return fw

    def _build(self, i: int) -> Any:
        if i in self._cache:
            return self._cache[i]
        leaf = self._manifest.leaves[i]
        if self._verify:
            self._check(leaf.data)
        fw = self._framework_of(leaf)
        raw = self._base(leaf.data, "numpy")
        strides = leaf.strides if leaf.strides is not None else c_strides(leaf.shape)
        if leaf.kind == "bytes":
            out: Any = bytes(raw)
        elif fw == "torch":
            from .adapters import torch as torch_adapter

            if leaf.data in self._sole and leaf.dtype.name not in _TORCH_VIEW_ONLY:
                # The common case, a whole stored tensor: one NumPy view, one from_numpy.
                t = torch_adapter.from_numpy(
                    np_adapter.materialize(raw, leaf.dtype, leaf.shape, 0, strides)
                )
            else:
                t = torch_adapter.materialize(
                    self._base(leaf.data, "torch"), leaf.dtype, leaf.shape, leaf.offset, strides
                )
            out = torch_adapter.finish(
                t,
                kind=leaf.kind,
                requires_grad=leaf.requires_grad,
                dtype=self._cast,
                device=self._device,
            )
        else:
            arr = np_adapter.materialize(raw, leaf.dtype, leaf.shape, leaf.offset, strides)
            if self._cast is not None and leaf.dtype.floating:
                arr = arr.astype(self._cast.numpy)
            out = arr[()] if leaf.kind == "scalar" else arr
        self._cache[i] = out
        return out

    def _base(self, name: str, fw: str) -> Any:
        key = (name, fw)
        if key not in self._bases:
            raw = self._stored_bytes(name)
            if fw == "torch":
                from .adapters import torch as torch_adapter

                self._bases[key] = torch_adapter.from_numpy(raw)
            else:
                # A fresh array over the bytes (not a slice of the whole-file array), so each
                # stored tensor is its own allocation when the result is saved again.
                self._bases[key] = np.frombuffer(raw.data, dtype=np.uint8) if raw.nbytes else raw
        return self._bases[key]


# dtypes torch.from_numpy cannot take (NumPy knows them only through ml_dtypes).
_TORCH_VIEW_ONLY = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2"})


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _cast_dtype(dtype: Any) -> dtypes.DType | None:
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


def _implicit_manifest(header: Header) -> Manifest:
    """A plain safetensors file read as a flat dict of NumPy arrays, in data order."""
    leaves = tuple(Leaf("numpy", "tensor", e.dtype, e.shape, e.name) for e in header.entries)
    stored = {e.name: Stored(e.dtype, e.shape, "0" * 16) for e in header.entries}
    root = {"$dict": [[e.name, {"$t": i}] for i, e in enumerate(header.entries)]}
    return Manifest(root, leaves, stored, dict(header.metadata))
