"""How shards and their index are named, and what ``max_shard_size`` means (SPEC 9.1-9.2).

The names are the ones transformers' ``save_pretrained`` and huggingface_hub write:
``model-00001-of-00004.safetensors`` beside ``model.safetensors.index.json``. When those names
are taken by the checkpoint being replaced, the new shards carry a short tag
(``model-00001-of-00004-g3fa9.safetensors``) so the old checkpoint stays whole until the new
index replaces the old one (SPEC 9.3).
"""

from __future__ import annotations

import re
import secrets

from ..errors import UsageError

__all__ = [
    "SAFE_SUFFIX",
    "index_name",
    "is_shard_name",
    "parse_size",
    "safe_member",
    "shard_names",
]

SAFE_SUFFIX = ".safetensors"
_INDEX_SUFFIX = ".index.json"
# transformers' convert_file_size_to_int: decimal units (KB, MB, GB) and binary ones (KiB...).
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)\s*$", re.IGNORECASE)
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def parse_size(value: int | str) -> int:
    """``max_shard_size`` in bytes: an int, or ``"500MB"``/``"5GB"``/``"2GiB"`` as transformers
    spells it.

    Raises:
        UsageError: not a positive size.
    """
    if isinstance(value, bool):
        raise UsageError(f"max_shard_size={value!r}: expected bytes (int) or a string like '5GB'")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    else:
        raise UsageError(f"max_shard_size={value!r}: expected bytes (int) or a string like '5GB'")
    if n <= 0:
        raise UsageError(f"max_shard_size={value!r}: must be positive")
    return n


def check_prefix(prefix: str) -> str:
    """A shard prefix is a plain file-name stem (``model``, ``diffusion_pytorch_model``).

    Raises:
        UsageError: it would not make safe file names.
    """
    if not isinstance(prefix, str) or not _PREFIX.match(prefix) or ".." in prefix:
        raise UsageError(f"prefix={prefix!r}: expected a plain file-name stem such as 'model'")
    return prefix


def index_name(prefix: str) -> str:
    return f"{prefix}{SAFE_SUFFIX}{_INDEX_SUFFIX}"


def shard_names(prefix: str, count: int, *, taken: frozenset[str]) -> list[str]:
    """The names of ``count`` new shards: transformers' names unless any is in ``taken``."""
    plain = [f"{prefix}-{i:05d}-of-{count:05d}{SAFE_SUFFIX}" for i in range(1, count + 1)]
    if not taken.intersection(plain):
        return plain
    while True:
        tag = secrets.token_hex(2)
        tagged = [
            f"{prefix}-{i:05d}-of-{count:05d}-g{tag}{SAFE_SUFFIX}" for i in range(1, count + 1)
        ]
        if not taken.intersection(tagged):
            return tagged


def is_shard_name(name: str, prefix: str) -> bool:
    """Whether ``name`` is a shard this writer could have made for ``prefix``."""
    pattern = rf"{re.escape(prefix)}-\d{{5}}-of-\d{{5}}(-g[0-9a-f]{{4}})?{re.escape(SAFE_SUFFIX)}"
    return re.fullmatch(pattern, name) is not None


def safe_member(name: object) -> bool:
    """A plain file name inside the folder: no separators, no ``..``, nothing absolute."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and ":" not in name
    )
