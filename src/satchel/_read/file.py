"""What ``satchel.open`` returns for every format: one class over one :class:`Tree`.

Names are the dotted paths of the array leaves in structure order; ``info`` answers from the
refs alone (no data read); ``ck[name]`` and ``load`` go through the one materializer, so views,
tied weights, casts and device placement behave the same whatever format the file is in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .._progress import ProgressArg, reporter
from .._tree import MAX_DEPTH, unique_names
from ..errors import FormatError, MissingKeyError, SatchelError
from .materialize import FrameworkName, Materializer
from .refs import ArrayRef, Deferred, Storage, Tree

__all__ = ["ArrayFile", "ForeignFile", "LazyFile", "TensorInfo"]

Leafish = ArrayRef | np.ndarray[Any, Any]


@dataclass(frozen=True)
class TensorInfo:
    """What a stored array is, known from the header alone (no data read)."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    framework: str


class ArrayFile:
    """A readable file of any format: names of arrays, each read (and verified) on demand.

    Use as a context manager::

        with satchel.open("mlp.params") as ck:
            ck.keys(); ck.info("hidden.weight"); w = ck["hidden.weight"]

    Closing keeps every array already returned valid (they hold the mapping); reading more
    after ``close()`` raises :class:`SatchelError`.
    """

    def __init__(
        self,
        tree: Tree,
        *,
        path: str,
        framework: FrameworkName = "auto",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self._tree = tree
        self._where = path
        self._names: dict[str, Leafish] | None = None  # built on first use: load() needs none
        self._m = Materializer(
            _Refs(self),
            framework=framework,
            dtype=dtype,
            device=device,
            where=path,
            sole=lambda: tree.sole,
        )
        self._framework = framework
        self._bulk: dict[str, Any] | None = None  # what a whole-columns load() returned
        self._closed = False
        if not tree.deferred and tree.storages is None:
            self._index  # noqa: B018 - foreign structures are walked (and refused) at open

    @property
    def _index(self) -> dict[str, Leafish]:
        """Name -> array, in structure order (a walk of the whole structure, done once)."""
        if self._names is None:
            root = self._tree.root
            found = _arrays(root, self._where)
            names = unique_names(p for p, _ in found)
            self._names = {n: a for n, (_, a) in zip(names, found, strict=True)}
            if self._bulk is not None:
                # load() made these arrays without refs: the same objects come back by name.
                for key, made in self._bulk.items():
                    self._m.seed(root[key], made)
                self._bulk = None
        return self._names

    @property
    def _refs(self) -> list[ArrayRef]:
        return [a for a in self._index.values() if isinstance(a, ArrayRef)]

    # -- what the file is ----------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._where

    @property
    def format(self) -> str:
        """The reader that read it: ``satchel``, ``safetensors``, ``torch``, ``numpy``, ..."""
        return self._tree.format

    @property
    def metadata(self) -> dict[str, str]:
        """The user metadata given to ``save`` (plain safetensors: its ``__metadata__``;
        other formats: ``{"format": name}``)."""
        return dict(self._tree.metadata)

    @property
    def module_class(self) -> str | None:
        """For a saved ``nn.Module``: its class's import path (never imported by satchel)."""
        return self._tree.module

    @property
    def checksummed(self) -> bool:
        """Whether the bytes carry checksums that reading verifies (satchel files do)."""
        return self._tree.checksummed

    # -- names ---------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Dotted paths of every array leaf, in structure order (``tensor`` for a lone tensor)."""
        return list(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def info(self, name: str) -> TensorInfo:
        """dtype, shape and byte size of ``name`` without reading its data."""
        return self._info(self._leaf(name))

    @property
    def structure(self) -> Any:
        """The saved structure with a :class:`TensorInfo` where each array is (no data read)."""

        def walk(x: Any, depth: int) -> Any:
            if isinstance(x, Deferred):
                x = x.resolve()
            if isinstance(x, ArrayRef | np.ndarray):
                return self._info(x)
            if depth > MAX_DEPTH:
                raise FormatError(f"{self._where}: structure nested deeper than {MAX_DEPTH} levels")
            if isinstance(x, dict):
                return type(x)((k, walk(v, depth + 1)) for k, v in x.items())
            if isinstance(x, list | tuple):
                return type(x)(walk(v, depth + 1) for v in x)
            return x

        return walk(self._tree.root, 0)

    # -- data ----------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        """The array at ``name``; reads (and verifies) only the bytes of its storage."""
        x = self._leaf(name)
        self._open()
        return self._m.array(x)

    def load(self, *, progress: ProgressArg = None) -> Any:
        """The whole structure; every storage is verified first (when the file has checks)."""
        self._open()
        bulk = self._tree.bulk
        if bulk is not None and progress is None and self._m.plain and self._names is None:
            if self._bulk is None:
                out = bulk(self._framework)
                if out is not None:
                    self._bulk = out
                    return out
            else:
                self._index  # noqa: B018 - the arrays a first load() made, by ref, to return again
        storages = self.storages()
        total = sum(s.nbytes for s in storages)
        report = reporter(progress, total, f"loading {Path(self._where).name}")
        done = 0
        for s in storages:
            if not s.checked:
                s.data  # noqa: B018 - touching the bytes runs their check
            done += s.nbytes
            if report is not None:
                report(done)
        if report is not None:
            report(total)
        return self._m.tree(self._tree.root)

    def storages(self) -> list[Storage]:
        """Every distinct storage the arrays view, in name order (``satchel.verify`` checks
        them one by one)."""
        if self._tree.storages is not None:
            return list(self._tree.storages)
        out: dict[int, Storage] = {}
        for ref in self._refs:
            out.setdefault(id(ref.storage), ref.storage)
        return list(out.values())

    def groups(self, names: Iterable[str]) -> list[list[str]]:
        """``names`` grouped by the file their bytes live in (one group per shard), in the
        order the files first appear; names of plain arrays form their own group."""
        out: dict[str, list[str]] = {}
        for name in names:
            x = self._leaf(name)
            origin = x.storage.origin if isinstance(x, ArrayRef) else ""
            out.setdefault(origin, []).append(name)
        return list(out.values())

    def release(self, names: Iterable[str]) -> None:
        """Forget the arrays of ``names`` and the bytes behind them, so a shard's mapping can
        go (``load_state`` streams shard by shard); reading them again is an error."""
        for name in names:
            x = self._leaf(name)
            self._m.forget(x)
            if isinstance(x, ArrayRef):
                x.storage.release()

    def close(self) -> None:
        """Forget the file; arrays already returned stay valid (they hold the mapping)."""
        self._closed = True

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._index)} arrays"
        return f"<satchel.ArrayFile {self.format} {self._where!r} {state}>"

    # -- internals -----------------------------------------------------------------------------
    def _leaf(self, name: str) -> Leafish:
        x = self._index.get(name)
        if x is None:
            near = ", ".join(list(self._index)[:5])
            raise MissingKeyError(f"{self._where}: no array named {name!r} (keys start: {near})")
        return x

    def _open(self) -> None:
        if self._closed:
            raise SatchelError(f"{self._where}: file is closed; open it again to read more")

    def _info(self, x: Leafish) -> TensorInfo:
        if isinstance(x, np.ndarray):
            shape = tuple(int(n) for n in x.shape)
            return TensorInfo(str(x.dtype), shape, math.prod(shape) * x.dtype.itemsize, self.format)
        return TensorInfo(x.dtype.name, x.shape, x.nbytes, x.framework or self.format)


