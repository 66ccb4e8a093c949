"""The names of a checkpoint root's pool of shared tensor bytes (SPEC 8.17-8.18).

An incremental save (``CheckpointManager(..., incremental=True)``) writes the tensors it did
not find in the previous step into new *pool files* in the root's folder ``blobs/``; each
step's item is then an index whose ``weight_map`` names, for every stored tensor, a *pool
reference* ``pool:<pool file>:<key>`` instead of a shard in the item's folder::

    runs/exp1/blobs/00000012-3fa9b2c1-00001.safetensors      a pool file (sections 1-7)
    runs/exp1/step_00000013/model/model.safetensors.index.json
        "weight_map": {"fc.weight": "pool:00000012-3fa9b2c1-00001.safetensors:fc.weight"}

The only way out of an item's folder is this one: a pool file name matching
:data:`POOL_FILE` exactly (no separator, no ``..``, never hidden), resolved in the folder
``blobs`` of the root the step belongs to, never through a link. A reader that predates pool
references refuses them as it refuses any weight_map value that is not a plain file name
(SPEC 9.5), so no old reader ever reads a pooled item wrongly.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..errors import FormatError

__all__ = [
    "POOL_DIR",
    "is_pool_file",
    "is_ref",
    "parse_ref",
    "pool_file_name",
    "pool_ref",
    "resolve",
    "root_of_item",
]

POOL_DIR = "blobs"  # SPEC 8.17: the root's pool folder
_REF_PREFIX = "pool:"
# <step>-<8 hex, one per item per save>-<part>.safetensors: no separators, no dots but the
# suffix's, never a temp name (SPEC 7.1's start with a dot).
_POOL_FILE = re.compile(r"^\d{8,19}-[0-9a-f]{8}-\d{5}\.safetensors$")
_MAX_KEY = 10_000  # a tensor name inside a pool file; longer is damage


def pool_file_name(step: int, token: str, part: int) -> str:
    """``00000012-3fa9b2c1-00001.safetensors``: pool file ``part`` (1-based) of one item of
    one save, ``token`` 8 lowercase hex digits drawn for that item."""
    name = f"{step:08d}-{token}-{part:05d}.safetensors"
    assert _POOL_FILE.match(name), name
    return name


def is_pool_file(name: object) -> bool:
    """Whether ``name`` is exactly a pool file's name (SPEC 8.17)."""
    return isinstance(name, str) and _POOL_FILE.match(name) is not None


def pool_ref(file: str, key: str) -> str:
    """The weight_map value naming tensor ``key`` of pool file ``file``."""
    return f"{_REF_PREFIX}{file}:{key}"


def is_ref(value: object) -> bool:
    """Whether a weight_map value is meant as a pool reference (valid or not)."""
    return isinstance(value, str) and value.startswith(_REF_PREFIX)


def parse_ref(value: str) -> tuple[str, str] | None:
    """``(pool file, key)`` of a pool reference, or ``None`` when it is not a valid one."""
    if not value.startswith(_REF_PREFIX):
        return None
    file, sep, key = value[len(_REF_PREFIX) :].partition(":")
    if not sep or not is_pool_file(file) or not 0 < len(key) <= _MAX_KEY or "\0" in key:
        return None
    return file, key


def root_of_item(item_folder: Path) -> Path:
    """The checkpoint root whose pool an item folder ``<root>/<step folder>/<item>`` may
    reference: two levels up, by name (the step folder itself is never followed as a link by
    the manager's readers, SPEC 8.12)."""
    return item_folder.absolute().parent.parent


def resolve(item_folder: Path, file: str, where: str) -> Path:
    """The path of pool file ``file`` referenced from ``item_folder``: in the folder ``blobs``
    of the root the item's step folder is in, a folder and a regular file, neither a link.

    Raises:
        FormatError: the item is not in a step folder of a root, or the pool folder or file
            is missing, a link or not what it must be (naming ``where`` and the file).
    """
    blobs = root_of_item(item_folder) / POOL_DIR
    for path, kind, test in (
        (blobs, "a folder", stat.S_ISDIR),
        (blobs / file, "a file", stat.S_ISREG),
    ):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError as e:
            raise FormatError(
                f"{where}: references pool file {file}, but {path} does not exist (an "
                "incremental checkpoint's step reads only inside the root that holds its pool)",
                path=where,
                field=file,
            ) from e
        if not test(mode):
            raise FormatError(
                f"{where}: {path} is not {kind} (a link is never followed); pool file {file} "
                "cannot be read",
                path=where,
                field=file,
            )
    return blobs / file
