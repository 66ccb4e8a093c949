"""Writing ``.npz`` (NumPy's zip of ``.npy`` members) atomically, without pickle.

Each leaf's key path becomes a member name, so a tensor name is a path inside a zip: it must be
a safe relative member name (docs/formats.md rule Z3, the rule satchel's zip reader applies),
or whoever unzips the file gets ``../../evil.npy``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io.atomic import atomic_file
from ..errors import UnsupportedObjectError
from ..formats._codecs.zip import name_problem

__all__ = ["npz_arrays", "write_npz"]


def npz_arrays(leaves: list[tuple[tuple[str, ...], Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """Member name ('/'-joined key path) -> array, for what ``.npz`` can hold.

    Numbers, booleans and strings become 0-d arrays; bfloat16/float8 are widened to float32
    (exactly: NumPy's own ``.npy`` has no name for them). Anything else is refused.

    Raises:
        UnsupportedObjectError: a value ``.npz`` cannot hold, two values with one member name,
            or a name that is not a safe relative member name (absolute, ``..``, ``//``, a
            backslash, NUL or a drive letter).
    """
    out: dict[str, np.ndarray[Any, Any]] = {}
    for path, value in leaves:
        name = "/".join(path) or "arr_0"
        problem = name_problem(name, writing=True)
        if problem is not None:
            raise UnsupportedObjectError(
                f"tensor {name!r} cannot be an .npz member name: it {problem}, and unzipping "
                "the file would write outside its folder or fail; rename it first"
            )
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
