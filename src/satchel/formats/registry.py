"""The foreign readers satchel knows, by name, in the order detection asks them.

Most specific first: a torch zip before ``.npz`` and ``.keras`` zips (their first members tell
them apart, and torch's may come in any order), folders after files. satchel's own format and
plain safetensors are sniffed by ``detect`` itself and read by ``satchel._read``.
"""

from __future__ import annotations

from . import (
    dcp,
    distributed,
    gguf,
    keras,
    mxnet,
    npz,
    numpy,
    oneflow,
    orbax,
    sharded,
    tar,
    tensorflow,
    torch,
)
from ._reader import ForeignName, Reader

__all__ = ["READERS", "reader"]

READERS: dict[ForeignName, Reader] = {
    "distributed": distributed,
    "sharded": sharded,
    "torch": torch,
    "oneflow": oneflow,
    "numpy": numpy,
    "npz": npz,
    "gguf": gguf,
    "mxnet": mxnet,
    "tensorflow": tensorflow,
    "keras": keras,
    "orbax": orbax,
    "dcp": dcp,
    "torch-tar": tar,
}


def reader(name: str) -> Reader:
    """The reader of format ``name``.

    Raises:
        KeyError: no reader has that name (``satchel`` and ``safetensors`` are not foreign).
    """
    for n, r in READERS.items():
        if n == name:
            return r
    raise KeyError(name)
