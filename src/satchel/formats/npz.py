"""NumPy ``.npz`` archives: a zip of ``<key>.npy`` members, stored or deflated.

Layout: docs/formats.md#npz (``np.savez`` stores, ``np.savez_compressed`` deflates; MXNet
2.0 and Keras ``.weights.npz`` write the same). The zip is validated by ``_codecs.zip`` (safe
names, no overlaps, declared sizes within deflate's 1032:1); every member must be a ``.npy``
(rule Z1: no unlisted members) and is read by :func:`satchel.formats.numpy.read_npy`. Before a
member is inflated, its ``.npy`` header (the first 10 KiB at most) is parsed and the size the
zip declares must equal that header plus the array bytes it declares (rule Z5): a member that is
not a ``.npy`` at all (safetensors' ``numpy_dos``, 5 GB of zeros) is refused after a few KiB.
The result is what ``np.load(path)`` offers: a dict from key (member name without ``.npy``) to
array, in archive order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FormatError
from ._codecs.source import map_file
from ._codecs.zip import member_head, read_member, zip_members
from ._reader import Probe
from .numpy import HEAD_SIZE, image_size, read_npy

__all__ = ["read", "sniff"]

_SUFFIX = ".npy"


def sniff(probe: Probe) -> bool:
    """A zip whose first member's name ends in ``.npy`` (torch and keras zips never do).

    An empty zip (only its end record, what ``np.savez(path)`` writes) is an empty ``.npz``.
    """
    head = probe.head
    if probe.is_dir:
        return False
    if head[:4] == b"PK\x05\x06":
        return True
    if head[:4] != b"PK\x03\x04" or len(head) < 30:
        return False
    name_len = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + name_len].endswith(_SUFFIX.encode())


def read(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """``{key: array}`` for every member, in archive order (arrays as in ``numpy.read_npy``).

    ``verify`` also checks the CRC-32 of stored members (deflated ones are always checked).

    Raises:
        FormatError: a damaged zip, a member that is not a ``.npy``, a bad ``.npy``, a member
            whose declared size disagrees with its ``.npy`` header.
        UnsafeContentError: a member holds an object array (a pickle).
    """
    where = str(path)
    data = map_file(path)
    members = zip_members(data, where=where)
    out: dict[str, Any] = {}
    for name, member in members.items():
        if not name.endswith(_SUFFIX):
            raise FormatError(
                f"{where}: member {name!r} is not a .npy array; an .npz holds only .npy members"
            )
        here = f"{where}:{name}"
        need = image_size(member_head(data, member, HEAD_SIZE, where=where), where=here)
        if need != member.size:
            raise FormatError(
                f"{here}: the zip declares {member.size} bytes, its .npy header {need} (header "
                "plus array); the archive is corrupt or a decompression bomb"
            )
        raw = read_member(data, member, where=where, check_crc=verify)
        out[name[: -len(_SUFFIX)]] = read_npy(raw, where=here)
    return out
