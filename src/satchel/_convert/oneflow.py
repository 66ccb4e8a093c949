"""Writing OneFlow's folder-per-variable layout: ``<var>/meta`` + ``<var>/out``, ``snapshot_done``.

The folder is built under a temporary name, every file fsynced, ``snapshot_done`` written last,
then renamed into place (docs/formats.md#oneflow-snapshot).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from .._io.atomic import fsync_dir, replace_folder, temp_path, write_all
from .._io.oserror import os_errors
from ..errors import UnsupportedObjectError
from ..formats._codecs.zip import name_problem
from ..formats.oneflow import DATA_TYPES

__all__ = ["write_oneflow"]

_TEXT = {name: text for text, name in DATA_TYPES.values()}


def write_oneflow(arrays: dict[str, np.ndarray[Any, Any]], path: Path) -> None:
    """Write ``name -> array`` as a OneFlow snapshot folder at ``path`` (replacing it)."""
    for name in arrays:
        # One safe path component (the rule the .npz writer and zip reader share, rule Z3).
        if (
            "/" in name
            or name_problem(name, writing=True) is not None
            or name == "snapshot_done"
            or len(name.encode("utf-8")) > 255
        ):
            raise UnsupportedObjectError(
                f"{name[:80]!r} cannot be a OneFlow variable folder name (one path component: "
                "no '/', backslash, NUL, drive letter, '.' or '..'; at most 255 bytes)"
            )
    with os_errors(path, "write"):  # a full disk is a DiskFullError naming ``path``
        _write_folder(arrays, path)


def _write_folder(arrays: dict[str, np.ndarray[Any, Any]], path: Path) -> None:
    tmp = temp_path(path.parent)  # short: any name the file system allows works for ``path``
    os.mkdir(tmp)
    try:
        for name, arr in arrays.items():
            dt = dtypes.by_numpy(arr.dtype)
            if dt is None or dt.name not in _TEXT:
                raise UnsupportedObjectError(f"{name!r}: dtype {arr.dtype} has no OneFlow type")
            var = tmp / name
            os.mkdir(var)
            dims = "".join(f"  dim: {n}\n" for n in arr.shape)
            meta = f"shape {{\n{dims}}}\ndata_type: {_TEXT[dt.name]}\n".encode("ascii")
            _write(var / "meta", meta)
            _write(var / "out", np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
            fsync_dir(var)
        _write(tmp / "snapshot_done", b"")
        fsync_dir(tmp)
        replace_folder(tmp, path)  # an existing folder is put back if the new one cannot move in
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise


def _write(path: Path, data: bytes | memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
