"""PyTorch ``torch.save`` files without torch: the zip archive and the legacy pickle stream.

Layouts: docs/formats.md#torch (the legacy stream reader is in ``torch_legacy``, the
allowlist both share in ``_torch_pickle``). The pickle goes through satchel's interpreter; storages
become :class:`~satchel._read.refs.Storage` slices of the mapped file, so tensors that shared a
storage in torch share memory here too.

Every zip member carries a CRC-32 that ``torch.load`` never checks (a flipped bit in a tensor
loads as a changed value). With ``verify=True`` satchel checks each one: the records at read
time, each storage the first time its bytes are used (a full load checks all of them, ``open``
only those it touches; zlib's CRC-32 runs at several GB/s, a small cost next to reading the
bytes).
"""

from __future__ import annotations

import zipfile
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._read.refs import ArrayRef, Storage
from ..errors import FormatError, IntegrityError, UnsafeContentError
from ._codecs.pickle import unpickle
from ._codecs.source import map_file
from ._codecs.zip import central_names, read_member, zip_members
from ._reader import Probe
from ._torch_pickle import (
    ALLOWED_UNWRAPPED,
    LEGACY_MAGIC,
    StorageType,
    TorchStorage,
    byteswap,
    unwrap,
)
from .torch_legacy import read_legacy

__all__ = ["read", "read_zip", "sniff"]

U8Array = np.ndarray[Any, np.dtype[np.uint8]]

_EXPECTED_RECORDS = frozenset(
    {
        "data.pkl", ".format_version", ".storage_alignment", "byteorder", "version",
        ".data/version", ".data/serialization_id",
    }
)  # fmt: skip


def _check_crc(where: str, member: str, crc: int, raw: U8Array) -> None:
    """The verify-on-first-touch hook of a stored member: its bytes against its CRC-32."""
    if zlib.crc32(raw.data) != crc:
        raise IntegrityError(
            f"{where}: zip member {member!r} fails its CRC-32 check: its "
            "bytes changed after torch wrote them (bit rot or tampering); restore the "
            "file from a good copy, or pass verify=False to read the changed values",
            path=where,
            field=member,
            reason="CRC-32 mismatch",
        )


# -- zip archives -------------------------------------------------------------------------------
def read_zip(data: U8Array, *, where: str, verify: bool = True) -> Any:
    """The object a zip-format ``torch.save`` file holds, tensors as ArrayRefs.

    Raises:
        UnsafeContentError: a TorchScript archive or a global outside the allowlist.
        IntegrityError: a record fails its CRC-32 (``verify``; storages fail when first used).
        FormatError: a damaged archive, a storage whose size disagrees with its record.
    """
    members = zip_members(data, where=where)
    names = list(members)
    # docs/formats.md#torch-zip: the prefix is the first entry's folder, whatever its file name.
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    if any(n.startswith(prefix) and n[len(prefix) :] in ("constants.pkl",) for n in names) or any(
        n[len(prefix) :].startswith("code/") for n in names
    ):
        raise UnsafeContentError(
            f"{where}: is a TorchScript archive (it contains code); satchel reads tensors only. "
            "Load it with torch.jit.load in a trusted environment and save its state_dict"
        )
    pkl = members.get(f"{prefix}data.pkl")
    if pkl is None:
        raise FormatError(f"{where}: zip archive has no {prefix}data.pkl; not a torch.save file")
    big_endian = False
    if f"{prefix}byteorder" in members:
        record = members[f"{prefix}byteorder"]
        if record.size > len("little"):  # before inflating it
            raise FormatError(f"{where}: byteorder record of {record.size} bytes")
        order = bytes(read_member(data, record, where=where, check_crc=verify))
        if order not in (b"little", b"big"):
            raise FormatError(f"{where}: byteorder record says {order[:16]!r}")
        big_endian = order == b"big"
    storages: dict[str, TorchStorage] = {}

    def persistent_load(pid: Any) -> TorchStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeContentError(f"{where}: persistent id {str(pid)[:60]} is not a storage")
        _, stype, key, _location, numel = pid
        stype = unwrap(stype)
        if not isinstance(stype, StorageType) or not isinstance(key, str):
            raise FormatError(f"{where}: storage id {str(pid)[:60]} is malformed")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise FormatError(f"{where}: storage {key!r} declares {numel!r} elements")
        if key in storages:
            return storages[key]
        member = members.get(f"{prefix}data/{key}")
        if member is None:
            raise FormatError(f"{where}: storage {key!r} has no record {prefix}data/{key}")
        nbytes = numel * stype.dtype.itemsize
        if member.size != nbytes:
            # CVE-2026-24747: never trust the declared count over the bytes present.
            raise FormatError(
                f"{where}: storage {key!r} declares {numel} elements ({nbytes} bytes) but its "
                f"record holds {member.size} bytes"
            )
        raw = read_member(data, member, where=where, check_crc=verify and big_endian)
        if big_endian:  # swapping reads every byte: check the CRC now, then swap once
            storage = Storage(byteswap(raw, stype.dtype), key)
        elif verify and member.method == zipfile.ZIP_STORED:
            check = partial(_check_crc, where, member.name, member.crc)
            storage = Storage(raw, key, check=check)
        else:  # deflated members were checked while inflating
            storage = Storage(raw, key)
        storages[key] = TorchStorage(storage, stype.dtype)
        return storages[key]

    pickle_bytes = read_member(data, pkl, where=where, check_crc=verify)
    result = unpickle(
        pickle_bytes.data,
        where=where,
        allowed=ALLOWED_UNWRAPPED,
        persistent_load=persistent_load,
        leaves=(ArrayRef,),
    )
    # Rule Z1 (docs/formats.md): every member must be one torch writes and this load used; a
    # hidden extra member (a second pickle, a payload for another tool) fails the load.
    used = {f"{prefix}data/{k}" for k in storages}
    for name in members:
        rest = name[len(prefix) :] if name.startswith(prefix) else None
        if name not in used and rest not in _EXPECTED_RECORDS:
            raise FormatError(
                f"{where}: zip member {name!r} is not a record torch writes (or is a storage "
                "no tensor uses); refusing the archive"
            )
    return result.value


# -- the reader -----------------------------------------------------------------------------------
_TORCH_RECORDS = ("data.pkl", "version", ".data/version", "constants.pkl", "byteorder")


def _record(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def sniff(probe: Probe) -> bool:
    """A torch zip (any member order) or a legacy stream starting with the magic.

    A zip whose first member is a torch record is one at once; otherwise its central directory
    is read for a top-level ``data.pkl`` (``torch.jit.save(..., _extra_files=...)`` writes
    ``extra/`` first).
    """
    head = probe.head
    if probe.is_dir:
        return False
    if head[:4] == b"PK\x03\x04" and len(head) >= 30:
        name_len = int.from_bytes(head[26:28], "little")
        rest = _record(head[30 : 30 + name_len].decode("utf-8", "replace"))
        if rest in _TORCH_RECORDS or rest.startswith(("code/", "data/")):
            return True
        names = central_names(probe.path)
        return names is not None and any(_record(n) == "data.pkl" for n in names)
    return _legacy(head)


def _legacy(head: bytes) -> bool:
    return head[:4] == b"\x80\x02\x8a\x0a" and int.from_bytes(head[4:14], "little") == LEGACY_MAGIC


def read(path: Path, *, verify: bool = True) -> Any:
    """Read a ``torch.save`` file of either generation (tensors as ArrayRefs)."""
    data = map_file(path)
    where = str(path)
    if _legacy(bytes(data[:14])):
        return read_legacy(data, where=where)
    return read_zip(data, where=where, verify=verify)
