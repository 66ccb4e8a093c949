"""The ``.metadata`` pickle of a DCP checkpoint, read without torch: docs/formats.md#dcp-metadata.

``torch.distributed.checkpoint``'s ``FileSystemWriter.finish`` pickles one ``Metadata``
dataclass (torch/distributed/checkpoint/metadata.py, filesystem.py). satchel runs that pickle in
its own interpreter with an allowlist of exactly the classes it holds; each becomes an inert
:class:`_Record` (its class name and pickled state) and nothing is imported or called. The
records are then checked field by field and turned into frozen :class:`TensorEntry` and
:class:`BytesEntry` values: what each state-dict entry is, where in the nested state dict it
goes, and which byte ranges of which ``.distcp`` files hold it.

Example::

    >>> entries = read_metadata(Path("ckpt/.metadata").read_bytes(), where="ckpt/.metadata")
    >>> entries[0].fqn, entries[0].size, len(entries[0].chunks)
    ('model.weight', (8, 4), 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import dtypes
from .._tree import MAX_DEPTH
from ..errors import FormatError, UnsafeContentError
from ._codecs.pickle import Buildable, Global, unpickle
from ._torch_pickle import ALLOWED, unwrap

__all__ = ["BytesEntry", "Chunk", "Entry", "Item", "TensorEntry", "read_metadata"]

_MAX_DIMS = 64
_MEM_FORMATS = (0, 1, 2)  # _MEM_FORMAT_ENCODING: contiguous, channels_last, preserve
_TRANSFORMS = ("stream.zstd/1",)  # torch/distributed/checkpoint/_extension.py's ZStandard


@dataclass(frozen=True)
class Item:
    """One byte range of a ``.distcp`` file: a ``torch.save`` archive, maybe zstd-compressed."""

    file: str  # a plain file name in the checkpoint folder
    offset: int
    length: int
    transforms: tuple[str, ...]  # decoding order, as torch applies them on load


@dataclass(frozen=True)
class Chunk:
    """The part ``[offsets, offsets + sizes)`` of a tensor, stored as one item."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    item: Item


@dataclass(frozen=True)
class TensorEntry:
    """A tensor of the state dict: dtype, global size and the chunks that tile it."""

    fqn: str
    path: tuple[str | int, ...]  # where it goes in the nested state dict (planner_data)
    dtype: dtypes.DType
    size: tuple[int, ...]
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class BytesEntry:
    """Any other value: ``torch.save`` of the object, stored as one item."""

    fqn: str
    path: tuple[str | int, ...]
    item: Item


Entry = TensorEntry | BytesEntry


# -- stand-ins -----------------------------------------------------------------------------------
# The fields each class may carry. Metadata and StorageMeta may gain fields in later torch
# releases without changing what the others mean, so unknown ones are ignored there; a new
# field of a chunk, tensor or storage record could change where the bytes are, so it is refused.
_FIELDS: dict[str, tuple[frozenset[str], bool]] = {
    "Metadata": (
        frozenset(
            {"state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"}
        ),
        True,
    ),
    "StorageMeta": (frozenset({"checkpoint_id", "save_id", "load_id", "modules"}), True),
    "TensorStorageMetadata": (frozenset({"properties", "size", "chunks"}), False),
    "BytesStorageMetadata": (frozenset(), False),
    "ChunkStorageMetadata": (frozenset({"offsets", "sizes"}), False),
    "TensorProperties": (
        frozenset({"dtype", "layout", "requires_grad", "memory_format", "pin_memory"}),
        False,
    ),
    "MetadataIndex": (frozenset({"fqn", "offset", "index"}), False),
    "_StorageInfo": (
        frozenset({"relative_path", "offset", "length", "transform_descriptors"}),
        False,
    ),
}
# TensorProperties.__getstate__ pickles a tuple in this order (metadata.py).
_PROPERTIES = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")


class _Record(Buildable):
    """An instance of one of DCP's metadata classes: the class name and its pickled state."""

    __slots__ = ("cls", "state")

    def __init__(self, cls: str) -> None:
        self.cls = cls
        self.state: dict[str, Any] | None = None

    def build(self, state: Any, *, where: str) -> None:
        if self.state is not None:
            raise UnsafeContentError(f"{where}: a second BUILD on a {self.cls} record")
        if self.cls == "TensorProperties" and isinstance(state, tuple):
            if len(state) != len(_PROPERTIES):
                raise FormatError(f"{where}: TensorProperties state has {len(state)} fields")
            state = dict(zip(_PROPERTIES, state, strict=True))
        fields, open_ended = _FIELDS[self.cls]
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise FormatError(f"{where}: {self.cls} state is not a dict of fields")
        unknown = sorted(set(state) - fields)
        if unknown and not open_ended:
            raise FormatError(
                f"{where}: {self.cls} has fields {unknown} that satchel does not know; "
                "a newer torch may have written it"
            )
        self.state = state

    def get(self, name: str, default: Any = None) -> Any:
        return (self.state or {}).get(name, default)


