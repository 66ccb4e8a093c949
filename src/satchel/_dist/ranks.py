"""The torch rim of distributed checkpoints: what each rank holds, writes and reads (SPEC 10).

Every collective runs on torch.distributed's own process groups (no transport of ours). Each
rank writes only its own pieces: the box of every DTensor it holds (``Shard`` and ``Replicate``
placements on any mesh; of replicas only the first writes) and, for plain tensors, which every
rank holds, only those assigned to it, so the work is spread over the ranks. One
``all_gather_object`` then tells every rank what every other wrote (or that it failed), and the
caller commits only when all succeeded. Reading computes the box each target tensor needs on
this rank and reads only the pieces that overlap it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from .. import dtypes
from .._format.validate import xxh3_hex
from .._io.atomic import atomic_file, write_all
from .._io.writer import write_plan
from .._plan import Plan, plan_save
from .._read.file import ArrayFile
from .._read.open import open_path
from .._tree import flatten
from ..adapters.torch import to_torch_dtype
from ..errors import SatchelError, StateMismatchError, UsageError
from .layout import (
    LAYOUT_FILE,
    Layout,
    Piece,
    TensorLayout,
    encode_layout,
    overlap,
    piece_file,
    piece_key,
    piece_path,
)

__all__ = [
    "ItemSink",
    "Pieces",
    "Written",
    "full_tensors",
    "read_into",
    "take_pieces",
    "write_item",
    "write_pieces",
]


@dataclass(frozen=True)
class Written:
    """A file of the item: its name, size and whole-file xxh3-64 (the commit record lists it)."""

    name: str
    size: int
    xxh3: str


class PoolPlacer(Protocol):
    """Where an incremental save puts this rank's pieces (SPEC 10.7): ``place`` reuses the
    pieces the newest step stored with the same bytes and writes the others into a new pool
    file; ``gathered`` hears, on every rank, what all ranks wrote and reused."""

    def place(
        self, mine: dict[str, torch.Tensor]
    ) -> tuple[dict[str, str], list[tuple[str, int, str]], list[str]]:
        """``(piece key -> layout file, new pool files (name, size, xxh3), reused files)``."""
        ...

    def gathered(self, written: list[tuple[str, int, str]], reused: set[str]) -> None: ...


@dataclass(frozen=True)
class _Box:
    shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    local: torch.Tensor  # this rank's part, shaped ``sizes``


def _is_tensor(x: object) -> bool:
    return isinstance(x, torch.Tensor)


def _box(x: torch.Tensor) -> _Box:
    """The part of ``x`` this rank holds, where it lies in the global tensor."""
    if isinstance(x, DTensor):
        if any(p.is_partial() for p in x.placements):
            raise UsageError(
                "a DTensor with a Partial placement holds unreduced values; redistribute it to "
                "Shard or Replicate before saving"
            )
        sizes, offsets = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
        return _Box(tuple(x.shape), tuple(offsets), tuple(sizes), x.to_local())
    shape = tuple(x.shape)
    return _Box(shape, (0,) * len(shape), shape, x)


def _writes(x: torch.Tensor, owner: int, rank: int) -> bool:
    """Whether this rank writes its box of ``x``: the first replica of a DTensor box; for a
    plain tensor (held whole by every rank) the rank it was assigned to."""
    if isinstance(x, DTensor):
        coord: list[int] = list(x.device_mesh.get_coordinate() or [])
        return all(coord[d] == 0 for d, p in enumerate(x.placements) if p.is_replicate())
    return owner == rank


def _owners(leaves: Sequence[Any], world: int) -> list[int]:
    """Plain tensors go to the least loaded rank, biggest first: every rank computes the same."""
    load = [0] * world
    owner = [0] * len(leaves)
    plain = [i for i, x in enumerate(leaves) if not isinstance(x, DTensor)]
    for i in sorted(plain, key=lambda i: -leaves[i].numel() * leaves[i].element_size()):
        r = min(range(world), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += leaves[i].numel() * leaves[i].element_size()
    return owner


@dataclass
class Pieces:
    """What this rank will write of one item, taken without any collective: the structure
    (the same on every rank), this rank's pieces and where they lie, or why it failed."""

    skeleton: Any = None
    names: tuple[str, ...] = ()
    metas: tuple[tuple[dtypes.DType, tuple[int, ...]], ...] = ()
    mine: dict[str, torch.Tensor] | None = None
    boxes: list[tuple[int, str, tuple[int, ...], tuple[int, ...]]] | None = None
    error: str | None = None


