"""What the planner sees of an array: its framework, kind, dtype, shape and memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

from ..dtypes import DType

__all__ = ["ArrayView", "Framework", "Kind", "Memory", "c_strides"]

Framework = Literal["numpy", "torch", "tensorflow"]
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
