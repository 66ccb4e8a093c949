"""What a PATH argument names: one readable file, a checkpoint (step folder) or a manager root.

All three look alike to the commands: dotted tensor names, ``info(name)`` from headers only,
``array(name)`` reading (and verifying) one tensor at a time. A checkpoint's names are
``<item>.<name>`` (``model.0.weight``); a root shows its newest committed checkpoint (or the
step asked for).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

import satchel

from .._checkpoint import is_root, is_step_folder
from .._remote.url import StorageOptions, is_url
from ..errors import SatchelError, UsageError

__all__ = ["Entry", "Kind", "Part", "Source", "disk_size"]

Kind = Literal["file", "checkpoint", "checkpoint-root"]
Handle = satchel.ArrayFile
_VALUE_CAP = 10_000  # non-tensor values listed per file; a huge list of ints is not for reading


@dataclass(frozen=True)
class Entry:
    """One leaf in structure order: a tensor (``info`` set) or a plain value."""

    name: str
    info: satchel.TensorInfo | None
    value: Any = None


def disk_size(p: Path) -> int:
    """Bytes on disk: a file, every file under a folder, or a TensorFlow prefix's files."""
    if p.is_file() and p.suffix == ".index":  # TensorFlow: the index names its data shards
        prefix = p.with_suffix("")
        shards = list(p.parent.glob(f"{prefix.name}.data-*"))
        return p.stat().st_size + sum(q.stat().st_size for q in shards if q.is_file())
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(q.stat().st_size for q in p.rglob("*") if q.is_file() and not q.is_symlink())
    if p.parent.is_dir():  # a TensorFlow prefix: ckpt-1 -> ckpt-1.index, ckpt-1.data-*
        return sum(q.stat().st_size for q in p.parent.glob(f"{p.name}.*") if q.is_file())
    return 0


class Part:
    """One readable file of a source: the file itself, or one item of a checkpoint."""

    def __init__(
        self, path: Path | str, prefix: str = "", *, storage_options: StorageOptions = None
    ) -> None:
        self.path, self.prefix = path, prefix
        # One open serves names, headers and values: checksums run when a tensor's bytes are
        # first touched, so listing names reads no data, and nothing is parsed twice.
        self._handle = satchel.open(path, framework="numpy", storage_options=storage_options)
        self.format = self._handle.format

    def handle(self) -> Handle:
        return self._handle

    def data(self) -> Handle:
        """For values: every tensor read through it is checked against its checksum first."""
        return self._handle

    def close(self) -> None:
        self._handle.close()


