"""Orbax (JAX) checkpoints without JAX, Orbax or tensorstore: docs/formats.md#orbax.

``StandardCheckpointer.save(dir, pytree)`` (and ``PyTreeCheckpointer``) writes a folder:

* ``_METADATA``: JSON; ``tree_metadata`` maps each leaf's key path to ``key_metadata`` (the
  path as ``[{"key": name, "key_type": 1 sequence | 2 dict}, ...]``) and ``value_metadata``
  (``value_type``: ``jax.Array``, ``np.ndarray``, ``scalar``, or an empty ``Dict``/``List``/
  ``Tuple``/``None``). The stringified tuple keys are never evaluated: the lists are the truth.
* ``manifest.ocdbt`` and ``d/``, ``ocdbt.process_N/``: a tensorstore OCDBT database
  (:mod:`._codecs.ocdbt`) in which each array is a zarr array named by its key path joined
  with ``.`` (:mod:`._codecs.zarr`).
* ``_CHECKPOINT_METADATA``, ``_sharding``, ``array_metadatas/``, ``commit_success.txt``:
  bookkeeping this reader does not need.

:func:`read` returns what ``StandardCheckpointer().restore(dir)`` returns with no target: nested
dicts (and lists for sequence keys) in ``_METADATA`` order, arrays as NumPy arrays with the
stored dtype and shape, scalars as Python numbers. zstd needs the optional ``zstandard`` package
(``pip install satchel[orbax]``).

Example::

    >>> ck = satchel.load("ckpt")  # the folder holding manifest.ocdbt and _METADATA
    >>> ck["params"]["dense0"]["kernel"].shape
    (20, 256)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._format.header import json_object
from .._tree import MAX_DEPTH
from ..errors import FormatError
from ._codecs.ocdbt import MANIFEST, MANIFEST_MAGIC, Store, open_store, read_capped
from ._codecs.zarr import read_array
from ._reader import Probe

__all__ = ["read", "sniff"]

METADATA = "_METADATA"
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
_MAX_METADATA = 64 << 20
_MAX_LEAVES = 1_000_000
_SEQUENCE, _DICT = 1, 2
_ARRAY_TYPES = ("jax.Array", "np.ndarray")
_EMPTY: dict[str, Any] = {"Dict": dict, "List": list, "Tuple": tuple, "None": lambda: None}


def _metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA
    where = str(path)
    if not path.is_file():
        raise FormatError(
            f"{folder}: has no {METADATA}; an Orbax checkpoint without it (written before "
            "Orbax 0.5) is not supported"
        )
    raw = read_capped(path, _MAX_METADATA, what="tree metadata")
    meta = json_object(raw, where=where, what="Orbax metadata")
    if not meta.get("use_ocdbt", True):
        raise FormatError(f"{where}: use_ocdbt is false; only OCDBT checkpoints are supported")
    tree = meta.get("tree_metadata")
    if not isinstance(tree, dict):
        raise FormatError(f"{where}: 'tree_metadata' must be an object")
    if len(tree) > _MAX_LEAVES:
        raise FormatError(f"{where}: more than {_MAX_LEAVES} leaves")
    return tree


def _path(entry: Any, where: str) -> list[tuple[int, str]]:
    """The leaf's key path from its ``key_metadata`` list: (key type, key) pairs."""
    keys = entry.get("key_metadata") if isinstance(entry, dict) else None
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_DEPTH:
        raise FormatError(f"{where}: key_metadata must list 1 to {MAX_DEPTH} keys")
    out = []
    for k in keys:
        if not isinstance(k, dict) or not isinstance(k.get("key"), str):
            raise FormatError(f"{where}: key_metadata entry {k!r} has no string 'key'")
        kind = k.get("key_type")
        if kind not in (_SEQUENCE, _DICT) or isinstance(kind, bool):
            raise FormatError(f"{where}: key_type {kind!r} is not 1 (sequence) or 2 (dict)")
        if kind == _SEQUENCE and not (k["key"].isdigit() and k["key"].isascii()):
            raise FormatError(f"{where}: sequence key {k['key']!r} is not an index")
        out.append((kind, k["key"]))
    return out


