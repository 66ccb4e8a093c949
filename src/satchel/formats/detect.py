"""Which format a path holds, from magic bytes and folder contents — never from its extension.

Each foreign-format module offers ``sniff(probe) -> bool`` (and ``sniff_dir`` for folders);
this module asks them in a fixed order, most specific first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, SatchelFileNotFoundError

__all__ = ["Probe", "detect", "probe", "sniffed"]

_HEAD = 4096
_TAIL = 64


@dataclass(frozen=True)
class Probe:
    """What detection may look at: the path, whether it is a folder, the first and last bytes."""

    path: Path
    is_dir: bool
    size: int
    head: bytes
    tail: bytes


def probe(path: str | os.PathLike[str]) -> Probe:
    """Read the first 4 KiB and last 64 bytes of ``path`` (nothing for a folder).

    Raises:
        SatchelFileNotFoundError: the path does not exist.
    """
    p = Path(path)
    if p.is_dir():
        return Probe(p, True, 0, b"", b"")
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD)
            f.seek(max(0, size - _TAIL))
            tail = f.read(_TAIL)
    except FileNotFoundError as e:
        # A TensorFlow checkpoint is named by its prefix ("ckpt-1" for ckpt-1.index).
        if Path(f"{p}.index").is_file():
            return Probe(p, False, -1, b"", b"")
        raise SatchelFileNotFoundError(f"{p}: no such file or folder") from e
    return Probe(p, False, size, head, tail)


def detect(path: str | os.PathLike[str]) -> str:
    """The format name of ``path``: ``satchel``, ``safetensors``, ``torch``, ``numpy``, ...

    Raises:
        SatchelFileNotFoundError: the path does not exist.
        FormatError: no reader recognises it (the message lists what satchel reads).
    """
    from . import registry

    name = sniffed(path)
    if name is None:
        kinds = ", ".join(n for n, _ in registry.READERS)
        raise FormatError(f"{path}: format not recognised from its contents; satchel reads {kinds}")
    return name


def sniffed(path: str | os.PathLike[str], *, refine: bool = True) -> str | None:
    """Like :func:`detect`, but ``None`` when no reader recognises the contents.

    ``refine=False`` skips telling satchel files from plain safetensors (which reads the
    header): loading does not need to know, and the header is then parsed only once.
    """
    from .._format.manifest import MANIFEST_KEY
    from .._io.reader import open_file
    from . import registry

    pr = probe(path)
    for name, module in registry.READERS:
        if module.sniff_dir(pr) if pr.is_dir else module.sniff(pr):
            if name == "safetensors" and refine:
                try:
                    opened = open_file(pr.path)
                except (FormatError, OSError):
                    return name
                return "satchel" if MANIFEST_KEY in opened.header.metadata else name
            return name
    return None