def _new(cls: str) -> Global:
    def new(*args: Any, where: str) -> _Record:
        if args:
            raise FormatError(f"{where}: {cls} is created with arguments")
        return _Record(cls)

    return Global(cls, new=new)


def _mem_format(value: Any, *, where: str) -> int:
    if isinstance(value, bool) or value not in _MEM_FORMATS:
        raise FormatError(f"{where}: memory format encoding {value!r} is not 0, 1 or 2")
    return int(value)


def _layout(name: Any, *, where: str) -> str:
    if not isinstance(name, str):
        raise FormatError(f"{where}: _get_layout takes a layout name")
    return name


def _path(*parts: Any, where: str) -> str:
    # StorageMeta.checkpoint_id: a pathlib path pickled as its parts; kept as text only.
    if not all(isinstance(p, str) for p in parts):
        raise FormatError(f"{where}: a pickled path holds something other than strings")
    return "/".join(parts).replace("//", "/")


def _allowlist() -> dict[tuple[str, str], Global]:
    meta = "torch.distributed.checkpoint.metadata"
    table = {(meta, cls): _new(cls) for cls in _FIELDS if cls != "_StorageInfo"}
    table["torch.distributed.checkpoint.filesystem", "_StorageInfo"] = _new("_StorageInfo")
    table[meta, "_MEM_FORMAT_ENCODING"] = Global("_MEM_FORMAT_ENCODING", call=_mem_format)
    # torch < 2.2 pickled TensorProperties from its ShardedTensor home.
    old = "torch.distributed._shard.sharded_tensor.metadata"
    table[old, "TensorProperties"] = table[meta, "TensorProperties"]
    table[old, "MEM_FORMAT_ENCODING"] = table[meta, "_MEM_FORMAT_ENCODING"]
    table["torch.serialization", "_get_layout"] = Global("_get_layout", call=_layout)
    table["torch", "Size"] = ALLOWED["torch", "Size"]
    for key, g in ALLOWED.items():
        if key[0] == "torch" and isinstance(g.value, dtypes.DType):
            table[key] = g
    # Python 3.13 moved the path classes to pathlib._local (and pickles name that module).
    for module in ("pathlib", "pathlib._local"):
        for cls in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
            table[module, cls] = Global(f"pathlib.{cls}", call=_path)
    return table


ALLOWED_METADATA = _allowlist()


# -- from records to entries ---------------------------------------------------------------------
def read_metadata(data: bytes | memoryview, *, where: str) -> list[TensorEntry | BytesEntry]:
    """The entries of a DCP ``.metadata`` pickle, in its ``state_dict_metadata`` order.

    Raises:
        UnsafeContentError: a global outside the allowlist (names it), a refused opcode.
        FormatError: a malformed pickle or record, a chunk without a storage record, a storage
            record no entry uses, a file name that is not a plain name.
    """
    root = unpickle(data, where=where, allowed=ALLOWED_METADATA, leaves=(_Record,)).value
    if not isinstance(root, _Record) or root.cls != "Metadata" or root.state is None:
        raise FormatError(f"{where}: the pickle holds no torch.distributed.checkpoint Metadata")
    sdm = root.get("state_dict_metadata")
    if not isinstance(sdm, dict) or not all(isinstance(k, str) for k in sdm):
        raise FormatError(f"{where}: state_dict_metadata is not a dict keyed by name")
    planner = root.get("planner_data")
    if planner is not None and not isinstance(planner, dict):
        raise FormatError(f"{where}: planner_data is a {type(planner).__name__}, not a dict")
    storage = _storage_data(root.get("storage_data"), where)
    used: set[tuple[str, tuple[int, ...] | None]] = set()

    def item_of(fqn: str, offsets: tuple[int, ...] | None) -> Item:
        key = (fqn, offsets)
        if key not in storage:
            at = "" if offsets is None else f" chunk at {list(offsets)}"
            raise FormatError(f"{where}: {fqn!r}{at} has no storage record")
        used.add(key)
        return storage[key]

    out: list[TensorEntry | BytesEntry] = []
    for fqn, rec in sdm.items():
        path = _nest_path(planner.get(fqn) if planner else None, fqn, len(sdm), where)
        if isinstance(rec, _Record) and rec.cls == "BytesStorageMetadata":
            out.append(BytesEntry(fqn, path, item_of(fqn, None)))
        elif isinstance(rec, _Record) and rec.cls == "TensorStorageMetadata":
            dtype, size, chunks = _tensor(rec, f"{where}: {fqn!r}")
            placed = tuple(Chunk(o, s, item_of(fqn, o)) for o, s in chunks)
            out.append(TensorEntry(fqn, path, dtype, size, placed))
        else:
            raise FormatError(f"{where}: {fqn!r} is described by {type(rec).__name__}")
    extra = sorted(str(k) for k in set(storage) - used)
    if extra:
        raise FormatError(
            f"{where}: storage records {', '.join(extra[:3])} belong to no entry; the "
            "metadata is damaged or mixes two saves"
        )
    return out


