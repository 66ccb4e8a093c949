"""The readers satchel knows, in the order detection asks them (most specific first).

Each module offers ``sniff(probe)``, ``sniff_dir(probe)`` and ``read(path, *, verify)``;
``read`` returns the structure the framework's own loader returns, arrays as
:class:`~satchel.formats._refs.ArrayRef` or NumPy arrays.
"""

from __future__ import annotations

from types import ModuleType

from . import gguf, keras, mxnet, native, npz, numpy, oneflow, orbax, tar, tensorflow, torch

__all__ = ["READERS", "reader"]

READERS: list[tuple[str, ModuleType]] = [
    ("safetensors", native),
    ("torch", torch),
    ("oneflow", oneflow),
    ("numpy", numpy),
    ("npz", npz),
    ("gguf", gguf),
    ("mxnet", mxnet),
    ("tensorflow", tensorflow),
    ("keras", keras),
    ("orbax", orbax),
    ("torch-tar", tar),
]


def reader(name: str) -> ModuleType:
    """The module reading format ``name``."""
    for n, module in READERS:
        if n == name:
            return module
    raise KeyError(name)