def take_pieces(state: Any, *, rank: int, world: int, copy: bool) -> Pieces:
    """This rank's pieces of ``state`` (SPEC 10.2); with ``copy`` they are host copies, so the
    caller may change its tensors at once (an async save stalls only for this)."""
    try:
        flat = flatten(state, is_leaf=_is_tensor)
        owners = _owners(flat.leaves, world)
        mine: dict[str, torch.Tensor] = {}
        boxes = []
        for i, (x, name) in enumerate(zip(flat.leaves, flat.names, strict=True)):
            box = _box(x)
            if not _writes(x, owners[i], rank) or math.prod(box.sizes) == 0:
                continue
            key = piece_key(name, box.offsets)
            local = box.local.detach()
            mine[key] = local.to("cpu", copy=True) if copy else local.cpu().contiguous()
            boxes.append((i, key, box.offsets, box.sizes))
        metas = tuple((_dtype(x), tuple(x.shape)) for x in flat.leaves)
        return Pieces(flat.skeleton, flat.names, metas, mine, boxes)
    except Exception as e:  # every rank must hear of it at the gather in write_pieces
        return Pieces(error=f"rank {rank}: {type(e).__name__}: {e}")


def write_item(state: Any, folder: Path, *, group: Any) -> list[Written]:
    """Collective: write this rank's pieces of ``state`` into ``folder`` and, on rank 0, the
    layout. Returns every file of the item (same list on every rank).

    Raises:
        SatchelError: this or another rank failed (every rank raises; nothing is committed).
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    return write_pieces(take_pieces(state, rank=rank, world=world, copy=False), folder, group=group)


class ItemSink(Protocol):
    """Where a rank's files of one item go: ``piece`` writes a pieces file from its plan and
    returns its size and xxh3-64; ``layout`` writes the layout (rank 0). A local folder by
    default (:class:`_Folder`); an object-store prefix in ``_checkpoint.remote_collective``."""

    def piece(self, name: str, plan: Plan) -> tuple[int, str]: ...

    def layout(self, raw: bytes) -> None: ...


class _Folder:
    """The item's local folder: files written atomically and fsynced."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def piece(self, name: str, plan: Plan) -> tuple[int, str]:
        out = write_plan(plan, self.folder / name, file_digest=True)
        return out.size, out.xxh3

    def layout(self, raw: bytes) -> None:
        with atomic_file(self.folder / LAYOUT_FILE) as fd:
            write_all(fd, raw)


def write_pieces(
    p: Pieces, folder: Path | ItemSink, *, group: Any, pool: PoolPlacer | None = None
) -> list[Written]:
    """Collective: write ``p`` (from :func:`take_pieces`), agree, and on rank 0 the layout.

    With ``pool`` (an incremental save) the pieces go to the root's pool instead of a
    ``pieces-<rank>.satchel`` file; the item's folder then holds the layout alone.
    ``folder`` is the item's local folder or an :class:`ItemSink` that writes elsewhere.
    """
    sink = _Folder(folder) if isinstance(folder, Path) else folder
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    report: dict[str, Any]
    if p.error is not None:
        report = {"ok": False, "error": p.error}
    else:
        try:
            files = []
            where: dict[str, str] = {}
            pooled: tuple[list[tuple[str, int, str]], list[str]] = ([], [])
            if p.mine and pool is not None:
                where, new_files, reused_files = pool.place(p.mine)
                pooled = (new_files, reused_files)
            elif p.mine:
                size, digest = sink.piece(piece_file(rank), plan_save(p.mine))
                files.append((piece_file(rank), size, digest))
            # Every rank must save the same structure: its digest travels with the report.
            shape = json.dumps([p.skeleton, p.names, [list(s) for _, s in p.metas]])
            report = {
                "ok": True,
                "files": files,
                "where": where,
                "pool": pooled,
                "boxes": p.boxes,
                "structure": xxh3_hex(shape.encode()),
            }
        except Exception as e:
            report = {"ok": False, "error": f"rank {rank}: {type(e).__name__}: {e}"}
    reports: list[Any] = [None] * world
    try:
        dist.all_gather_object(reports, report, group=group)
    except (RuntimeError, dist.DistError) as e:  # a rank died or hung: the group's timeout
        raise SatchelError(
            f"distributed save: rank {rank} got no answer from every rank ({e}); a rank died "
            "or hung, nothing was committed"
        ) from e
    failed = [r["error"] for r in reports if not r["ok"]]
    if not failed and len({r["structure"] for r in reports}) > 1:
        failed = ["the ranks passed different structures (names, shapes or values) to save"]
    if failed:
        raise SatchelError("distributed save failed, nothing committed: " + "; ".join(failed))
    pieces: list[list[Piece]] = [[] for _ in p.names]
    written: list[Written] = []
    new_pool: list[tuple[str, int, str]] = []
    reused: set[str] = set()
    for r, rep in enumerate(reports):
        for name, size, digest in rep["files"]:
            written.append(Written(name, size, digest))
        new_pool.extend(tuple(w) for w in rep["pool"][0])
        reused.update(rep["pool"][1])
        for i, key, offsets, sizes in rep["boxes"]:
            file = rep["where"].get(key, piece_file(r))
            pieces[i].append(Piece(file, key, tuple(offsets), tuple(sizes)))
    if pool is not None:
        pool.gathered(new_pool, reused)
    tensors = tuple(
        TensorLayout(name, dt, shape, tuple(pieces[i]))
        for i, (name, (dt, shape)) in enumerate(zip(p.names, p.metas, strict=True))
    )
    raw = encode_layout(Layout(p.skeleton, tensors, world))
    if rank == 0:
        sink.layout(raw)
    written.append(Written(LAYOUT_FILE, len(raw), xxh3_hex(raw)))
    return written