def _storage_data(value: Any, where: str) -> dict[tuple[str, tuple[int, ...] | None], Item]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: storage_data is not a dict of storage records")
    out: dict[tuple[str, tuple[int, ...] | None], Item] = {}
    for index, info in value.items():
        if not (isinstance(index, _Record) and index.cls == "MetadataIndex"):
            raise FormatError(f"{where}: storage_data key is not a MetadataIndex")
        fqn, offset = index.get("fqn"), index.get("offset")
        if not isinstance(fqn, str):
            raise FormatError(f"{where}: MetadataIndex fqn {fqn!r} is not a string")
        offsets = None if offset is None else _ints(offset, f"{where}: {fqn!r} offset")
        key = (fqn, offsets)
        if key in out:  # torch compares indexes by (fqn, offset): one would hide the other
            raise FormatError(f"{where}: two storage records for {fqn!r} at {offset!r}")
        out[key] = _item(info, f"{where}: storage record of {fqn!r}")
    return out


def _item(info: Any, where: str) -> Item:
    if not (isinstance(info, _Record) and info.cls == "_StorageInfo"):
        raise FormatError(f"{where} is not a _StorageInfo")
    name, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(c in name for c in "/\\\x00")
        or (len(name) > 1 and name[1] == ":")
    ):
        # docs/formats.md#hostile-containers rule Z7: a plain name in the checkpoint's folder.
        raise FormatError(f"{where}: relative_path {name!r} is not a plain file name")
    for field, v in (("offset", offset), ("length", length)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
            raise FormatError(f"{where}: {field} {v!r} is not a byte count")
    descriptors = info.get("transform_descriptors") or ()
    if not isinstance(descriptors, list | tuple) or not all(
        isinstance(d, str) for d in descriptors
    ):
        raise FormatError(f"{where}: transform_descriptors is not a list of names")
    for d in descriptors:
        if d not in _TRANSFORMS:
            raise FormatError(
                f"{where}: stream transform {d!r} is unknown; satchel decodes "
                f"{', '.join(_TRANSFORMS)} only"
            )
    return Item(name, offset, length, tuple(descriptors))


def _tensor(
    rec: _Record, where: str
) -> tuple[dtypes.DType, tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    props = rec.get("properties")
    if not (isinstance(props, _Record) and props.cls == "TensorProperties"):
        raise FormatError(f"{where}: tensor properties are missing")
    dtype = unwrap(props.get("dtype"))
    if not isinstance(dtype, dtypes.DType):
        raise FormatError(f"{where}: dtype {dtype!r} is not a torch dtype satchel reads")
    layout = props.get("layout", "torch.strided")
    if layout != "torch.strided":
        raise FormatError(f"{where}: layout {layout!r}; satchel reads dense (strided) tensors")
    size = _ints(rec.get("size"), f"{where}: size")
    chunks = rec.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        raise FormatError(f"{where}: chunks is not a non-empty list")
    out = []
    for c in chunks:
        if not (isinstance(c, _Record) and c.cls == "ChunkStorageMetadata"):
            raise FormatError(f"{where}: a chunk is not a ChunkStorageMetadata")
        offsets = _ints(c.get("offsets"), f"{where}: chunk offsets")
        sizes = _ints(c.get("sizes"), f"{where}: chunk sizes")
        if len(offsets) != len(size) or len(sizes) != len(size):
            raise FormatError(
                f"{where}: chunk at {list(offsets)} of {list(sizes)} does not have the "
                f"tensor's {len(size)} dimensions"
            )
        out.append((offsets, sizes))
    return dtype, size, out


def _ints(value: Any, where: str) -> tuple[int, ...]:
    """A torch.Size (a tuple after the interpreter) of non-negative 63-bit ints (rule N3)."""
    if not isinstance(value, tuple) or len(value) > _MAX_DIMS:
        raise FormatError(f"{where}: {value!r} is not a torch.Size of at most {_MAX_DIMS} dims")
    for n in value:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**63:
            raise FormatError(f"{where}: {value!r} holds {n!r}, not a size")
    return value


def _nest_path(path: Any, fqn: str, n: int, where: str) -> tuple[str | int, ...]:
    """Where ``fqn`` goes in the nested state dict: planner_data's object path, else ``fqn``.

    Integer steps index lists; each is below the number of entries (a list holds at most one
    slot per entry), so a hostile index allocates nothing big.
    """
    if path is None:
        return (fqn,)
    if not isinstance(path, tuple) or not 1 <= len(path) <= MAX_DEPTH:
        raise FormatError(f"{where}: planner_data path of {fqn!r} is not a tuple of 1 to 64 keys")
    for step in path:
        if isinstance(step, bool) or not isinstance(step, str | int):
            raise FormatError(f"{where}: planner_data path of {fqn!r} holds {step!r}")
        if isinstance(step, int) and not 0 <= step < n:
            raise FormatError(f"{where}: planner_data path of {fqn!r} has list index {step}")
    return path
