"""Zip containers read as untrusted bytes: one checked view of the central directory.

Used for PyTorch archives, ``.npz`` and ``.keras`` files. Member names may not escape (``..``,
absolute, NUL, backslash), may not repeat, and members' bytes may not overlap each other or the
central directory (the "overlapping entries" zip bomb, CVE-2024-0450). Stored members come back
as zero-copy slices of the mapped file; deflated ones are inflated with their declared size
capped and the actual output counted.
"""

from __future__ import annotations

import itertools
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError

__all__ = ["MAX_INFLATED", "ZipMember", "read_member", "zip_members"]

MAX_INFLATED = 1 << 34  # 16 GiB: a compressed member claiming more is a bomb, not a checkpoint
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_MAGIC = b"PK\x03\x04"

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class ZipMember:
    """One member: where its payload starts in the file, its sizes and compression."""

    name: str
    data_offset: int
    compressed_size: int
    size: int
    method: int
    crc: int


def zip_members(data: U8Array, *, where: str) -> dict[str, ZipMember]:
    """Validate the archive in ``data`` (the whole file) and index its members by name.

    Raises:
        FormatError: not a zip, damaged directory, unsafe names, duplicates or overlaps.
    """
    import io

    raw = data.data
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))  # reads only the central directory here
    except (zipfile.BadZipFile, OSError, ValueError, struct.error, NotImplementedError) as e:
        raise FormatError(f"{where}: not a readable zip archive ({e})") from e
    members: dict[str, ZipMember] = {}
    spans: list[tuple[int, int, str]] = []
    starts: dict[int, str] = {}
    with zf:
        infos = zf.infolist()
        dir_start = _central_directory_start(zf, len(raw))
        for info in infos:
            name = info.filename
            # zipfile cuts names at NUL; orig_filename keeps what the directory really says.
            _check_name(info.orig_filename, where)
            if name in members:
                raise FormatError(f"{where}: zip member {name!r} appears twice")
            start = info.header_offset
            if start in starts:
                raise FormatError(
                    f"{where}: zip members {starts[start]!r} and {name!r} overlap: both point at "
                    f"byte {start} (a zip bomb?)"
                )
            starts[start] = name
            if not 0 <= start <= len(raw) - _LOCAL_HEADER.size:
                raise FormatError(f"{where}: zip member {name!r} header is outside the file")
            fields = _LOCAL_HEADER.unpack_from(raw, start)
            if fields[0] != _LOCAL_MAGIC:
                raise FormatError(f"{where}: zip member {name!r} has no local header")
            name_len, extra_len = fields[-2], fields[-1]
            local_name = bytes(
                raw[start + _LOCAL_HEADER.size : start + _LOCAL_HEADER.size + name_len]
            )
            encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
            if local_name.decode(encoding, "replace") != info.orig_filename:
                # Two names for one member is a parser differential (security.md row 25).
                raise FormatError(
                    f"{where}: zip member {name!r} has a different name in its local header"
                )
            data_offset = start + _LOCAL_HEADER.size + name_len + extra_len
            end = data_offset + info.compress_size
            if end > dir_start:
                raise FormatError(
                    f"{where}: zip member {name!r} runs into the central directory "
                    f"(bytes {data_offset}..{end}, directory at {dir_start})"
                )
            if info.flag_bits & 0x1:
                raise FormatError(f"{where}: zip member {name!r} is encrypted")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise FormatError(f"{where}: stored zip member {name!r} has two different sizes")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise FormatError(
                    f"{where}: zip member {name!r} uses compression {info.compress_type}; "
                    "only stored and deflated members are read"
                )
            members[name] = ZipMember(
                name,
                data_offset,
                info.compress_size,
                info.file_size,
                info.compress_type,
                info.CRC,
            )
            spans.append((start, end, name))
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise FormatError(f"{where}: zip members {a!r} and {b!r} overlap (a zip bomb?)")
    return members


def read_member(data: U8Array, m: ZipMember, *, where: str, check_crc: bool = False) -> U8Array:
    """The member's bytes: a zero-copy slice if stored, else inflated with a capped size.

    Raises:
        FormatError: sizes disagree, inflation fails or exceeds the declared size, bad CRC.
    """
    payload = data[m.data_offset : m.data_offset + m.compressed_size]
    if m.method == zipfile.ZIP_STORED:
        if m.size != m.compressed_size:
            raise FormatError(f"{where}: stored zip member {m.name!r} has two different sizes")
        out = payload
    else:
        if m.size > MAX_INFLATED:
            raise FormatError(f"{where}: zip member {m.name!r} claims {m.size} bytes inflated")
        inflater = zlib.decompressobj(-15)
        try:
            buf = inflater.decompress(payload.data, m.size + 1)
        except zlib.error as e:
            raise FormatError(f"{where}: zip member {m.name!r} does not inflate ({e})") from e
        if len(buf) != m.size:
            raise FormatError(
                f"{where}: zip member {m.name!r} inflates to more or fewer bytes than the "
                f"{m.size} it declares"
            )
        out = np.frombuffer(buf, dtype=np.uint8)
        check_crc = True  # inflating touched every byte anyway
    if check_crc and zlib.crc32(out.data) != m.crc:
        raise FormatError(f"{where}: zip member {m.name!r} fails its CRC-32 check")
    return out


def _check_name(name: str, where: str) -> None:
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or ".." in parts
        or (len(name) > 1 and name[1] == ":")
    ):
        raise FormatError(f"{where}: zip member name {name!r} is unsafe (absolute or escaping)")


def _central_directory_start(zf: zipfile.ZipFile, size: int) -> int:
    start = getattr(zf, "start_dir", None)
    if not isinstance(start, int) or not 0 <= start <= size:
        raise FormatError("zip central directory offset is outside the file")
    return start