class Source:
    """The tensors behind a PATH argument; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        step: int | None = None,
        storage_options: StorageOptions = None,
    ) -> None:
        # A URL (s3://...) stays a string in ``where``: a Path would fold "s3://" to "s3:/".
        self.url = str(path) if is_url(path) else None
        self.path = Path(path)
        self.where = self.url or str(self.path)
        self.commit: satchel.CheckpointInfo | None = None
        self.checkpoints: list[satchel.CheckpointInfo] | None = None
        self.kept_by: dict[int, list[str]] = {}
        self.parts: list[Part] = []
        if self.url is not None:
            if step is not None:
                raise UsageError(f"{self.url}: --step applies to a local checkpoint root only")
            self.kind: Kind = "file"
            self.parts = [Part(self.url, storage_options=storage_options)]
            self.format = self.parts[0].format
        elif is_root(self.path):
            self.kind = "checkpoint-root"
            self.format = "checkpoint-root"
            reader = satchel.CheckpointRoot(self.path)
            self.checkpoints = reader.checkpoints(verify=False)
            self.kept_by = reader.kept_by()
            committed = [i for i in self.checkpoints if i.record is not None]
            if step is not None:
                chosen = [i for i in self.checkpoints if i.step == step]
                if not chosen:
                    have = ", ".join(str(i.step) for i in self.checkpoints) or "none"
                    raise UsageError(f"{self.path}: no step {step} (steps: {have})")
                self._open_step(chosen[0])
            elif committed:
                self._open_step(committed[-1])
        elif is_step_folder(self.path):
            if step is not None:
                raise UsageError(f"{self.path}: --step applies to a checkpoint root only")
            self.kind, self.format = "checkpoint", "checkpoint"
            reader = satchel.CheckpointRoot(self.path.parent)
            found = [i for i in reader.checkpoints(verify=False) if i.path.name == self.path.name]
            if not found:
                raise SatchelError(f"{self.path}: not a step folder of {self.path.parent}")
            self.kept_by = reader.kept_by()
            self._open_step(found[0])
        else:
            if step is not None:
                raise UsageError(f"{self.path}: --step applies to a checkpoint root only")
            self.kind = "file"
            if not self.path.exists() and not Path(f"{self.path}.index").is_file():
                raise satchel.SatchelFileNotFoundError(f"{self.path}: no such file or folder")
            self.parts = [Part(self.path)]
            self.format = self.parts[0].format
        self._index: dict[str, tuple[Part, str]] | None = None

    def _open_step(self, info: satchel.CheckpointInfo) -> None:
        self.commit = info
        if info.record is None:
            raise SatchelError(f"{info.path}: {info.problem}")
        # Parts open their files lazily: nothing to close if one of them fails detection here.
        self.parts = [Part(info.path / item.file, name) for name, item in info.record.items.items()]

    # -- names and tensors -------------------------------------------------------------------------
    @property
    def index(self) -> dict[str, tuple[Part, str]]:
        if self._index is None:
            self._index = {}
            for part in self.parts:
                for key in part.handle():
                    self._index[_join(part.prefix, key)] = (part, key)
        return self._index

    def names(self) -> list[str]:
        return list(self.index)

    def info(self, name: str) -> satchel.TensorInfo:
        part, key = self.index[name]
        return part.handle().info(key)

    def array(self, name: str) -> np.ndarray[Any, Any]:
        """One tensor as a NumPy array, checksum-verified when the file carries checksums."""
        part, key = self.index[name]
        value = part.data()[key]
        return np.asarray(value) if not isinstance(value, bytes) else np.frombuffer(value, "u1")

    def entries(self) -> list[Entry]:
        """Tensors and plain values in the order the saved structure holds them."""
        out: list[Entry] = []
        seen: set[str] = set()
        for part in self.parts:
            handle = part.handle()
            try:
                structure = handle.structure  # TensorInfo where arrays are: no data read
            except SatchelError:
                structure = None
            if structure is not None:
                for path, leaf in _walk(structure):
                    if not path and isinstance(leaf, (dict, list, tuple)):
                        continue  # the file holds an empty container: nothing to list
                    name = _join(part.prefix, path or ("tensor" if _is_array(leaf) else "value"))
                    if name in seen:
                        continue
                    if name in self.index:
                        seen.add(name)
                        out.append(Entry(name, self.info(name)))
                    elif not _is_array(leaf):
                        seen.add(name)
                        out.append(Entry(name, None, leaf))
            for key in handle:  # names the walk spells differently (shared tensors: "#1")
                name = _join(part.prefix, key)
                if name not in seen:
                    seen.add(name)
                    out.append(Entry(name, self.info(name)))
        return out

    # -- about the files -------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in self.parts:
            for k, v in part.handle().metadata.items():
                out[f"{part.prefix}:{k}" if part.prefix else k] = v
        return out

    @property
    def checksummed(self) -> bool:
        """Every tensor is covered by a checksum (satchel files; checkpoints by the commit too)."""
        return bool(self.parts) and all(p.handle().checksummed for p in self.parts)

    @property
    def module_class(self) -> str | None:
        classes = [c for p in self.parts if (c := p.handle().module_class)]
        return classes[0] if classes else None

    def size(self) -> int | None:
        """Bytes on disk; ``None`` for a URL (object storage: not on this disk)."""
        return None if self.url is not None else disk_size(self.path)

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic, satchel.TensorInfo))


def _walk(obj: Any) -> Iterator[tuple[str, Any]]:
    """``(dotted path, leaf)`` in order; each container once; plain lists shown whole."""
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(obj, "")]
    values = 0
    while stack:
        x, path = stack.pop()
        if isinstance(x, (dict, list, tuple)) and x and not _plain_sequence(x):
            if id(x) in seen:
                continue
            seen.add(id(x))
            items = x.items() if isinstance(x, dict) else enumerate(x)
            stack.extend(reversed([(v, _join(path, str(k))) for k, v in items]))
            continue
        if not _is_array(x):
            values += 1
            if values > _VALUE_CAP:
                return
        yield path, x


def _plain_sequence(x: Any) -> bool:
    """A list or tuple of plain values (``betas = (0.9, 0.999)``): shown as one value."""
    return isinstance(x, (list, tuple)) and not any(
        isinstance(v, (dict, list, tuple)) or _is_array(v) for v in x
    )
