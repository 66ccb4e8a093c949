"""Keras files without Keras: ``.keras`` zips, Keras 3 ``.weights.h5`` and legacy Keras 2 ``.h5``.

Layouts: docs/formats.md#keras. HDF5 is read through ``h5py``, an optional dependency used only here
and only when an HDF5 file is read (``pip install satchel[keras]``); nothing else from Keras is
needed, and nothing a file names is ever imported or called: ``config.json``, ``metadata.json``
and the ``model_config``/``training_config`` attributes are JSON *data* (docs/formats.md rule P11).

:func:`read` returns

* for an HDF5 file (Keras 3 weights or legacy model): nested dicts mirroring the HDF5 groups, in
  h5py's (name) order, datasets as NumPy arrays (a dataset tagged ``dtype="bfloat16"`` comes
  back as bfloat16, as Keras loads it; string datasets as ``bytes`` or nested lists of
  ``bytes``; an empty dataspace as ``None``). Attributes (``layer_names``, ``weight_names``,
  ``model_config`` ...) are not in the tree: :func:`attributes` lists them per HDF5 path.
* for a ``.keras`` zip: ``{member name: value}`` in archive order; ``*.json`` members parsed,
  ``model.weights.h5`` as the tree above, other members (``assets/``) as ``bytes``. A
  ``model.weights.npz`` member is refused: Keras stores its variables there as pickles.

HDF5 itself is the unsafe part (docs/formats.md rule Z8): links to other files, virtual and
external-storage datasets and filter plugins are refused before any data is read, and a
dataset may not declare more bytes than its storage can hold (a fill-value bomb). The HDF5 C
library still parses the file; run untrusted HDF5 in a separate process if a crash matters.
HDF5 keeps no checksum of contiguous data, so bit rot in an ``.h5`` file goes unnoticed
(a ``.keras`` zip's CRC-32s are checked).

Example::

    >>> w = satchel.load("mlp.weights.h5")
    >>> w["layers"]["dense"]["vars"]["0"].shape
    (20, 256)
    >>> attributes("mlp_legacy.h5")["/model_weights"]["layer_names"]
    ['dense', 'dense_1']
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .._tree import MAX_DEPTH
from ..errors import FormatError, FrameworkNotAvailableError, SatchelError, UnsafeContentError
from ._codecs.source import map_file
from ._codecs.zip import read_member, zip_members
from ._reader import Probe

__all__ = ["HDF5_MAGIC", "attributes", "read", "sniff"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SUPERBLOCK_AT = (0, 512, 1024, 2048)  # HDF5 allows a user block before the superblock
_KERAS_MEMBERS = ("metadata.json", "config.json", "model.weights.h5", "model.weights.npz")
_MAX_JSON = 64 << 20
_MAX_OBJECTS = 1_000_000
# Filters built into HDF5 or registered by h5py itself; anything else would load a plugin.
_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset",
            32000: "lzf"}  # fmt: skip
_MAX_RATIO = 1100  # deflate cannot expand data more than ~1032:1


def _h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as e:
        raise FrameworkNotAvailableError(
            "reading HDF5 (Keras .h5 / .weights.h5 / .keras) needs h5py: "
            "pip install satchel[keras] (or pip install h5py)"
        ) from e


# -- HDF5 ---------------------------------------------------------------------------------------
class _Walk:
    """One pass over an HDF5 file: values by object address, attributes by HDF5 path."""

    def __init__(self, h5: Any, where: str, *, want_attrs: bool) -> None:
        self.h5, self.where, self.want_attrs = h5, where, want_attrs
        self.done: dict[tuple[int, int], Any] = {}
        self.attrs: dict[str, dict[str, Any]] = {}
        self.tree: dict[str, Any] = {}
        self.count = 0

    def address(self, obj: Any) -> tuple[int, int]:
        info = self.h5.h5o.get_info(obj.id)
        return int(info.fileno), int(info.addr)

    def group(self, g: Any, ancestors: tuple[tuple[int, int], ...]) -> dict[str, Any]:
        if len(ancestors) > MAX_DEPTH:
            raise FormatError(f"{self.where}: groups nested deeper than {MAX_DEPTH} levels")
        self.note_attrs(g)
        out: dict[str, Any] = {}
        for name in g:
            self.count += 1
            if self.count > _MAX_OBJECTS:
                raise FormatError(f"{self.where}: more than {_MAX_OBJECTS} HDF5 objects")
            path = f"{g.name.rstrip('/')}/{name}"
            link = g.get(name, getlink=True)
            if isinstance(link, self.h5.ExternalLink):
                raise UnsafeContentError(
                    f"{self.where}: {path} links to another file ({link.filename!r}); "
                    "satchel reads nothing outside the file it was given"
                )
            if not isinstance(link, self.h5.HardLink):
                raise FormatError(f"{self.where}: {path} is a soft link; satchel reads hard links")
            obj = g[name]
            addr = self.address(obj)
            if addr in ancestors:
                raise FormatError(f"{self.where}: {path} links back to one of its parents")
            if addr not in self.done:
                if isinstance(obj, self.h5.Group):
                    self.done[addr] = self.group(obj, (*ancestors, addr))
                elif isinstance(obj, self.h5.Dataset):
                    self.done[addr] = self.dataset(obj, path)
                else:
                    continue  # a committed datatype: a type definition, no data
            out[name] = self.done[addr]
        return out

    def note_attrs(self, obj: Any) -> None:
        if self.want_attrs:
            self.attrs[obj.name] = {k: _plain(obj.attrs[k]) for k in obj.attrs}

    def dataset(self, ds: Any, path: str) -> Any:
        self.note_attrs(ds)
        what = f"{self.where}: dataset {path}"
        if ds.is_virtual or ds.external:
            raise UnsafeContentError(f"{what} maps data from other files; satchel refuses it")
        plist = ds.id.get_create_plist()
        filters = [int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters())]
        unknown = [f for f in filters if f not in _FILTERS]
        if unknown:
            raise UnsafeContentError(
                f"{what} needs HDF5 filter {unknown[0]}, a plugin; satchel loads no plugins"
            )
        dt = ds.dtype
        is_text = dt.kind == "S" or self.h5.check_string_dtype(dt) is not None
        bf16 = _attr_text(ds, "dtype") == "bfloat16"
        if not is_text and (
            dt.fields is not None
            or dt.subdtype is not None
            or dt.kind not in ("biufcV" if bf16 else "biufc")
        ):
            raise FormatError(f"{what} has HDF5 type {dt}; satchel reads numbers and strings")
        if ds.shape is None:
            return None  # an empty (null) dataspace holds no value
        nbytes = math.prod(ds.shape) * dt.itemsize
        storage = int(ds.id.get_storage_size())
        cap = storage * _MAX_RATIO + 4096 if filters else storage
        if nbytes > cap:
            raise FormatError(
                f"{what} declares {nbytes} bytes but its file storage holds {storage}; "
                "refusing to allocate it"
            )
        value = np.asarray(ds[()])
        if is_text:
            return _texts(value)
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("="))
        return _bfloat16(value, what) if bf16 else value


def _bfloat16(value: np.ndarray[Any, Any], what: str) -> np.ndarray[Any, Any]:
    """Keras stores bfloat16 variables as raw 2-byte values tagged ``dtype="bfloat16"``."""
    if value.dtype.itemsize == 2 and value.dtype.kind in "Vui":
        out: np.ndarray[Any, Any] = np.ascontiguousarray(value).view(ml_dtypes.bfloat16)
        return out
    if value.dtype.kind == "f":
        return value.astype(ml_dtypes.bfloat16)
    raise FormatError(f"{what} is tagged bfloat16 but holds {value.dtype} values")


def _attr_text(obj: Any, name: str) -> str | None:
    if name not in obj.attrs:
        return None
    v = obj.attrs[name]
    v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return v if isinstance(v, str) else None


def _texts(value: np.ndarray[Any, Any]) -> Any:
    def one(x: Any) -> bytes:
        return x.encode("utf-8") if isinstance(x, str) else bytes(x)

    def nest(x: Any) -> Any:
        return [nest(y) for y in x] if isinstance(x, list) else one(x)

    return nest(value.tolist())


def _plain(v: Any) -> Any:
    """An attribute as plain data: str (bytes that are not UTF-8 stay bytes), numbers, lists."""
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()] if v.dtype.kind in "OSU" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _walk_h5(source: Any, where: str, *, want_attrs: bool) -> _Walk:
    h5 = _h5py()
    walk = _Walk(h5, where, want_attrs=want_attrs)
    try:
        with h5.File(source, "r", locking=False) as f:
            walk.tree = walk.group(f, (walk.address(f),))
    except SatchelError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
        raise FormatError(f"{where}: not a readable HDF5 file ({e})") from e
    return walk


# -- .keras zip ---------------------------------------------------------------------------------
def _read_zip(path: Path, *, verify: bool, want_attrs: bool) -> tuple[dict[str, Any], _Walk | None]:
    where = str(path)
    data = map_file(path)
    out: dict[str, Any] = {}
    walk = None
    for name, member in zip_members(data, where=where).items():
        if name.endswith("/"):
            continue  # a folder entry
        if name.endswith(".npz"):
            raise UnsafeContentError(
                f"{where}: member {name} holds the weights as pickled dicts (Keras' npz weights "
                "format); satchel never unpickles. Re-save the model with the default H5 weights"
            )
        if name.endswith(".json") and member.size > _MAX_JSON:  # before inflating it
            raise FormatError(
                f"{where}: {name}: {member.size} bytes of JSON is more than {_MAX_JSON}"
            )
        raw = read_member(data, member, where=where, check_crc=verify)
        if name.endswith(".json"):
            out[name] = _json(raw, where=f"{where}: {name}")
        elif name.endswith(".h5"):
            if bytes(raw[:8]) != HDF5_MAGIC:
                raise FormatError(f"{where}: member {name} is not an HDF5 file")
            walk = _walk_h5(io.BytesIO(raw.tobytes()), f"{where}: {name}", want_attrs=want_attrs)
            out[name] = walk.tree
        else:
            out[name] = raw.tobytes()
    return out, walk


def _json(raw: np.ndarray[Any, np.dtype[np.uint8]], *, where: str) -> Any:
    if raw.size > _MAX_JSON:
        raise FormatError(f"{where}: {raw.size} bytes of JSON is more than {_MAX_JSON}")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise FormatError(f"{where}: a JSON object repeats a key")
        return out

    try:
        return json.loads(raw.tobytes().decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, SatchelError):
            raise
        raise FormatError(f"{where}: not valid UTF-8 JSON ({e})") from e


# -- public -------------------------------------------------------------------------------------
def _is_hdf5(head: bytes) -> bool:
    return any(head[at : at + 8] == HDF5_MAGIC for at in _SUPERBLOCK_AT)


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4096)


def attributes(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """HDF5 path -> that group's or dataset's attributes, as plain data.

    For a ``.keras`` zip, the attributes of its ``model.weights.h5``. Legacy files keep their
    load order here (``/model_weights`` -> ``layer_names``, each layer -> ``weight_names``)
    and the model's JSON in ``/`` -> ``model_config``.

    Raises:
        FrameworkNotAvailableError: h5py is not installed. FormatError: a damaged file.
    """
    p = Path(path)
    if _is_hdf5(_head(p)):
        return _walk_h5(p, str(p), want_attrs=True).attrs
    _, walk = _read_zip(p, verify=True, want_attrs=True)
    return walk.attrs if walk is not None else {}


def sniff(probe: Probe) -> bool:
    """HDF5 magic, or a zip whose first member is one that ``model.save`` writes."""
    head = probe.head
    if probe.is_dir:
        return False
    if _is_hdf5(head):
        return True
    if head[:4] != b"PK\x03\x04" or len(head) < 30:
        return False
    first = head[30 : 30 + int.from_bytes(head[26:28], "little")]
    return first.decode("utf-8", "replace") in _KERAS_MEMBERS


def read(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The tree of a Keras file (see the module docstring); ``verify`` checks zip CRCs.

    Raises:
        FrameworkNotAvailableError: the file is HDF5 and h5py is not installed.
        UnsafeContentError: links or datasets reaching other files, filter plugins, npz weights.
        FormatError: a damaged zip, JSON or HDF5 file.
    """
    p = Path(path)
    if _is_hdf5(_head(p)):
        return _walk_h5(p, str(p), want_attrs=False).tree
    return _read_zip(p, verify=verify, want_attrs=False)[0]
