"""The pre-1.6 ``torch.save`` stream: pickles, then raw storages (docs/formats.md#torch-legacy).

magic, protocol and sys_info pickles; the object pickle, whose storages are persistent ids
``('storage', type, key, location, numel, view)``; the sorted key list; then per key an int64
element count and the bytes. Storages are declared with their size while the object pickle is
interpreted and filled afterwards, each checked against its declaration.

The five pickles follow each other exactly: each ends at its STOP and the next starts there,
the key list must name exactly the storages the object declared, and the last storage must end
at the end of the file, so no byte goes unread (rule P6).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .._read.refs import ArrayRef, Storage
from ..errors import FormatError, UnsafeContentError
from ._codecs.pickle import Global, unpickle
from ._torch_pickle import (
    ALLOWED_UNWRAPPED,
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    StorageType,
    TorchStorage,
    byteswap,
    unwrap,
)

__all__ = ["read_legacy"]


def read_legacy(data: np.ndarray[Any, np.dtype[np.uint8]], *, where: str) -> Any:
    """The object a pre-1.6 ``torch.save`` stream holds (docs/formats.md#torch-legacy).

    Raises:
        FormatError: wrong magic, protocol, storage table or truncated storage data.
    """
    buf = data.data
    no_globals: dict[tuple[str, str], Global] = {}
    magic = unpickle(buf, where=where, allowed=no_globals, trailing=True)
    if magic.value != LEGACY_MAGIC:
        raise FormatError(f"{where}: not a legacy torch file (magic number mismatch)")
    proto = unpickle(buf, where=where, allowed=no_globals, start=magic.end, trailing=True)
    if proto.value != LEGACY_PROTOCOL:
        raise FormatError(f"{where}: legacy torch protocol {proto.value!r} is not 1001")
    info = unpickle(buf, where=where, allowed=no_globals, start=proto.end, trailing=True)
    if not isinstance(info.value, dict):
        raise FormatError(f"{where}: legacy sys_info is not a dict")
    little = info.value.get("little_endian", True)
    declared: dict[str, TorchStorage] = {}

    def persistent_load(pid: Any) -> TorchStorage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            if isinstance(pid, tuple) and pid and pid[0] == "module":
                raise UnsafeContentError(
                    f"{where}: the file pickles a whole nn.Module (source code included); "
                    "satchel reads tensors only. Save model.state_dict() instead"
                )
            raise UnsafeContentError(f"{where}: persistent id {str(pid)[:60]} is not a storage")
        _, stype, key, _location, numel, view = pid
        stype = unwrap(stype)
        if not isinstance(stype, StorageType) or not isinstance(key, str):
            raise FormatError(f"{where}: storage id {str(pid)[:60]} is malformed")
        if view is not None:
            raise FormatError(f"{where}: storage views of very old torch files are not supported")
        if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel < 2**48:
            raise FormatError(f"{where}: storage {key!r} declares {numel!r} elements")
        if key not in declared:
            pending = Storage(None, key, nbytes=numel * stype.dtype.itemsize)
            declared[key] = TorchStorage(pending, stype.dtype)
        return declared[key]

    obj = unpickle(
        buf,
        where=where,
        allowed=ALLOWED_UNWRAPPED,
        persistent_load=persistent_load,
        start=info.end,
        trailing=True,
        leaves=(ArrayRef,),
    )
    keys = unpickle(buf, where=where, allowed=no_globals, start=obj.end, trailing=True)
    if not isinstance(keys.value, list) or set(keys.value) != set(declared):
        raise FormatError(f"{where}: legacy storage key list does not match the storages used")
    pos = keys.end
    for key in keys.value:
        st = declared[key]
        if pos + 8 > len(buf):
            raise FormatError(f"{where}: truncated before storage {key!r}")
        (numel,) = struct.unpack_from("<q", buf, pos)
        nbytes = numel * st.dtype.itemsize
        if nbytes != st.storage.nbytes:
            raise FormatError(
                f"{where}: storage {key!r} holds {numel} elements, its id declared "
                f"{st.storage.nbytes // st.dtype.itemsize}"
            )
        pos += 8
        if pos + nbytes > len(buf):
            raise FormatError(f"{where}: storage {key!r} is truncated (file ends early)")
        raw = data[pos : pos + nbytes]
        st.storage.fill(raw if little else byteswap(raw, st.dtype))
        pos += nbytes
    if pos != len(buf):
        raise FormatError(f"{where}: {len(buf) - pos} unexplained bytes after the last storage")
    return obj.value