def _leaf(store: Store, entry: dict[str, Any], name: str, where: str) -> Any:
    value = entry.get("value_metadata")
    kind = value.get("value_type") if isinstance(value, dict) else None
    if isinstance(value, dict) and value.get("skip_deserialize"):
        raise FormatError(f"{where}: leaf {name!r} is marked skip_deserialize (not supported)")
    if kind in _EMPTY:
        return _EMPTY[kind]()
    if kind in _ARRAY_TYPES:
        return read_array(store, name, where=where)
    if kind == "scalar":
        arr = read_array(store, name, where=where)
        if arr.shape != ():
            raise FormatError(f"{where}: scalar {name!r} is stored with shape {arr.shape}")
        return arr.item()
    raise FormatError(
        f"{where}: leaf {name!r} has value_type {kind!r}; satchel reads arrays, scalars and "
        "empty containers of Orbax checkpoints"
    )


def _insert(root: dict[Any, Any], path: list[tuple[int, str]], value: Any, where: str) -> None:
    """Place ``value`` at ``path`` in a tree of dicts (sequences become lists at the end)."""
    node = root
    for i, (_, key) in enumerate(path):
        last = i == len(path) - 1
        slot = (path[i][0], key)
        if last:
            if slot in node:
                raise FormatError(f"{where}: two leaves share the key path {path!r}")
            node[slot] = value
        else:
            child = node.setdefault(slot, {})
            if not isinstance(child, dict):
                raise FormatError(f"{where}: key path {path!r} runs through a leaf")
            node = child


def _build(node: dict[tuple[int, str], Any], where: str) -> Any:
    kinds = {kind for kind, _ in node}
    if kinds == {_SEQUENCE}:
        items = sorted(((int(k), v) for (_, k), v in node.items()), key=lambda kv: kv[0])
        if [i for i, _ in items] != list(range(len(items))):
            raise FormatError(f"{where}: sequence indices {[i for i, _ in items]} have gaps")
        return [_build(v, where) if isinstance(v, dict) and _is_tree(v) else v for _, v in items]
    if len(kinds) > 1:
        raise FormatError(f"{where}: one container mixes sequence and dict keys")
    return {k: _build(v, where) if isinstance(v, dict) and _is_tree(v) else v
            for (_, k), v in node.items()}  # fmt: skip


def _is_tree(d: dict[Any, Any]) -> bool:
    # Internal nodes are dicts keyed by (kind, key) tuples; restored {} leaves are empty.
    return bool(d) and all(isinstance(k, tuple) for k in d)


def read(path: Path, *, verify: bool = True) -> dict[str, Any] | list[Any]:
    """The pytree of the Orbax checkpoint folder ``path`` (see the module docstring).

    Raises:
        FormatError: damaged metadata, OCDBT store or zarr array, or a leaf kind satchel
            does not read (named with its key path).
        IntegrityError: an OCDBT manifest or node fails its CRC-32C (``verify=True``).
        FrameworkNotAvailableError: the store is zstd-compressed and ``zstandard`` is missing.
    """
    folder = Path(path)
    tree = _metadata(folder)
    where = str(folder)
    store = open_store(folder, verify=verify)
    root: dict[Any, Any] = {}
    for entry in tree.values():
        keys = _path(entry, f"{where}/{METADATA}")
        name = ".".join(k for _, k in keys)
        _insert(root, keys, _leaf(store, entry, name, where), where)
    if not root:
        return {}
    return _build(root, where)  # type: ignore[no-any-return]


def _has_manifest(folder: Path) -> bool:
    try:
        with (folder / MANIFEST).open("rb") as f:
            return f.read(4) == MANIFEST_MAGIC.to_bytes(4, "big")
    except OSError:
        return False


def sniff(probe: Probe) -> bool:
    """A folder with an OCDBT ``manifest.ocdbt`` and ``_METADATA`` or ``_CHECKPOINT_METADATA``."""
    if not probe.is_dir:
        return False  # Orbax checkpoints are folders; a file is never one
    folder = probe.path
    has_meta = (folder / METADATA).is_file() or (folder / CHECKPOINT_METADATA).is_file()
    return has_meta and _has_manifest(folder)
