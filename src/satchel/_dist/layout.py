"""The layout of a distributed item: which piece of which tensor lives where (SPEC 10.2).

A distributed item is a folder: ``pieces-<rank>.satchel`` files, each a satchel file holding
that rank's pieces as a flat dict, and ``layout.json``, which says for every tensor its dtype,
global shape and where each piece lies (file, key, offsets, sizes), plus the saved structure
with its non-tensor values. Pure data and arithmetic; no torch here.

An incremental save (SPEC 10.7) writes layout version 2, whose pieces may lie in the root's
pool instead: their ``file`` is ``pool:<pool file>`` (``_shards.pool``) and their ``key`` the
piece's name in that file. A reader of version 1 refuses version 2 by its number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import dtypes
from .._format.header import json_object
from .._shards.pool import is_pool_file, resolve
from .._tree import Json, validate_skeleton
from ..errors import FormatError

__all__ = [
    "LAYOUT_FILE",
    "Layout",
    "Piece",
    "TensorLayout",
    "encode_layout",
    "overlap",
    "parse_layout",
    "piece_file",
    "piece_key",
    "piece_path",
    "pool_file_of",
    "pool_piece",
]

LAYOUT_FILE = "layout.json"
FORMAT = "satchel-distributed"
VERSION = 1
POOLED = 2  # SPEC 10.7: pieces may be in the root's pool
_POOL = "pool:"
MAX_LAYOUT = 100_000_000  # as the header cap (SPEC 1.2)
_MAX_DIMS = 64


def piece_file(rank: int) -> str:
    return f"pieces-{rank:05d}.satchel"


def pool_piece(file: str) -> str:
    """A piece's ``file`` when it lies in pool file ``file`` (SPEC 10.7)."""
    return f"{_POOL}{file}"


def pool_file_of(piece_file_: str) -> str | None:
    """The pool file a piece's ``file`` names, or ``None`` for a ``pieces-`` file."""
    return piece_file_[len(_POOL) :] if piece_file_.startswith(_POOL) else None


def piece_path(folder: Path, file: str, where: str) -> Path:
    """Where a piece's ``file`` is: in the item's ``folder``, or for a pool piece in the pool
    of the root the item's step is in (SPEC 10.7; never through a link).

    Raises:
        FormatError: a pool piece whose pool file cannot be found as it must be.
    """
    pool = pool_file_of(file)
    return folder / file if pool is None else resolve(folder, pool, where)


def piece_key(fqn: str, offsets: tuple[int, ...]) -> str:
    """The name of a piece inside its file: the tensor's path and where the piece starts."""
    return f"{fqn}@{'_'.join(map(str, offsets))}" if offsets else f"{fqn}@"


@dataclass(frozen=True)
class Piece:
    """A box of a tensor stored whole as ``key`` in ``file``."""

    file: str
    key: str
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class TensorLayout:
    """One saved tensor: its dtype, global shape and the pieces that tile it exactly."""

    name: str
    dtype: dtypes.DType
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class Layout:
    """The structure (a skeleton whose ``$t`` leaves index ``tensors``) and the tensors."""

    skeleton: Json
    tensors: tuple[TensorLayout, ...]
    world_size: int


