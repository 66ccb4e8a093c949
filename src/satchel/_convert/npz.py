"""Writing ``.npz`` (NumPy's zip of ``.npy`` members) atomically, without pickle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io.atomic import atomic_file
from ..errors import UnsupportedObjectError

__all__ = ["npz_arrays", "write_npz"]


def npz_arrays(leaves: list[tuple[tuple[str, ...], Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """Member name ('/'-joined key path) -> array, for what ``.npz`` can hold.

    Numbers, booleans and strings become 0-d arrays; bfloat16/float8 are widened to float32
    (exactly: NumPy's own ``.npy`` has no name for them). Anything else is refused.
    """
    out: dict[str, np.ndarray[Any, Any]] = {}
    for path, value in leaves:
        name = "/".join(path) or "arr_0"
        if isinstance(value, np.ndarray | np.generic | bool | int | float | complex | str | bytes):
            arr = np.asarray(value)
        else:
            raise UnsupportedObjectError(
                f"cannot store {type(value).__name__} at {name!r} in .npz (arrays, numbers "
                "and strings only); convert to satchel's format to keep everything"
            )
        if arr.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            arr = arr.astype(np.float32)
        if arr.dtype.kind == "O":
            raise UnsupportedObjectError(f"{name!r}: object arrays would need pickle")
        if name in out:
            raise UnsupportedObjectError(
                f"two values map to the .npz member {name!r} (a key containing '/' clashes with "
                "a nested one); rename one or convert to satchel's format"
            )
        out[name] = arr
    return out


def write_npz(arrays: dict[str, np.ndarray[Any, Any]], path: Path) -> None:
    """``np.savez`` into a temp file, fsync, rename (``allow_pickle`` is never needed)."""
    with atomic_file(path) as fd, os.fdopen(os.dup(fd), "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
        f.flush()
