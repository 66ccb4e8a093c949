"""Per-tensor statistics in float64, a chunk of the flattened tensor at a time.

``min``/``max``/``mean``/``std`` are over the finite elements (NaN and ±Inf are counted, not
averaged); complex tensors are summarised by their magnitudes, booleans as 0/1. Chunks keep
memory bounded whatever the tensor's size: at most :data:`CHUNK` elements are converted at once,
and the mean and variance of the chunks are merged exactly (Chan et al., 1979).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["CHUNK", "Stats", "as_float64", "chunks", "is_numeric", "tensor_stats"]

CHUNK = 1 << 22  # elements per chunk: 32 MiB as float64

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Stats:
    """Summary of one tensor; the floats are ``None`` when it has no finite element."""

    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nan: int
    inf: int
    of: Literal["value", "magnitude"]

    def as_json(self) -> dict[str, Any]:
        return {
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "nan": self.nan,
            "inf": self.inf,
            "of": self.of,
        }


def is_numeric(dtype: np.dtype[Any]) -> bool:
    """Numbers NumPy can turn into float64 (ml_dtypes' bfloat16 and float8 included)."""
    if dtype.kind in "biufc":
        return True
    return dtype.kind == "V" and dtype.names is None and np.can_cast(dtype, np.float64)


def chunks(arr: Array, size: int = CHUNK, *, by_rows: bool | None = None) -> Iterator[Array]:
    """The elements of ``arr`` in C order, at most about ``size`` at a time, as 1-d arrays.

    A contiguous array is sliced without copying. Otherwise (or with ``by_rows=True``) blocks
    of leading-axis rows are copied one at a time, so a transposed view never becomes one big
    copy. Two arrays of one shape chunked with the same ``by_rows`` give aligned chunks.
    """
    if by_rows is None:
        by_rows = not arr.flags.c_contiguous
    if arr.ndim == 0 or not by_rows:
        flat = arr.reshape(-1)
        for start in range(0, flat.size, size):
            yield flat[start : start + size]
        return
    row = math.prod(arr.shape[1:])
    step = max(1, size // max(row, 1))
    for start in range(0, arr.shape[0], step):
        yield np.ascontiguousarray(arr[start : start + step]).reshape(-1)


def as_float64(x: Array) -> Array:
    """A chunk as float64 (magnitudes for complex)."""
    if x.dtype.kind == "c":
        return np.abs(x.astype(np.complex128))
    return x.astype(np.float64)


def tensor_stats(arr: Array, on_chunk: Callable[[int], None] | None = None) -> Stats | None:
    """Statistics of ``arr``, or ``None`` for a non-numeric dtype (structured, bytes)."""
    if not is_numeric(arr.dtype):
        return None
    n, mean, m2 = 0, 0.0, 0.0
    lo, hi = math.inf, -math.inf
    nan = inf = 0
    of: Literal["value", "magnitude"] = "magnitude" if arr.dtype.kind == "c" else "value"
    for raw in chunks(arr):
        x = as_float64(raw)
        finite_mask = np.isfinite(x)
        if not finite_mask.all():
            nan += int(np.isnan(x).sum())
            inf += int(np.isinf(x).sum())
            x = x[finite_mask]
        if x.size:
            k = int(x.size)
            cm = float(x.mean())
            cm2 = float(np.square(x - cm).sum())
            delta = cm - mean
            total = n + k
            mean += delta * k / total
            m2 += cm2 + delta * delta * n * k / total
            n = total
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        if on_chunk is not None:
            on_chunk(int(raw.nbytes))
    if n == 0:
        return Stats(None, None, None, None, nan, inf, of)
    std = math.sqrt(m2 / n) if math.isfinite(m2) else None  # population std (ddof=0)
    return Stats(lo, hi, _finite(mean), std, nan, inf, of)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
