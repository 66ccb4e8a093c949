"""PyTorch Distributed Checkpoint (DCP) folders without torch: docs/formats.md#dcp.

``torch.distributed.checkpoint.save(state_dict, checkpoint_id=folder)`` writes, with its
default ``FileSystemWriter`` (torch/distributed/checkpoint/filesystem.py):

* ``.metadata``: a pickle of one ``Metadata`` (read by :mod:`._dcp_metadata`, never unpickled):
  every entry of the flattened state dict, its dtype, global size and chunks, where each chunk
  is stored, and the object path that nests the flat names again.
* ``__<rank>_<n>.distcp``: items back to back. Each item is a whole ``torch.save`` archive (a
  tensor chunk, or any other value), optionally zstd-compressed; it is read by the torch zip
  reader on a slice of the mapped file.

:func:`read` returns what ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``
saves: the nested state dict in ``.metadata`` order. A tensor stored as one chunk is a
zero-copy view of its ``.distcp`` file; a tensor in several chunks (a sharded ``DTensor``) is
assembled into a new buffer when it is first used, after its chunks were checked to tile it
exactly. Each item's zip CRC-32s are verified when its bytes are first used (``verify=True``);
``.metadata`` itself carries no checksum.

Example::

    >>> sd = satchel.load("ckpt", framework="torch")  # the folder holding .metadata
    >>> sd["model"]["layer.weight"].shape
    torch.Size([8, 4])
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from .._read.refs import ArrayRef, Deferred, Storage, Tree, c_strides, make_ref
from ..errors import FormatError
from ._codecs.inflate import inflate_zstd
from ._codecs.source import map_file
from ._dcp_metadata import BytesEntry, Chunk, Item, TensorEntry, read_metadata
from ._reader import Probe
from .torch import read_zip

__all__ = ["METADATA", "read", "sniff"]

U8Array = np.ndarray[Any, np.dtype[np.uint8]]

METADATA = ".metadata"
SUFFIX = ".distcp"
_MAX_METADATA = 1 << 30
_MAX_GRID = 1 << 24  # cells of the grid the chunks' edges cut a tensor into (tiling check)
_ZIP_SLACK = 1 << 20  # a torch.save archive of one chunk: its bytes plus records and padding
_MAX_BYTES_ITEM = 1 << 30  # decompressed size of a zstd item holding a non-tensor value


# -- the chunks of one tensor --------------------------------------------------------------------
def check_tiling(size: tuple[int, ...], chunks: tuple[Chunk, ...], where: str) -> None:
    """The chunks cover the tensor exactly: each inside it, none overlapping, no gaps.

    The chunk edges cut each dimension into intervals; every cell of that grid must be painted
    by exactly one chunk. A grid of more than 2^24 cells (legitimate shardings cut a tensor into
    about one cell per chunk) is refused rather than checked slowly.

    Raises:
        FormatError: a chunk outside the tensor, two chunks overlapping, a gap, a grid too big.
    """
    cuts: list[list[int]] = []
    for d, n in enumerate(size):
        edges = {0, n}
        for c in chunks:
            start, end = c.offsets[d], c.offsets[d] + c.sizes[d]
            if end > n:
                raise FormatError(
                    f"{where}: chunk at {list(c.offsets)} of {list(c.sizes)} reaches past the "
                    f"tensor's size {list(size)}"
                )
            edges.update((start, end))
        cuts.append(sorted(edges))
    cells = math.prod(len(e) - 1 for e in cuts)
    if cells > _MAX_GRID:
        raise FormatError(f"{where}: {len(chunks)} chunks cut the tensor into {cells} pieces")
    grid = np.zeros(tuple(len(e) - 1 for e in cuts), dtype=np.uint8)
    for c in chunks:
        box = tuple(
            slice(bisect.bisect_left(e, o), bisect.bisect_left(e, o + s))
            for e, o, s in zip(cuts, c.offsets, c.sizes, strict=True)
        )
        if grid[box].any():
            raise FormatError(
                f"{where}: chunk at {list(c.offsets)} of {list(c.sizes)} overlaps another chunk"
            )
        grid[box] = 1
    if not grid.all():
        raise FormatError(f"{where}: the chunks leave part of the tensor {list(size)} uncovered")


class _Assembled(Storage):
    """A tensor's bytes gathered from its chunks the first time they are used.

    Touching ``data`` copies each chunk (running its CRC check first) into a new C-contiguous
    buffer; a failed check fails every later touch too.
    """

    __slots__ = ("_parts", "_shape")

    def __init__(
        self, name: str, shape: tuple[int, ...], parts: list[tuple[Chunk, ArrayRef]], nbytes: int
    ) -> None:
        super().__init__(None, name, nbytes=nbytes, origin=parts[0][1].storage.origin)
        self._parts: list[tuple[Chunk, ArrayRef]] | None = parts
        self._shape = shape

    @property
    def data(self) -> U8Array:
        if self._data is None and self._parts is not None:
            self._data = _assemble(self._shape, self._parts)
            self._parts = None
        return super().data

    @property
    def checked(self) -> bool:
        return self._parts is None or all(r.storage.checked for _, r in self._parts)

    def release(self) -> None:
        super().release()
        self._parts = None


def _assemble(shape: tuple[int, ...], parts: list[tuple[Chunk, ArrayRef]]) -> U8Array:
    isz = parts[0][1].dtype.itemsize
    cell = np.dtype(f"V{isz}")  # bytes only: any dtype, bfloat16 and float8 included
    out = np.empty(math.prod(shape), dtype=cell).reshape(shape)
    for chunk, ref in parts:
        if math.prod(chunk.sizes) == 0:
            continue
        src = np.ndarray(
            ref.shape,
            dtype=cell,
            buffer=ref.storage.data,
            offset=ref.offset,
            strides=tuple(s * isz for s in ref.strides),
        )
        out[tuple(slice(o, o + n) for o, n in zip(chunk.offsets, chunk.sizes, strict=True))] = src
    return out.reshape(-1).view(np.uint8)


# -- items ---------------------------------------------------------------------------------------
class _Files:
    """The ``.distcp`` files of one folder, each checked and mapped once."""

    def __init__(self, folder: Path, where: str) -> None:
        self.folder = folder
        self.where = where
        self._real = folder.resolve()
        self._maps: dict[str, U8Array] = {}
        self._spans: dict[str, list[tuple[int, int, str]]] = {}

    def bytes_of(self, item: Item, what: str) -> U8Array:
        data = self._maps.get(item.file)
        if data is None:
            data = self._maps[item.file] = map_file(self._path(item.file))
        end = item.offset + item.length
        if end > data.size:
            raise FormatError(
                f"{self.where}: {what} is stored at bytes [{item.offset}, {end}) of "
                f"{item.file}, which holds {data.size}; the file is truncated or the metadata "
                "belongs to another save",
                path=self.where,
                field=what,
            )
        self._spans.setdefault(item.file, []).append((item.offset, end, what))
        return data[item.offset : end]

    def check_disjoint(self) -> None:
        """No two items share bytes (two tensors would alias one mapped range)."""
        for file, spans in self._spans.items():
            spans.sort()
            for (_, end, a), (start, _, b) in itertools.pairwise(spans):
                if start < end:
                    raise FormatError(
                        f"{self.where}: {a} and {b} overlap in {file}; each item has its own bytes",
                        path=self.where,
                        field=b,
                    )

    def _path(self, name: str) -> Path:
        path = self.folder / name
        try:
            st = os.stat(path)
        except FileNotFoundError as e:
            raise FormatError(
                f"{self.where}: names {name}, which is not in {self.folder}", path=self.where
            ) from e
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{self.where}: {name} is not a regular file", path=self.where)
        if path.is_symlink() and path.resolve().parent != self._real:
            # docs/formats.md#hostile-containers rule Z7
            raise FormatError(
                f"{self.where}: {name} is a symlink out of the checkpoint folder",
                path=self.where,
            )
        return path


def _item_value(files: _Files, item: Item, cap: int, what: str, verify: bool) -> Any:
    raw = files.bytes_of(item, what)
    where = f"{files.folder / item.file}: {what}"
    for _ in item.transforms:  # stream.zstd/1, the only one _dcp_metadata lets through
        raw = np.frombuffer(inflate_zstd(raw.data, cap, where=where), dtype=np.uint8)
    if bytes(raw[:4]) != b"PK\x03\x04":
        raise FormatError(
            f"{where}: bytes [{item.offset}, {item.offset + item.length}) are not a torch.save "
            "archive (checkpoints written with serialization_format=SAFETENSORS are not read)",
            path=str(files.folder / item.file),
            field=what,
        )
    value = read_zip(raw, where=where, verify=verify)
    return value.resolve() if isinstance(value, Deferred) else value


def _tensor(files: _Files, e: TensorEntry, verify: bool) -> ArrayRef:
    where = f"{files.where}: {e.fqn!r}"
    check_tiling(e.size, e.chunks, where)
    parts: list[tuple[Chunk, ArrayRef]] = []
    for c in e.chunks:
        what = f"{e.fqn!r} chunk at {list(c.offsets)}"
        cap = math.prod(c.sizes) * e.dtype.itemsize + _ZIP_SLACK
        ref = _item_value(files, c.item, cap, what, verify)
        if not isinstance(ref, ArrayRef) or ref.dtype != e.dtype or ref.shape != c.sizes:
            got = (
                f"{ref.dtype.name}{list(ref.shape)}"
                if isinstance(ref, ArrayRef)
                else f"a {type(ref).__name__}"
            )
            raise FormatError(
                f"{where}: {what} holds {got}, not the {e.dtype.name}{list(c.sizes)} the "
                "metadata promises",
                path=files.where,
                field=e.fqn,
            )
        ref.storage.origin = str(files.folder / c.item.file)
        parts.append((c, ref))
    only = parts[0][1]
    if len(parts) == 1 and only.strides == c_strides(only.shape):
        # One chunk covering the tensor: a view of the mapped file. A strided chunk (a saved
        # view) is copied to C order below, as torch's loader copies it into a fresh tensor.
        return dataclasses.replace(only, kind="tensor", requires_grad=False)
    nbytes = math.prod(e.size) * e.dtype.itemsize
    return make_ref(_Assembled(e.fqn, e.size, parts, nbytes), e.dtype, e.size, where=where)


# -- nesting -------------------------------------------------------------------------------------
def _place(root: dict[Any, Any], path: tuple[str | int, ...], value: Any, where: str) -> None:
    """``set_element`` of torch/distributed/checkpoint/_traverse.py: a string step makes a
    dict, an integer step a list padded with ``None``. Callers refuse clashing paths first."""
    cur: Any = root
    for prev, key in itertools.pairwise(path):
        fresh: Any = {} if isinstance(key, str) else []
        if isinstance(cur, dict):
            cur = cur.setdefault(prev, fresh)
        elif isinstance(cur, list) and isinstance(prev, int):
            cur.extend([None] * (prev + 1 - len(cur)))
            if cur[prev] is None:
                cur[prev] = fresh
            cur = cur[prev]
        else:
            raise FormatError(f"{where}: the object path {list(path)} clashes with another's")
    key = path[-1]
    if isinstance(cur, list):
        if not isinstance(key, int):
            raise FormatError(f"{where}: the object path {list(path)} keys a list by name")
        cur.extend([None] * (key + 1 - len(cur)))
    elif not isinstance(cur, dict):
        raise FormatError(f"{where}: the object path {list(path)} runs through a value")
    cur[key] = value


def _nest(entries: list[TensorEntry | BytesEntry], values: list[Any], where: str) -> dict[Any, Any]:
    taken: set[tuple[str | int, ...]] = set()
    inner: set[tuple[str | int, ...]] = set()
    root: dict[Any, Any] = {}
    for e, value in zip(entries, values, strict=True):
        prefixes = [e.path[:i] for i in range(1, len(e.path))]
        if e.path in taken or e.path in inner or any(p in taken for p in prefixes):
            raise FormatError(
                f"{where}: the object path {list(e.path)} of {e.fqn!r} clashes with another "
                "entry's",
                path=where,
                field=e.fqn,
            )
        taken.add(e.path)
        inner.update(prefixes)
        _place(root, e.path, value, f"{where}: {e.fqn!r}")
    return root


# -- the reader ----------------------------------------------------------------------------------
def read(path: Path, *, verify: bool = True) -> Tree:
    """The nested state dict of the DCP folder ``path`` (see the module docstring).

    Raises:
        UnsafeContentError: ``.metadata`` or an item's pickle names a global outside the
            allowlist (it is named), or a refused opcode.
        FormatError: damaged metadata; chunks that do not tile their tensor; an item outside its
            file, overlapping another, or not the tensor the metadata promises; a file name that
            is not a plain name in the folder.
        IntegrityError: an item's zip CRC-32 fails (``verify=True``; when its bytes are used).
        FrameworkNotAvailableError: items are zstd-compressed and ``zstandard`` is missing.
    """
    folder = Path(path)
    meta_path = folder / METADATA
    where = str(meta_path)
    entries = read_metadata(_read_metadata_file(meta_path), where=where)
    files = _Files(folder, where)
    values: list[Any] = []
    for e in entries:
        if isinstance(e, TensorEntry):
            values.append(_tensor(files, e, verify))
        else:
            values.append(_item_value(files, e.item, _MAX_BYTES_ITEM, repr(e.fqn), verify))
    files.check_disjoint()
    return Tree(_nest(entries, values, where), "dcp", {"format": "dcp"}, checksummed=verify)


def _read_metadata_file(path: Path) -> bytes:
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as e:
        raise FormatError(f"{path.parent}: has no {METADATA}; not a DCP checkpoint") from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FormatError(f"{where}: is not a regular file", path=where)
        raw = f.read(_MAX_METADATA + 1)
    if len(raw) > _MAX_METADATA:
        raise FormatError(f"{where}: is larger than {_MAX_METADATA} bytes", path=where)
    return raw


def sniff(probe: Probe) -> bool:
    """A folder holding ``.metadata`` that starts as a pickle (PROTO) and a ``*.distcp`` file."""
    if not probe.is_dir:
        return False
    try:
        fd = os.open(probe.path / METADATA, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or f.read(1) != b"\x80":
                return False
        with os.scandir(probe.path) as it:
            return any(d.name.endswith(SUFFIX) for d in it)
    except OSError:
        return False
