"""How two tensors of the same shape differ, computed in float64 a chunk at a time.

* ``max_abs``: the largest ``|a - b|`` over elements finite on both sides;
* ``rel_l2``: ``||a - b|| / max(||a||, tiny)`` over the same elements (``a`` is the reference);
* ``mismatched``: elements with ``|a - b| > atol + rtol * |b|`` (NumPy's ``isclose`` rule), plus
  elements where a NaN or an infinity is not matched by the same value on the other side. NaN
  against NaN counts as equal.

Complex tensors are compared as complex numbers (``|a - b|`` is a modulus). Non-numeric dtypes
(structured arrays) are compared byte for byte and get no metrics. Norms are accumulated with
scaling, as BLAS ``nrm2`` does, so huge values do not overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._stats import CHUNK, chunks, is_numeric

__all__ = ["TINY", "Comparison", "Norm", "compare"]

Array = np.ndarray[Any, Any]
TINY = float(np.finfo(np.float64).tiny)


class Norm:
    """A running Euclidean norm, kept as ``scale * sqrt(ssq)`` so squares never overflow."""

    def __init__(self) -> None:
        self.scale, self.ssq = 0.0, 1.0

    def add(self, x: Array) -> None:
        if not x.size:
            return
        m = float(np.max(np.abs(x)))
        if m == 0.0 or not math.isfinite(m):
            return
        s = float(np.sum(np.square(np.abs(x) / m)))
        if m > self.scale:
            self.ssq = self.ssq * (self.scale / m) ** 2 + s
            self.scale = m
        else:
            self.ssq += s * (m / self.scale) ** 2

    def add_norm(self, value: float) -> None:
        """Merge the norm of another vector (for per-layer totals)."""
        self.add(np.array([value]))

    def value(self) -> float:
        return self.scale * math.sqrt(self.ssq) if self.scale else 0.0


@dataclass(frozen=True)
class Comparison:
    """The result for one pair; the floats are ``None`` for non-numeric dtypes."""

    mismatched: int
    elements: int
    max_abs: float | None
    norm_a: float | None
    norm_diff: float | None

    @property
    def equal(self) -> bool:
        return self.mismatched == 0

    @property
    def rel_l2(self) -> float | None:
        if self.norm_a is None or self.norm_diff is None:
            return None
        return self.norm_diff / max(self.norm_a, TINY)


def compare(
    a: Array,
    b: Array,
    *,
    atol: float,
    rtol: float,
    on_chunk: Callable[[int], None] | None = None,
) -> Comparison:
    """Compare ``a`` with ``b`` (same shape); see the module docstring for the definitions."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    n = int(a.size)
    if not (is_numeric(a.dtype) and is_numeric(b.dtype)):
        same = a.dtype == b.dtype and a.tobytes() == b.tobytes()
        return Comparison(0 if same else n, n, None, None, None)
    complex_ = a.dtype.kind == "c" or b.dtype.kind == "c"
    wide = np.complex128 if complex_ else np.float64
    mismatched, max_abs = 0, 0.0
    norm_a, norm_d = Norm(), Norm()
    rows = not (a.flags.c_contiguous and b.flags.c_contiguous)  # aligned chunks on both sides
    for ca, cb in zip(chunks(a, CHUNK, by_rows=rows), chunks(b, CHUNK, by_rows=rows), strict=True):
        x, y = ca.astype(wide), cb.astype(wide)
        fin = np.isfinite(x) & np.isfinite(y)
        if not fin.all():
            odd_x, odd_y = x[~fin], y[~fin]
            same = (odd_x == odd_y) | (np.isnan(odd_x) & np.isnan(odd_y))
            mismatched += int((~same).sum())
            x, y = x[fin], y[fin]
        if x.size:
            d = np.abs(x - y)
            max_abs = max(max_abs, float(d.max()))
            mismatched += int((d > atol + rtol * np.abs(y)).sum())
            norm_a.add(x)
            norm_d.add(d)
        if on_chunk is not None:
            on_chunk(int(ca.nbytes + cb.nbytes))
    return Comparison(
        mismatched, n, _finite(max_abs), _finite(norm_a.value()), _finite(norm_d.value())
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