class _Refs:
    """The file's refs, listed only when the materializer asks (sharing decisions)."""

    def __init__(self, file: ArrayFile) -> None:
        self._file = file

    def __iter__(self) -> Iterator[ArrayRef]:
        return iter(self._file._refs)


def _arrays(root: Any, where: str) -> list[tuple[str, Leafish]]:
    """Every array leaf with its dotted path, in structure order; each container walked once
    (shared ones and a pickle's memo tricks cost nothing extra), depth bounded (SPEC 4.6)."""
    seen: set[int] = set()
    out: list[tuple[str, Leafish]] = []
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        x, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(f"{where}: structure nested deeper than {MAX_DEPTH} levels")
        if isinstance(x, Deferred):
            x = x.resolve()
        if isinstance(x, ArrayRef | np.ndarray):
            out.append((path, x))
        elif isinstance(x, dict | list | tuple):
            if id(x) in seen:
                continue
            seen.add(id(x))
            items = x.items() if isinstance(x, dict) else enumerate(x)
            dot = f"{path}." if path else ""
            stack.extend(reversed([(v, f"{dot}{k}", depth + 1) for k, v in items]))
    return out


# The names 0.1.0 exported for the two classes ``open`` used to return; one class now.
LazyFile = ArrayFile
ForeignFile = ArrayFile