def _dtype(x: torch.Tensor) -> dtypes.DType:
    name = str(x.dtype).removeprefix("torch.")
    dt = dtypes.by_name(name)
    if dt is None:
        raise UsageError(f"cannot save a tensor of dtype {x.dtype}")
    return dt


def read_into(
    targets: Any,
    layout: Layout,
    folder: Path | str,
    *,
    prefix: str = "",
    open_piece: Callable[[str], ArrayFile] | None = None,
) -> list[str]:
    """Copy the saved tensors into ``targets`` (a nested state dict of tensors and DTensors,
    in place), reading on this rank only the pieces its boxes overlap. Returns the names
    copied. ``prefix`` is where ``targets`` sits in the saved structure (``state`` for an
    optimizer's ``state_dict()["state"]``). ``open_piece`` opens a piece's ``file`` where the
    item is not a local folder (``folder`` is then its URL, for messages).

    Raises:
        StateMismatchError: a target tensor is missing from the checkpoint or its global shape
            or dtype differs.
    """
    flat = flatten(targets, is_leaf=_is_tensor)
    saved = {t.name: t for t in layout.tensors}
    dot = f"{prefix}." if prefix else ""
    files: dict[str, ArrayFile] = {}
    done = []
    try:
        with torch.no_grad():
            for x, path in zip(flat.leaves, flat.names, strict=True):
                name = f"{dot}{path}" if path else prefix
                t = saved.get(name)
                if t is None:
                    raise StateMismatchError(f"{folder}: no saved tensor {name!r}", None)
                if t.shape != tuple(x.shape) or t.dtype.name != str(x.dtype).removeprefix("torch."):
                    raise StateMismatchError(
                        f"{folder}: {name!r} was saved as {t.dtype.name}{list(t.shape)}, the "
                        f"target is {x.dtype}{list(x.shape)}",
                        None,
                    )
                _fill(_box(x), t, folder, files, open_piece)
                done.append(name)
    finally:
        for f in files.values():
            f.close()
    return done


def _fill(
    box: _Box,
    t: TensorLayout,
    folder: Path | str,
    files: dict[str, ArrayFile],
    open_piece: Callable[[str], ArrayFile] | None = None,
) -> None:
    for p in t.pieces:
        hit = overlap(box.offsets, box.sizes, p.offsets, p.sizes)
        if hit is None:
            continue  # SPEC 10.4: a piece this rank does not need is never read
        lo, n = hit
        f = files.get(p.file)
        if f is None and open_piece is not None:
            f = files[p.file] = open_piece(p.file)
        elif f is None:
            assert isinstance(folder, Path)
            path = piece_path(folder, p.file, str(folder / LAYOUT_FILE))  # SPEC 10.7
            f = files[p.file] = open_path(path, framework="torch")
        piece = f[p.key]
        src = piece[
            tuple(slice(a - b, a - b + k) for a, b, k in zip(lo, p.offsets, n, strict=True))
        ]
        dst = box.local[
            tuple(slice(a - b, a - b + k) for a, b, k in zip(lo, box.offsets, n, strict=True))
        ]
        dst.copy_(src.to(dst.dtype))


def full_tensors(layout: Layout, folder: Path) -> list[torch.Tensor]:
    """Every saved tensor whole, assembled from its pieces (restore without a process group)."""
    files: dict[str, ArrayFile] = {}
    out = []
    try:
        for t in layout.tensors:
            whole = torch.empty(t.shape, dtype=to_torch_dtype(t.dtype))
            _fill(_Box(t.shape, (0,) * len(t.shape), t.shape, whole), t, folder, files)
            out.append(whole)
    finally:
        for f in files.values():
            f.close()
    return out
