"""Opening a single file: read and validate the header, then map (or read) the data section."""

from __future__ import annotations

import mmap as _mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._format.header import Header, parse_header, parse_length
from .._format.manifest import Manifest
from .._format.validate import manifest_of, written_header
from .._read.refs import Ranged
from ..errors import FormatError, SatchelFileNotFoundError

__all__ = ["Opened", "open_file", "read_header"]


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
        # O_NONBLOCK: a FIFO named like a file must not hang the reader (it is refused below).
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as e:
        raise SatchelFileNotFoundError(f"{where}: no such file") from e
    except IsADirectoryError as e:
        raise FormatError(f"{where}: is a folder, not a satchel or safetensors file") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FormatError(
            f"{where}: is not a regular file (a FIFO, device or socket); satchel reads files only",
            path=where,
        )
    f = os.fdopen(fd, "rb")
    with f:
        size = os.fstat(f.fileno()).st_size
        n = parse_length(f.read(8), size, where=where)
        raw = f.read(n)
        if len(raw) != n:
            raise FormatError(f"{where}: file shrank while reading the header")
        header, manifest = read_header(raw, header_len=n, file_size=size, where=where)
        if header.data_len == 0:
            data = np.empty(0, dtype=np.uint8)
        elif mmap:
            mm = _mmap.mmap(f.fileno(), size, access=_mmap.ACCESS_COPY)
            data = np.frombuffer(
                mm, dtype=np.uint8, count=header.data_len, offset=header.data_start
            )
        else:
            data = np.empty(header.data_len, dtype=np.uint8)
            f.seek(header.data_start)
            got = f.readinto(data.data)
            if got != header.data_len:
                raise FormatError(
                    f"{where}: file shrank while reading ({got} of {header.data_len} data bytes)"
                )
    return Opened(p, header, manifest, data)