def overlap(
    a_off: tuple[int, ...], a_size: tuple[int, ...], b_off: tuple[int, ...], b_size: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The intersection of two boxes as (offsets, sizes), or ``None`` when it is empty."""
    lo = tuple(max(a, b) for a, b in zip(a_off, b_off, strict=True))
    hi = tuple(min(a + n, b + m) for a, n, b, m in zip(a_off, a_size, b_off, b_size, strict=True))
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return None
    return lo, tuple(h - low for low, h in zip(lo, hi, strict=True))


def encode_layout(layout: Layout) -> bytes:
    pooled = any(p.file.startswith(_POOL) for t in layout.tensors for p in t.pieces)
    doc = {
        "format": FORMAT,
        "version": POOLED if pooled else VERSION,
        "world_size": layout.world_size,
        "root": layout.skeleton,
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype.name,
                "shape": list(t.shape),
                "pieces": [
                    {
                        "file": p.file,
                        "key": p.key,
                        "offsets": list(p.offsets),
                        "sizes": list(p.sizes),
                    }
                    for p in t.pieces
                ],
            }
            for t in layout.tensors
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def parse_layout(raw: bytes, *, where: str) -> Layout:
    """Validate a layout (SPEC 10.2): every number checked, the pieces of each tensor tile it
    exactly (no gap, no overlap), every file a plain name.

    Raises:
        FormatError: naming the tensor and field at fault.
    """
    if len(raw) > MAX_LAYOUT:
        raise FormatError(f"{where}: layout is {len(raw):,} bytes, over the cap", path=where)
    doc = json_object(raw, where=where, what="distributed layout")
    version = doc.get("version")
    if doc.get("format") != FORMAT or isinstance(version, bool) or version not in (VERSION, POOLED):
        raise FormatError(
            f"{where}: not a satchel distributed layout version {VERSION} or {POOLED} "
            f"(format {doc.get('format')!r}, version {doc.get('version')!r})",
            path=where,
            field="version",
        )
    world = doc.get("world_size")
    if isinstance(world, bool) or not isinstance(world, int) or not 1 <= world <= 1_000_000:
        raise FormatError(f"{where}: world_size {world!r} is not valid", path=where)
    tensors_raw = doc.get("tensors")
    if not isinstance(tensors_raw, list):
        raise FormatError(f"{where}: 'tensors' must be a list", path=where, field="tensors")
    tensors = tuple(_tensor(i, t, where, version == POOLED) for i, t in enumerate(tensors_raw))
    validate_skeleton(doc.get("root"), len(tensors), where=f"{where}: root")
    return Layout(doc["root"], tensors, world)


def _tensor(i: int, rec: Any, where: str, pooled: bool) -> TensorLayout:
    if not isinstance(rec, dict) or set(rec) != {"name", "dtype", "shape", "pieces"}:
        raise FormatError(f"{where}: tensor {i} must have name, dtype, shape and pieces")
    name = rec["name"]
    if not isinstance(name, str):
        raise FormatError(f"{where}: tensor {i} has no name", path=where)
    dt = dtypes.by_name(rec["dtype"]) if isinstance(rec["dtype"], str) else None
    if dt is None:
        raise FormatError(f"{where}: tensor {name!r}: unknown dtype {rec['dtype']!r}", field=name)
    shape = _ints(rec["shape"], where, name, "shape")
    pieces_raw = rec["pieces"]
    if not isinstance(pieces_raw, list):
        raise FormatError(f"{where}: tensor {name!r}: 'pieces' must be a list", field=name)
    pieces = []
    for p in pieces_raw:
        if not isinstance(p, dict) or set(p) != {"file", "key", "offsets", "sizes"}:
            raise FormatError(f"{where}: tensor {name!r}: a piece needs file, key, offsets, sizes")
        file, key = p["file"], p["key"]
        in_pool = pooled and isinstance(file, str) and file.startswith(_POOL)
        if in_pool:
            ok = is_pool_file(file[len(_POOL) :])
        else:
            ok = (
                isinstance(file, str)
                and file.startswith("pieces-")
                and "/" not in file
                and "\\" not in file
                and ".." not in file
            )
        if not ok or not isinstance(key, str):
            raise FormatError(
                f"{where}: tensor {name!r}: piece file {file!r} is not valid", field=name
            )
        offsets = _ints(p["offsets"], where, name, "offsets")
        sizes = _ints(p["sizes"], where, name, "sizes")
        if (
            len(offsets) != len(shape)
            or len(sizes) != len(shape)
            or any(o + n > s for o, n, s in zip(offsets, sizes, shape, strict=True))
        ):
            raise FormatError(
                f"{where}: tensor {name!r}: piece {offsets}+{sizes} does not fit shape {shape}",
                path=where,
                field=name,
            )
        pieces.append(Piece(file, key, offsets, sizes))
    _tiles(name, shape, pieces, where)
    return TensorLayout(name, dt, shape, tuple(pieces))


def _tiles(name: str, shape: tuple[int, ...], pieces: list[Piece], where: str) -> None:
    """The pieces cover the tensor exactly once: volumes add up and no two overlap."""
    total = sum(math.prod(p.sizes) for p in pieces)
    if total != math.prod(shape):
        raise FormatError(
            f"{where}: tensor {name!r}: pieces hold {total} elements of {math.prod(shape)}",
            path=where,
            field=name,
        )
    if len(pieces) > 1:
        for i, a in enumerate(pieces):
            for b in pieces[i + 1 :]:
                if (
                    math.prod(a.sizes)
                    and math.prod(b.sizes)
                    and overlap(a.offsets, a.sizes, b.offsets, b.sizes)
                ):
                    raise FormatError(
                        f"{where}: tensor {name!r}: pieces at {a.offsets} and {b.offsets} overlap",
                        path=where,
                        field=name,
                    )


def _ints(value: Any, where: str, name: str, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > _MAX_DIMS
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in value)
    ):
        raise FormatError(f"{where}: tensor {name!r}: {what} {value!r} is not valid", field=name)
    return tuple(value)
