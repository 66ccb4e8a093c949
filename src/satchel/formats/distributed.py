"""A distributed item folder written by ranks (SPEC 10), read in one process without torch.

``layout.json`` says where each piece of each tensor lies; a tensor held whole by one piece is
that piece (zero-copy, verified on first touch); a tensor cut into pieces is assembled into one
buffer, each piece verified as it is copied. The saved structure, non-tensor values included,
comes back as it was saved.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._dist.layout import LAYOUT_FILE, MAX_LAYOUT, Layout, TensorLayout, parse_layout
from .._dist.layout import piece_path as _piece_path
from .._read.file import ArrayFile
from .._read.native import read_native
from .._read.refs import ArrayRef, Storage, Tree
from .._tree import unflatten
from ..adapters import c_strides
from ..errors import FormatError
from ._reader import Probe

__all__ = ["assemble", "read", "sniff"]

_MARK = b'{"format":"satchel-distributed"'


def sniff(probe: Probe) -> bool:
    if not probe.is_dir:
        # The layout file itself, from its bytes (the commit record names it for the item).
        return probe.head.startswith(b'{"format":"satchel-distributed"')
    # An incremental save's item may hold the layout alone, its pieces in the pool (SPEC 10.7).
    layout = probe.path / LAYOUT_FILE
    if not layout.is_file():
        return False
    if any(probe.path.glob("pieces-*.satchel")):
        return True
    with layout.open("rb") as f:
        return f.read(len(_MARK)) == _MARK


def read(path: Path, *, verify: bool = True) -> Tree:
    """Every tensor whole, in the saved structure.

    Raises:
        FormatError: a bad layout, a missing piece file or a piece that is not what the layout
            says (each naming the file and the tensor).
        IntegrityError: a piece's bytes fail their checksum (with ``verify``).
    """
    if not path.is_dir():
        path = path.parent
    where = str(path / LAYOUT_FILE)
    layout = parse_layout(_read_regular(path / LAYOUT_FILE, where), where=where)

    def open_piece(file: str) -> ArrayFile:
        piece_path = _piece_path(path, file, where)  # SPEC 10.7: or in the root's pool
        if not piece_path.is_file() or piece_path.is_symlink():
            raise FormatError(
                f"{where}: a piece is in {file}, which is missing or not a regular file",
                path=where,
                field=file,
            )
        tree = read_native(piece_path, mmap=True, verify=verify)
        return ArrayFile(tree, path=str(piece_path), framework="numpy")

    return assemble(layout, open_piece, where=where, verify=verify)


def assemble(
    layout: Layout, open_piece: Callable[[str], ArrayFile], *, where: str, verify: bool
) -> Tree:
    """Every tensor of ``layout`` whole, its pieces read from the files ``open_piece`` opens
    by the layout's ``file`` name (a local folder here, object storage in ``_remote``)."""
    files: dict[str, ArrayFile] = {}
    try:
        refs = [_tensor(t, open_piece, files, where=where) for t in layout.tensors]
    finally:
        for f in files.values():
            f.close()
    root = unflatten(layout.skeleton, refs.__getitem__, where=where)
    return Tree(root, "distributed", {"format": "distributed"}, checksummed=verify)


def _tensor(
    t: TensorLayout,
    open_piece: Callable[[str], ArrayFile],
    files: dict[str, ArrayFile],
    *,
    where: str,
) -> ArrayRef:
    whole = np.empty(t.shape, dtype=t.dtype.numpy)
    for p in t.pieces:
        f = files.get(p.file)
        if f is None:
            f = files[p.file] = open_piece(p.file)
        if p.key not in f:
            raise FormatError(
                f"{where}: {p.file} lacks piece {p.key!r} of tensor {t.name!r}",
                path=where,
                field=t.name,
            )
        piece = f[p.key]
        if tuple(piece.shape) != p.sizes or str(piece.dtype) != str(whole.dtype):
            raise FormatError(
                f"{where}: piece {p.key!r} in {p.file} is {piece.dtype}{list(piece.shape)}, the "
                f"layout says {t.dtype.name}{list(p.sizes)}",
                path=where,
                field=t.name,
            )
        whole[tuple(slice(o, o + n) for o, n in zip(p.offsets, p.sizes, strict=True))] = piece
    data = whole.reshape(-1).view(np.uint8)
    # The pieces' files record the framework the tensors came from (torch, for ranks).
    first = files[t.pieces[0].file].info(t.pieces[0].key).framework if t.pieces else None
    return ArrayRef(Storage(data, t.name), t.dtype, t.shape, c_strides(t.shape), 0, framework=first)


def _read_regular(path: Path, where: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{where}: is not a regular file", path=where)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_LAYOUT + 1)
    finally:
        os.close(fd)


def layout_of(path: Path) -> Layout:
    where = str(path / LAYOUT_FILE)
    return parse_layout(_read_regular(path / LAYOUT_FILE, where), where=where)
