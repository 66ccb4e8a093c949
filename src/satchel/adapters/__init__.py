"""Framework adapters: what a user's array *is* (dtype, shape, memory) and how to rebuild one.

Each adapter is imported only when an object of its framework shows up, so ``import satchel``
never imports an ML framework (SPEC 6.1). The core sees only :class:`ArrayView` values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

from ..dtypes import DType

__all__ = ["ArrayView", "Framework", "Kind", "Memory", "c_strides", "describe", "is_array"]

Framework = Literal["numpy", "torch"]
Kind = Literal["tensor", "parameter", "scalar", "bytes"]


class Memory(NamedTuple):
    """Where an array's elements live, so arrays sharing one allocation can be stored once.

    ``offset`` is in bytes from the allocation start, ``strides`` in elements; ``whole()``
    returns the allocation as a flat uint8 NumPy array without copying.
    """

    # A NamedTuple, not a frozen dataclass: as immutable, and 3x cheaper to build, which
    # matters at one per tensor in files of 50,000 tensors.

    key: object
    offset: int
    strides: tuple[int, ...]
    whole: Callable[[], np.ndarray[Any, np.dtype[np.uint8]]]


class ArrayView(NamedTuple):
    """One array leaf as the planner sees it; ``values()`` is C-contiguous (copies if needed)."""

    # A NamedTuple, not a frozen dataclass: as immutable, and 3x cheaper to build, which
    # matters at one per tensor in files of 50,000 tensors.

    framework: Framework
    kind: Kind
    dtype: DType
    shape: tuple[int, ...]
    requires_grad: bool
    memory: Memory | None
    values: Callable[[], np.ndarray[Any, Any]]


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major element strides for ``shape`` (zero-size dimensions count as 1)."""
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return tuple(reversed(out))


def _is_torch(x: object) -> bool:
    # Checking the module name first keeps torch unimported for users who never touch it.
    return "torch" in sys.modules and type(x).__module__.startswith("torch")


def is_array(x: object) -> bool:
    """True for what satchel stores as data: NumPy arrays and scalars, torch tensors, bytes."""
    if isinstance(x, (np.str_, np.void, np.object_)):
        return False  # text and records are not arrays satchel stores; str() handles np.str_
    if isinstance(x, (np.ndarray, np.generic, bytes, bytearray)):
        return True
    if _is_torch(x):
        import torch

        return isinstance(x, torch.Tensor)
    return False


def describe(x: object, *, where: str) -> ArrayView:
    """Describe an array leaf without copying its data.

    Raises:
        UnsupportedObjectError: for object, structured or string arrays and exotic tensors.
    """
    if isinstance(x, (bytes, bytearray)):
        from . import numpy as np_adapter

        return np_adapter.describe_bytes(bytes(x))
    if isinstance(x, (np.ndarray, np.generic)):
        from . import numpy as np_adapter

        return np_adapter.describe(x, where=where)
    from . import torch as torch_adapter

    return torch_adapter.describe(x, where=where)
