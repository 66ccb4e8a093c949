"""Zip containers read as untrusted bytes: one checked view of the central directory.

Used for PyTorch archives, ``.npz`` and ``.keras`` files. Member names may not escape (``..``,
absolute, NUL, backslash; :func:`name_problem`, which satchel's own writers apply too), may not
repeat, and members' bytes may not overlap each other or the central directory (the
"overlapping entries" zip bomb, CVE-2024-0450). Stored members come back as zero-copy slices of
the mapped file. A deflated member's declared size is checked against what its compressed bytes
can inflate to when the directory is read, before any member is inflated; it is then inflated
in bounded steps into a buffer of exactly that size (``inflate``, docs/formats.md rule Z5).
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FormatError, IntegrityError
from .inflate import DEFLATE_RATIO, MAX_INFLATED, check_declared, inflate, inflate_head

__all__ = [
    "MAX_INFLATED",
    "ZipMember",
    "central_names",
    "member_head",
    "name_problem",
    "read_member",
    "zip_members",
]
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_MAGIC = b"PK\x03\x04"
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (APPNOTE 4.3.16)
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record (4.3.14)
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # (4.3.15)
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header (4.3.12)
_MAX_COMMENT = 0xFFFF
_MAX_DIRECTORY = 64 << 20  # names only, for sniffing: far above any checkpoint's directory

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
                # Two names for one member is a parser differential (docs/formats.md rule Z2).
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
            if info.compress_type == zipfile.ZIP_DEFLATED:
                # Rule Z5: before any member is inflated, whatever this load reads.
                check_declared(
                    info.file_size,
                    info.compress_size,
                    ratio=DEFLATE_RATIO,
                    where=where,
                    what=f"zip member {name!r}",
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
    """The member's bytes: a zero-copy slice if stored, else inflated to exactly its declared
    size (checked against its compressed size first; peak memory that size plus 1 MiB).

    Raises:
        FormatError: sizes disagree, inflation fails or would exceed the declared size.
        IntegrityError: the bytes fail the member's CRC-32.
    """
    payload = data[m.data_offset : m.data_offset + m.compressed_size]
    if m.method == zipfile.ZIP_STORED:
        if m.size != m.compressed_size:
            raise FormatError(f"{where}: stored zip member {m.name!r} has two different sizes")
        out = payload
    else:
        out = inflate(payload, m.size, where=where, what=f"zip member {m.name!r}")
        check_crc = True  # inflating touched every byte anyway
    if check_crc and zlib.crc32(out.data) != m.crc:
        raise IntegrityError(
            f"{where}: zip member {m.name!r} fails its CRC-32 check: its bytes changed after "
            "they were written (bit rot or tampering); restore the file from a good copy",
            path=where,
            field=m.name,
            reason="CRC-32 mismatch",
        )
    return out


def member_head(data: U8Array, m: ZipMember, n: int, *, where: str) -> bytes:
    """The first ``n`` bytes of the member (fewer if it is shorter), inflating no more than
    that: for checking a member's own header before the member is read.

    Raises:
        FormatError: the start of a deflated member does not inflate.
    """
    payload = data[m.data_offset : m.data_offset + m.compressed_size]
    if m.method == zipfile.ZIP_STORED:
        return bytes(payload[: min(n, m.size)])
    return inflate_head(payload, min(n, m.size), where=where, what=f"zip member {m.name!r}")


def central_names(path: Path, *, limit: int = 100_000) -> list[str] | None:
    """The first ``limit`` member names in the central directory of the zip at ``path``.

    For sniffing: reads the end record and the directory only (never a member), and gives
    ``None`` instead of raising when the file is not a zip, is damaged, or claims a directory
    larger than 64 MiB. Names are not checked here; :func:`zip_members` checks them on read.
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            tail_at = max(0, size - _EOCD.size - _MAX_COMMENT)
            f.seek(tail_at)
            tail = f.read()
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or at + _EOCD.size > len(tail):
                return None
            _, _, _, _, count, dir_size, dir_at, _ = _EOCD.unpack_from(tail, at)
            if count == 0xFFFF or 0xFFFFFFFF in (dir_size, dir_at):
                loc_at = tail_at + at - _EOCD64_LOCATOR.size
                if loc_at < 0:
                    return None
                f.seek(loc_at)
                magic, _, eocd64_at, _ = _EOCD64_LOCATOR.unpack(f.read(_EOCD64_LOCATOR.size))
                if magic != b"PK\x06\x07" or not 0 <= eocd64_at <= size - _EOCD64.size:
                    return None
                f.seek(eocd64_at)
                fields = _EOCD64.unpack(f.read(_EOCD64.size))
                if fields[0] != b"PK\x06\x06":
                    return None
                count, dir_size, dir_at = fields[-3], fields[-2], fields[-1]
            if dir_size > _MAX_DIRECTORY or not 0 <= dir_at <= size - dir_size:
                return None
            f.seek(dir_at)
            directory = f.read(dir_size)
    except (OSError, struct.error):
        return None
    names: list[str] = []
    pos = 0
    while pos + _CENTRAL.size <= len(directory) and len(names) < min(count, limit):
        fields = _CENTRAL.unpack_from(directory, pos)
        if fields[0] != b"PK\x01\x02":
            return None
        flags, name_len, extra_len, comment_len = fields[5], fields[12], fields[13], fields[14]
        raw = directory[pos + _CENTRAL.size : pos + _CENTRAL.size + name_len]
        names.append(raw.decode("utf-8" if flags & 0x800 else "cp437", "replace"))
        pos += _CENTRAL.size + name_len + extra_len + comment_len
    return names


def name_problem(name: str, *, writing: bool = False) -> str | None:
    """Why ``name`` is not a safe relative member path (``None`` if it is): rule Z3.

    Safe to read means an unzip tool writes it inside the folder it unpacks to: not empty or
    absolute, no drive letter, backslash, NUL or ``..`` component. ``writing`` (satchel's own
    writers) also refuses empty and ``.`` components (``a//b``, ``./a``, a trailing ``/``),
    which unzip tools fold into another name.
    """
    if not name:
        return "is empty"
    if name.startswith("/"):
        return "is absolute"
    if len(name) > 1 and name[1] == ":":
        return "starts with a drive letter"
    if "\\" in name:
        return "contains a backslash"
    if "\x00" in name:
        return "contains NUL"
    parts = name.split("/")
    if ".." in parts:
        return "has a '..' component"
    if writing and ("" in parts or "." in parts):
        return "has an empty or '.' component ('//', './' or a trailing '/')"
    return None


def _check_name(name: str, where: str) -> None:
    problem = name_problem(name)
    if problem is not None:
        raise FormatError(f"{where}: zip member name {name!r} is unsafe: it {problem}")


def _central_directory_start(zf: zipfile.ZipFile, size: int) -> int:
    start = getattr(zf, "start_dir", None)
    if not isinstance(start, int) or not 0 <= start <= size:
        raise FormatError("zip central directory offset is outside the file")
    return start
