"""The core API: ``save``, ``load`` and ``open`` (SPEC 1-7); every read goes through ``_read``."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._gcpause import paused_gc
from ._io.oserror import os_errors
from ._io.writer import write_plan
from ._plan import header_len, plan_save
from ._progress import ProgressArg, reporter
from ._read.file import ArrayFile
from ._read.materialize import FrameworkName
from ._read.open import open_path
from ._remote.url import StorageOptions, is_url
from ._remote.writer import save_url
from ._shards.writer import save_sharded
from .adapters import is_keras
from .errors import SatchelFileNotFoundError, UsageError
from .formats.detect import detect

__all__ = ["detect", "load", "open", "save"]


def save(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressArg = None,
    max_shard_size: int | str | None = None,
    prefix: str = "model",
    storage_options: StorageOptions = None,
) -> None:
    """Save a tensor or any nesting of dict/list/tuple/plain values and arrays to ``path``.

    With ``max_shard_size`` (bytes, or ``"500MB"``/``"5GB"`` as transformers spells it) ``path``
    is a folder in the Hugging Face layout: ``<prefix>-00001-of-0000N.safetensors`` shards and
    ``<prefix>.safetensors.index.json``, written so a crash leaves the old checkpoint or the new
    one, never a mix (SPEC 9). Other files in the folder are left alone.

    The file is a valid safetensors file; satchel's manifest in its metadata restores the exact
    structure, dtypes, shared tensors and views. The write is atomic: a failure at any point
    leaves the previous file untouched and no temp file behind. ``progress=True`` draws a bar
    on stderr (when it is a terminal); a callable receives ``(bytes_done, bytes_total)``.

    ``path`` may be a URL (``s3://bucket/key``, ``gs://...``, any fsspec URL; SPEC 11) with
    ``storage_options`` for fsspec (``endpoint_url``, credentials...): the object is uploaded
    in parallel parts and replaces the old one whole, or the old one stays.

    Raises:
        UnsupportedObjectError: ``obj`` holds something satchel cannot store (nothing written).
        SatchelFileNotFoundError: the destination folder does not exist.
        SatchelOSError: the disk refused the write, as the subclass for its errno
            (``DiskFullError``, ``SatchelPermissionError``...); the previous file is intact.

    Example::

        >>> import numpy as np, satchel, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x")
        >>> satchel.save({"w": np.arange(3)}, p); satchel.load(p)["w"].tolist()
        [0, 1, 2]
    """
    obj, module = _unwrap_module(obj)
    if is_url(path):
        save_url(
            obj,
            str(path),
            storage_options=storage_options,
            metadata=metadata,
            module=module,
            max_shard_size=max_shard_size,
            prefix=prefix,
            progress=progress,
        )
        return
    _local_only(path, storage_options)
    target = Path(path)
    if max_shard_size is not None:
        save_sharded(
            obj,
            target,
            max_shard_size=max_shard_size,
            prefix=prefix,
            metadata=metadata,
            module=module,
            progress=progress,
        )
        return
    with paused_gc():  # planning builds most of satchel's objects; the write builds few
        plan = plan_save(obj, metadata=metadata, module=module)
    with os_errors(target, "write"):  # a folder one may not enter: SatchelPermissionError
        folder_exists = target.parent.is_dir()
    if not folder_exists:
        raise SatchelFileNotFoundError(f"{target}: folder {target.parent} does not exist")
    # header_len renders the header once more: only worth it when progress is shown.
    size = header_len(plan) + plan.data_len if progress else 0
    report = reporter(progress, size, f"saving {target.name}") if progress else None
    write_plan(plan, target, progress=report)


def _local_only(path: str | os.PathLike[str], storage_options: StorageOptions) -> None:
    if storage_options:
        raise UsageError(f"{path}: storage_options apply to URLs (s3://...), not to local paths")


def _unwrap_module(obj: Any) -> tuple[Any, str | None]:
    """An ``nn.Module`` is saved as its state dict plus its class's import path.

    The path is information for people and tools; satchel never imports or calls it. The
    architecture stays in code: build the model, then ``load_state`` into it. A Keras model
    (or optimizer) is saved as its variables by their stable names (``adapters/keras.py``).
    """
    if is_keras(obj):
        from .adapters import keras as keras_adapter

        cls = type(obj)
        return keras_adapter.state(obj), f"{cls.__module__}.{cls.__qualname__}"
    if "torch" not in sys.modules:
        return obj, None
    import torch

    if isinstance(obj, torch.nn.Module):
        cls = type(obj)
        return obj.state_dict(), f"{cls.__module__}.{cls.__qualname__}"
    return obj, None


def load(
    path: str | os.PathLike[str],
    *,
    framework: FrameworkName = "auto",
    device: Any = None,
    dtype: Any = None,
    mmap: bool = True,
    verify: bool = True,
    progress: ProgressArg = None,
    storage_options: StorageOptions = None,
) -> Any:
    """Load what ``save`` wrote (or any safetensors file, as a flat dict of NumPy arrays).

    ``framework="auto"`` gives each array the framework it was saved from; ``"numpy"``,
    ``"torch"`` or ``"tensorflow"`` force one. ``dtype`` casts floating arrays, ``device``
    places torch and TensorFlow tensors.
    With ``mmap=True`` arrays are views of a private copy-on-write mapping of the file (no copy,
    writes never reach the file). With ``verify=True`` every stored tensor is checked against
    its xxh3-64 checksum before anything is returned. ``progress`` is as for :func:`save`
    (it follows checksum verification, the part of a load that reads the bytes). A URL is
    fetched with parallel ranged reads, configured by ``storage_options`` (SPEC 11).

    Raises:
        SatchelFileNotFoundError: no such file.
        FormatError: the file breaks a SPEC rule (names the field).
        IntegrityError: a tensor's bytes do not match their checksum (names the tensor).
        FrameworkNotAvailableError: the file holds torch tensors and torch is not installed.
    """
    with (
        paused_gc(),
        open_path(
            path,
            framework=framework,
            device=device,
            dtype=dtype,
            mmap=mmap,
            verify=verify,
            storage_options=storage_options,
            whole=True,
        ) as f,
    ):
        return f.load(progress=progress)


def open(
    path: str | os.PathLike[str],
    *,
    framework: FrameworkName = "auto",
    device: Any = None,
    dtype: Any = None,
    mmap: bool = True,
    verify: bool = True,
    storage_options: StorageOptions = None,
) -> ArrayFile:
    """Open ``path`` lazily: the header is validated now, each tensor read when first used.

    Checksums are verified on first access of each stored tensor. Closing the file keeps
    arrays already returned valid (they hold the mapping); reading more after close raises.
    A URL's header comes in one ranged request and each tensor in its own, large ones in
    parallel parts; ``storage_options`` go to fsspec (SPEC 11).
    """
    with paused_gc():
        return open_path(
            path,
            framework=framework,
            device=device,
            dtype=dtype,
            mmap=mmap,
            verify=verify,
            storage_options=storage_options,
        )
