"""Writing OneFlow's folder-per-variable layout: ``<var>/meta`` + ``<var>/out``, ``snapshot_done``.

The folder is built under a temporary name, every file fsynced, ``snapshot_done`` written last,
then renamed into place (docs/formats.md#oneflow-snapshot).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from .._io.atomic import TMP_MARKER, fsync_dir, write_all
from ..errors import UnsupportedObjectError
from ..formats.oneflow import DATA_TYPES

__all__ = ["write_oneflow"]

_TEXT = {name: text for text, name in DATA_TYPES.values()}


def write_oneflow(arrays: dict[str, np.ndarray[Any, Any]], path: Path) -> None:
    """Write ``name -> array`` as a OneFlow snapshot folder at ``path`` (replacing it)."""
    for name in arrays:
        if (
            not name
            or "/" in name
            or "\x00" in name
            or name in (".", "..", "snapshot_done")
            or len(name.encode("utf-8")) > 255
        ):
            raise UnsupportedObjectError(
                f"{name[:80]!r} cannot be a OneFlow variable folder name (no '/', NUL, and at "
                "most 255 bytes)"
            )
    tmp = path.parent / f".{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
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
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old{TMP_MARKER}{secrets.token_hex(4)}"
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
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
