"""Any path to an :class:`ArrayFile`: detect the format, run its reader, wrap the tree.

The single entry of the read pipeline: ``load``, ``open``, ``verify``, ``convert``,
``load_state`` and the commands all come through here, so each reads a file once. A URL
(``s3://bucket/key``, any fsspec URL) is one more kind of storage: ``_remote.reader`` builds
the same :class:`Tree` over ranged reads (SPEC 11).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._io.reader import open_native
from .._remote.reader import read_url
from .._remote.url import StorageOptions, is_url
from ..errors import FormatError, UsageError
from ..formats import registry
from ..formats.detect import describe_unknown, sniffed
from .file import ArrayFile
from .materialize import FrameworkName
from .native import native_tree, read_native
from .refs import Tree

__all__ = ["open_path"]

# Foreign formats whose reader checks the bytes against the format's own checksums.
_CHECKSUMMED = frozenset({"tensorflow", "torch"})


def open_path(
    path: str | os.PathLike[str],
    *,
    framework: FrameworkName = "auto",
    device: Any = None,
    dtype: Any = None,
    mmap: bool = True,
    verify: bool = True,
    storage_options: StorageOptions = None,
    whole: bool = False,
) -> ArrayFile:
    """Open ``path`` in whatever format it is; no tensor data is read yet.

    A URL is read from its store with ``storage_options``; ``whole`` fetches all of its data
    now, in parallel (``load`` and ``verify`` read every byte anyway).

    Raises:
        SatchelFileNotFoundError: no such file.
        FormatError: no reader recognises it, or the one that does finds a broken field.
    """
    if is_url(path):
        url = str(path)
        tree = read_url(url, storage_options=storage_options, verify=verify, whole=whole)
        return ArrayFile(tree, path=url, framework=framework, device=device, dtype=dtype)
    if storage_options:
        raise UsageError(f"{path}: storage_options apply to URLs (s3://...), not to local paths")
    try:
        return _open(path, framework, device, dtype, mmap, verify)
    except FormatError as e:
        if e.path is None:
            e.path = str(path)  # readers deep in a format may not know the path they serve
        raise


def _open(  # noqa: PLR0917 - private: open_path passes its own keywords through
    path: str | os.PathLike[str],
    framework: FrameworkName,
    device: Any,
    dtype: Any,
    mmap: bool,
    verify: bool,
) -> ArrayFile:
    # Detection asks first whether the file is shaped like safetensors: when it is, the file
    # is opened once, for that question and the header both.
    opened = open_native(path, mmap=mmap)
    if opened is not None:
        tree = native_tree(opened, verify=verify)
        return ArrayFile(tree, path=str(path), framework=framework, device=device, dtype=dtype)
    fmt = sniffed(path, refine=False)
    if fmt in (None, "satchel", "safetensors"):
        # A path no foreign reader recognises goes to the native reader, whose errors name the
        # exact field that is wrong (a bare "unknown format" would hide that).
        try:
            tree = read_native(path, mmap=mmap, verify=verify)
        except FormatError as e:
            if fmt is None:
                unknown = describe_unknown(path)  # what the bytes look like, unless safetensors
                if unknown is not None:
                    reason = "format not recognised"
                    raise FormatError(unknown, path=str(path), reason=reason) from e
                raise type(e)(
                    f"{e} (and no other format satchel reads matches it)",
                    path=e.path,
                    field=e.field,
                    reason=e.reason,
                ) from e
            raise
    else:
        root = registry.reader(fmt).read(Path(path), verify=verify)
        if isinstance(root, Tree):  # a reader that knows its metadata and checksums says so
            tree = root
        else:
            tree = Tree(root, fmt, {"format": fmt}, checksummed=verify and fmt in _CHECKSUMMED)
    return ArrayFile(tree, path=str(path), framework=framework, device=device, dtype=dtype)
