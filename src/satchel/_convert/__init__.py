"""``satchel.convert``: any readable format to satchel, ``.npz``, OneFlow folders or torch zips.

Reading goes through ``satchel.load`` (every reader of ``satchel.formats``); the writers of the
other formats are the modules beside this one: ``torch_zip``, ``oneflow``, ``npz``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._api import load, save
from .._progress import ProgressArg
from .._read.file import ArrayFile
from .._remote.url import StorageOptions, is_url
from .._tree import iter_leaves
from ..errors import UnsupportedObjectError, UsageError
from .npz import npz_arrays, write_npz
from .oneflow import write_oneflow
from .torch_zip import write_torch

__all__ = ["Target", "convert"]

Target = Literal["satchel", "safetensors", "npz", "oneflow", "torch"]
_TARGETS = ("satchel", "safetensors", "npz", "oneflow", "torch")


def convert(
    src: str | os.PathLike[str] | ArrayFile,
    dst: str | os.PathLike[str],
    *,
    to: Target = "satchel",
    verify: bool = True,
    progress: ProgressArg = None,
    max_shard_size: int | str | None = None,
    storage_options: StorageOptions = None,
) -> str:
    """Read ``src`` in whatever format it is and write it to ``dst`` as ``to``; returns ``to``.

    ``src`` is a path, or a file already opened with :func:`satchel.open` (its own ``verify``
    and ``framework`` then apply; open it with ``framework="numpy"`` for the usual result).

    ``satchel`` (= ``safetensors``: every satchel file is one) keeps the whole structure; with
    ``max_shard_size`` ``dst`` is a folder of shards in the Hugging Face layout (SPEC 9), so
    ``.bin`` shards become safetensors shards without unpickling anything.
    ``npz`` and ``oneflow`` hold flat name -> array maps (nested names joined with ``/`` and
    ``.``); ``torch`` writes a zip that ``torch.load(weights_only=True)`` reads, no torch needed.
    Every write is atomic. Nothing from ``src`` is ever executed.

    ``src`` and ``dst`` may be URLs (``s3://bucket/key``, SPEC 11; ``storage_options`` serve
    both); a URL ``dst`` takes ``to="satchel"`` (the other writers make local files).

    Raises:
        UsageError: unknown ``to``.
        SatchelError: ``src`` is unreadable or holds something ``to`` cannot represent.
        SatchelOSError: writing ``dst`` failed (``DiskFullError``...); an old ``dst`` is intact.
    """
    if to not in _TARGETS:
        raise UsageError(f"to={to!r}: expected one of {', '.join(_TARGETS)}")
    remote_dst = is_url(dst)
    if remote_dst and to not in ("satchel", "safetensors"):
        raise UsageError(f"{dst}: to={to!r} writes a local file; convert to a local path first")
    if max_shard_size is not None and to not in ("satchel", "safetensors"):
        raise UsageError(f"max_shard_size applies to to='satchel' only, not to={to!r}")
    if isinstance(src, ArrayFile):  # already open (the CLI reads its format first): read once
        obj = src.load(progress=progress)
    else:
        src_options = storage_options if is_url(src) else None
        obj = load(
            src, framework="numpy", verify=verify, progress=progress, storage_options=src_options
        )
    if remote_dst:
        save(
            obj,
            str(dst),
            progress=progress,
            max_shard_size=max_shard_size,
            storage_options=storage_options,
        )
        return to
    out = Path(dst)
    if to in ("satchel", "safetensors"):
        save(obj, out, progress=progress, max_shard_size=max_shard_size)
    elif to == "torch":
        write_torch(obj, out)
    else:
        leaves = iter_leaves(obj, where=str(src))
        if to == "npz":
            write_npz(npz_arrays(leaves), out)
        else:
            write_oneflow(_arrays_only(leaves, str(src)), out)
    return to


def _arrays_only(leaves: list[tuple[tuple[str, ...], Any]], where: str) -> dict[str, Any]:
    out = {}
    for path, value in leaves:
        if not isinstance(value, np.ndarray):
            raise UnsupportedObjectError(
                f"{where}: {'.'.join(path)!r} is a {type(value).__name__}; the OneFlow layout "
                "holds tensors only"
            )
        name = ".".join(path) or "tensor"
        if name in out:
            raise UnsupportedObjectError(
                f"{where}: two tensors map to the OneFlow variable {name!r} (a key containing '.' "
                "clashes with a nested one); rename one first"
            )
        out[name] = value
    return out
