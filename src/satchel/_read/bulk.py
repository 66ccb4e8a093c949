"""``load`` of a state dict over whole columns: no record, storage or ref per tensor.

A satchel file that stores a dict of str keys to distinct whole tensors (what ``state_dict()``
and most saves give) is described completely by the manifest's columns (SPEC 3.9-3.10) and
the end offsets its header was checked against (SPEC 3.11). Loading it whole then needs, per
tensor, one checksum and one array over the mapped bytes: the checksums are computed and
compared for all tensors in one pass, in C, before any array is made (SPEC 3.7), and each
array is built with one or two calls. The result is what the general path returns: each
tensor its own storage over the mapping, in the file's key order, the same errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import xxhash

from .. import dtypes
from .._format.records import Columns
from .._io.reader import Opened

__all__ = ["bulk_loader"]

# dtypes torch.from_numpy cannot take (NumPy knows them only through ml_dtypes).
_TORCH_VIEW_ONLY = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2"})
_NUMPY = {d.name: d.numpy for d in dtypes.DTYPES}

Check = Callable[[str, str, str, Any], None]


def bulk_loader(opened: Opened, *, verify: bool, check: Check) -> Callable[[str], Any] | None:
    """A function ``framework -> loaded dict`` (``None`` where it does not apply), or ``None``
    when the file is not a state dict of distinct whole tensors checked as satchel wrote it.

    ``check(where, name, expected, data)`` raises the ``IntegrityError`` of a mismatch.
    """
    m, ends = opened.manifest, opened.header.ends
    if m is None or m.columns is None or m.flat is None or ends is None:
        return None
    if not isinstance(opened.data, np.ndarray):  # ranged reads (object storage): per tensor
        return None
    cols = m.columns
    keys, index = m.flat
    n = len(cols.names)
    # Every leaf used once, each a different stored tensor: one array per stored tensor.
    if not len(index) == len(set(index)) == len(cols.data) == len(set(cols.data)) == n:
        return None

    def load(framework: str) -> Any:
        return _load(opened, cols, keys, index, ends, framework, verify=verify, check=check)

    return load


def _load(  # noqa: PLR0917 - private: the file's columns, resolved by bulk_loader
    opened: Opened,
    cols: Columns,
    keys: list[str],
    index: list[int],
    ends: list[int],
    framework: str,
    *,
    verify: bool,
    check: Check,
) -> Any:
    data = opened.data
    assert isinstance(data, np.ndarray)  # bulk_loader takes mapped or read files only
    fws = set(cols.framework)
    want = fws.pop() if framework == "auto" and len(fws) == 1 else framework
    if want == "torch":
        if not _TORCH_VIEW_ONLY.isdisjoint(cols.dtypes):
            return None
        from ..adapters import torch as torch_adapter  # noqa: PLC0415 - torch only if asked

        # The adapter copies read-only arrays (torch has no read-only tensors); arrays over a
        # writable buffer are all writable, so it is asked once, not per tensor.
        make: Callable[[Any], Any] | None = torch_adapter.from_numpy
        if data.flags.writeable:
            import torch  # noqa: PLC0415 - imported by the adapter just above

            make = torch.from_numpy
    elif want == "numpy":
        make = None
    else:  # TensorFlow, or frameworks mixed in one file: the general path
        return None
    starts = [0, *ends[:-1]]
    if verify:
        _verify(opened, cols, index, starts, ends, check)
    types = list(map(_NUMPY.__getitem__, cols.dtypes))
    arrays: list[Any]
    if make is None:
        arrays = list(map(_numpy_array, cols.shapes, types, starts, ends, [data] * len(starts)))
    else:
        # One NumPy array over the mapping per tensor, one tensor over it: each tensor has its
        # own storage, exactly its bytes (as on the general path).
        views: Iterator[Any] = map(np.ndarray, cols.shapes, types, [data] * len(starts), starts)
        arrays = list(map(make, views))
        if "parameter" in cols.kind:
            import torch  # noqa: PLC0415 - imported by the adapter above

            arrays = [
                torch.nn.Parameter(t, requires_grad=False) if k == "parameter" else t
                for t, k in zip(arrays, cols.kind, strict=True)
            ]
    by_leaf = list(map(arrays.__getitem__, cols.data))
    return dict(zip(keys, map(by_leaf.__getitem__, index), strict=True))


def _numpy_array(
    shape: tuple[int, ...], dtype: np.dtype[Any], start: int, end: int, data: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """What the general path makes of a whole NumPy leaf: an array over a fresh buffer object
    of its bytes (not a view of the whole-file array), so that saving it again finds each
    array its own allocation."""
    raw = data[start:end]
    base = np.frombuffer(raw.data, dtype=np.uint8) if end > start else raw
    return np.ndarray(shape, dtype=dtype, buffer=base)


def _verify(  # noqa: PLR0917 - private: the file's columns, resolved by bulk_loader
    opened: Opened,
    cols: Columns,
    index: list[int],
    starts: list[int],
    ends: list[int],
    check: Check,
) -> None:
    """SPEC 3.7 for every tensor, before any array exists: one pass over all checksums in C;
    on a mismatch, the first tensor in the structure's order is named (as the general path
    does, which verifies in that order)."""
    view = memoryview(opened.data)  # type: ignore[arg-type]
    spans = map(view.__getitem__, map(slice, starts, ends))
    if "".join(map(xxhash.xxh3_64_hexdigest, spans)) == cols.digests:
        return
    where = str(opened.path)
    for leaf in index:
        j = cols.data[leaf]
        expected = cols.digests[16 * j : 16 * j + 16]
        check(where, cols.names[j], expected, opened.data[starts[j] : ends[j]])
    raise AssertionError("a checksum differs but no tensor's does")  # pragma: no cover
