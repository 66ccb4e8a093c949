"""What a foreign-format reader is: the :class:`Reader` protocol, the names, and the probe.

The call order, for every path handed to ``satchel.load``, ``open``, ``convert`` or ``detect``:

1. :func:`probe` reads what detection may look at: the first 4 KiB and last 64 bytes of a file
   (nothing of a folder). Nothing else is read, and no name or extension is consulted.
2. ``detect`` asks satchel's own sniffer (``satchel`` / ``safetensors``), then each reader of
   ``registry.READERS`` in order, ``reader.sniff(probe)``; the first ``True`` names the format.
   ``sniff`` is cheap and never raises: it may open the path to look a little further (a
   folder's marker file, a zip's central directory), but it reads no tensor data.
3. ``registry.reader(name).read(path, verify=verify)`` validates the file and returns the
   structure the framework's own loader returns: dicts, lists, tuples and plain values, with
   each array an :class:`~satchel._read.refs.ArrayRef` into a mapped storage, a
   :class:`~satchel._read.refs.Deferred`, or a NumPy array. ``verify=True`` checks every
   checksum the format has (now or when a storage's bytes are first used); ``False`` skips them.
4. The read pipeline (``satchel._read``) turns that tree into NumPy arrays or torch tensors.

Readers never import ``detect`` or ``registry``; those import the readers.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import FormatError, SatchelFileNotFoundError

__all__ = ["ForeignName", "FormatName", "Probe", "Reader", "probe"]

ForeignName = Literal[
    "distributed", "sharded", "torch", "oneflow", "numpy", "npz", "gguf", "mxnet", "tensorflow",
    "keras", "orbax", "dcp", "torch-tar",
]  # fmt: skip
"""A format some reader in ``registry`` reads."""

FormatName = Literal[
    "satchel", "safetensors", "distributed", "sharded", "torch", "oneflow", "numpy", "npz", "gguf",
    "mxnet", "tensorflow", "keras", "orbax", "dcp", "torch-tar",
]  # fmt: skip
"""What ``satchel.detect`` returns: satchel's own two (read by ``satchel._read``) or a reader's."""

_HEAD = 4096
_TAIL = 64


@dataclass(frozen=True)
class Probe:
    """What detection may look at: the path, whether it is a folder, the first and last bytes.

    ``size`` is -1 for a TensorFlow checkpoint named by its prefix (no file, ``<prefix>.index``
    exists).
    """

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
        # O_NONBLOCK: opening a FIFO must not wait for a writer; anything but a regular file is
        # refused before a byte is read (a device or FIFO could block or never end).
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FormatError(
                f"{p}: is not a regular file (a FIFO, device or socket); satchel reads files only",
                path=str(p),
            )
        with os.fdopen(fd, "rb") as f:
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


class Reader(Protocol):
    """One foreign format. Each reader module is one (``registry`` lists them).

    Call order: ``sniff(probe)`` during detection, then ``read(path, verify=...)`` once the
    format is known (see the module docstring). ``read`` may assume ``sniff`` said yes, but
    still validates everything: a file can change between the two calls.
    """

    def sniff(self, probe: Probe, /) -> bool:
        """Whether the probed file or folder is in this format (never raises)."""
        ...

    def read(self, path: Path, /, *, verify: bool = True) -> Any:
        """The structure the framework's loader returns, arrays as ArrayRefs (see above).

        Raises:
            FormatError: the bytes break the format (``IntegrityError``: a checksum fails).
            UnsafeContentError: the file asks for code to run.
        """
        ...
