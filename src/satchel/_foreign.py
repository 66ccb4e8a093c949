"""``satchel.open`` for other frameworks' files: the same surface as :class:`LazyFile`.

The structure is parsed once (arrays stay zero-copy views of the mapped file); ``ck[name]``
turns one array into a NumPy array or torch tensor.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._lazy import ArrayFile, TensorInfo
from ._progress import ProgressArg, reporter
from ._tree import iter_leaves, unique_names
from .errors import MissingKeyError, SatchelError
from .formats import registry
from .formats._refs import ArrayRef, Deferred, finalize

__all__ = ["ForeignFile", "read_foreign"]


def read_foreign(
    path: str | os.PathLike[str],
    fmt: str,
    *,
    framework: str,
    device: Any,
    dtype: Any,
    verify: bool,
    progress: ProgressArg = None,
) -> Any:
    """The whole structure of a foreign file, arrays as NumPy (default) or torch."""
    size = _size(Path(path))
    report = reporter(progress, size, f"reading {Path(path).name}")
    raw = registry.reader(fmt).read(Path(path), verify=verify)
    out = finalize(raw, framework=_framework(framework), dtype=dtype, device=device)
    if report is not None:
        report(size)  # foreign readers map their files; the work is done in one go
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _framework(framework: str) -> Literal["numpy", "torch"]:
    # Foreign files record no satchel framework: "auto" means NumPy, the one always installed.
    return "torch" if framework == "torch" else "numpy"


class ForeignFile(ArrayFile):
    """A parsed foreign file: ``keys()``, ``info(name)``, ``ck[name]``, ``load()``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str,
        *,
        framework: str = "auto",
        device: Any = None,
        dtype: Any = None,
        verify: bool = True,
    ) -> None:
        self.format = fmt
        self._where = str(path)
        self._raw: Any = registry.reader(fmt).read(Path(path), verify=verify)
        self._framework = _framework(framework)
        self._device, self._dtype = device, dtype
        found = [
            (".".join(p), a)
            for p, a in (
                (p, x.resolve() if isinstance(x, Deferred) else x)
                for p, x in iter_leaves(self._raw, where=self._where)
            )
            if isinstance(a, (ArrayRef, np.ndarray))
        ]
        names = unique_names(p for p, _ in found)
        self._index = {n: a for n, (_, a) in zip(names, found, strict=True)}
        self._closed = False

    @property
    def path(self) -> str:
        return self._where

    @property
    def metadata(self) -> dict[str, str]:
        return {"format": self.format}

    @property
    def structure(self) -> Any:
        """The file's structure with a :class:`TensorInfo` where each array is (no data read)."""
        infos = {id(a): self.info(name) for name, a in self._index.items()}

        def walk(x: Any, depth: int) -> Any:
            if isinstance(x, Deferred):
                x = x.resolve()
            if isinstance(x, ArrayRef | np.ndarray):
                return infos.get(id(x), x)
            if depth > 64:
                return x
            if isinstance(x, dict):
                return type(x)((k, walk(v, depth + 1)) for k, v in x.items())
            if isinstance(x, list | tuple):
                return type(x)(walk(v, depth + 1) for v in x)
            return x

        return walk(self._raw, 0)

    @property
    def module_class(self) -> str | None:
        return None

    @property
    def checksummed(self) -> bool:
        return False

    def info(self, name: str) -> TensorInfo:
        a = self._get(name)
        if isinstance(a, ArrayRef):
            shape, dt, isz = a.shape, a.dtype.name, a.dtype.itemsize
        else:
            shape, dt, isz = tuple(a.shape), str(a.dtype), a.dtype.itemsize
        return TensorInfo(dt, shape, math.prod(shape) * isz, self.format)

    def __getitem__(self, name: str) -> Any:
        return finalize(
            self._get(name), framework=self._framework, dtype=self._dtype, device=self._device
        )

    def load(self) -> Any:
        return finalize(
            self._raw, framework=self._framework, dtype=self._dtype, device=self._device
        )

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"<satchel.ForeignFile {self.format} {self._where!r} {len(self._index)} arrays>"

    def _get(self, name: str) -> Any:
        if self._closed:
            raise SatchelError(f"{self._where}: file is closed; open it again to read more")
        if name not in self._index:
            near = ", ".join(list(self._index)[:5])
            raise MissingKeyError(f"{self._where}: no array named {name!r} (keys start: {near})")
        return self._index[name]
