"""Opening a single file: read and validate the header, then map (or read) the data section."""

from __future__ import annotations

import mmap as _mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._format.header import Header, looks_native, parse_header, parse_length
from .._format.manifest import Manifest
from .._format.validate import manifest_of, written_header
from .._read.refs import Ranged
from ..errors import FormatError, SatchelFileNotFoundError

__all__ = ["Opened", "open_file", "open_native", "read_header"]


@dataclass(frozen=True)
class Opened:
    """A validated file: header, manifest (``None`` for plain safetensors) and its data bytes.

    ``data`` is a flat uint8 array over the data section: a private copy-on-write mapping with
    ``mmap=True`` (writes to loaded arrays never reach the file), or bytes read into memory.
    For an object in object storage (``_remote``), ``path`` is its URL and ``data`` may be a
    sliceable whose slices are ranged reads.
    """

    path: Path | str
    header: Header
    manifest: Manifest | None
    data: np.ndarray[Any, np.dtype[np.uint8]] | Ranged


def read_header(
    raw: bytes, *, header_len: int, file_size: int, where: str
) -> tuple[Header, Manifest | None]:
    """The validated header and manifest of a file (SPEC 1-5), from the header bytes ``raw``.

    A header exactly as satchel writes it is checked against its manifest as a whole (SPEC
    3.11); any other is parsed and checked entry by entry.

    Raises:
        FormatError: the header or manifest breaks a SPEC rule.
        IntegrityError: the manifest does not match its checksum.
    """
    fast = written_header(raw, header_len=header_len, where=where)
    if fast is not None and fast[0].data_len == file_size - 8 - header_len:
        return fast
    header = parse_header(raw, header_len=header_len, file_size=file_size, where=where)
    return header, manifest_of(header, where=where)


def open_file(path: str | os.PathLike[str], *, mmap: bool = True) -> Opened:
    """Open and validate ``path``; nothing beyond the header is read until data is touched.

    Raises:
        SatchelFileNotFoundError: no such file.
        FormatError: the header breaks a SPEC rule.
    """
    p = Path(path)
    where = str(p)
    try:
        fd = os.open(p, _FLAGS)
    except FileNotFoundError as e:
        raise SatchelFileNotFoundError(f"{where}: no such file") from e
    except IsADirectoryError as e:
        raise FormatError(f"{where}: is a folder, not a satchel or safetensors file") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(
                f"{where}: is not a regular file (a FIFO, device or socket); satchel reads "
                "files only",
                path=where,
            )
        return _opened(fd, p, st.st_size, os.pread(fd, _FIRST_READ, 0), mmap=mmap)
    finally:
        os.close(fd)


def open_native(path: str | os.PathLike[str], *, mmap: bool = True) -> Opened | None:
    """:func:`open_file` of a regular file whose first bytes are shaped like safetensors (what
    detection tries first, ``looks_native``), with one open and one read for both; ``None`` for
    anything else, which detection then names.

    Raises:
        FormatError: the header breaks a SPEC rule.
    """
    try:
        fd = os.open(path, _FLAGS)
    except OSError:  # missing, a folder, unreadable: detection says which
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = os.pread(fd, _FIRST_READ, 0)
        if not looks_native(head, st.st_size):
            return None
        return _opened(fd, Path(path), st.st_size, head, mmap=mmap)
    finally:
        os.close(fd)


# O_NONBLOCK: a FIFO named like a file must not hang the reader (it is refused after fstat).
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
# The first read: the length and, for all but the largest headers, the whole header.
_FIRST_READ = 1 << 16


def _opened(fd: int, p: Path, size: int, head: bytes, *, mmap: bool) -> Opened:
    where = str(p)
    n = parse_length(head[:8], size, where=where)
    raw = head[8 : 8 + n]
    if len(raw) < n:
        raw += _read_at(fd, 8 + len(raw), n - len(raw))
    if len(raw) != n:
        raise FormatError(f"{where}: file shrank while reading the header")
    header, manifest = read_header(raw, header_len=n, file_size=size, where=where)
    if header.data_len == 0:
        data = np.empty(0, dtype=np.uint8)
    elif mmap:
        mm = _mmap.mmap(fd, size, access=_mmap.ACCESS_COPY)
        data = np.frombuffer(mm, dtype=np.uint8, count=header.data_len, offset=header.data_start)
    else:
        data = np.empty(header.data_len, dtype=np.uint8)
        got = _read_into(fd, header.data_start, memoryview(data))  # type: ignore[arg-type]
        if got != header.data_len:
            raise FormatError(
                f"{where}: file shrank while reading ({got} of {header.data_len} data bytes)"
            )
    return Opened(p, header, manifest, data)


def _read_at(fd: int, offset: int, count: int) -> bytes:
    """Up to ``count`` bytes at ``offset``: fewer only at the end of the file."""
    parts = []
    while count > 0:
        chunk = os.pread(fd, min(count, 1 << 30), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        count -= len(chunk)
    return b"".join(parts)


def _read_into(fd: int, offset: int, out: memoryview) -> int:
    """Fill ``out`` from ``offset`` (one syscall moves at most ~2 GiB); the bytes read."""
    done = 0
    while done < len(out):
        got = os.preadv(fd, [out[done : done + (1 << 30)]], offset + done)
        if got == 0:
            break
        done += got
    return done
