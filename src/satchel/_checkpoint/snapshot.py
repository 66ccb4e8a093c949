"""Freezing prepared items for an async save: one copy into host memory, reused save to save."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["snapshot"]


def snapshot(obj: Any, *, reuse: Any = None) -> Any:
    """A deep copy whose arrays own their memory, so the caller may change the originals.

    An array object met twice is copied once (tied weights stay tied). This is the only copy an
    async save makes: one memcpy of the state into host memory. ``reuse`` is an earlier
    snapshot of the same structure that is no longer needed: arrays of the same shape and
    dtype at the same place are copied into, not allocated anew. Fresh memory costs page
    faults on first touch (on this project's VM, more than the copy itself), so a training
    loop saving every N steps pays them once.
    """
    memo: dict[int, Any] = {}
    used: set[int] = set()

    def copy(x: Any, old: Any) -> Any:
        if id(x) in memo:
            return memo[id(x)]
        out: Any
        if isinstance(x, np.ndarray):
            out = _into(old, x, used) if _fits(old, x) else x.copy()
        elif _is_torch_tensor(x):
            out = _into(old, x, used) if _fits(old, x) else _clone_tensor(x)
        elif isinstance(x, dict):
            old_map = old if isinstance(old, dict) else {}
            items = ((k, copy(v, old_map.get(k))) for k, v in x.items())
            out = OrderedDict(items) if isinstance(x, OrderedDict) else dict(items)
        elif isinstance(x, list | tuple) and type(x) in (list, tuple):
            old_seq = (
                old if isinstance(old, list | tuple) and len(old) == len(x) else [None] * len(x)
            )
            out = type(x)(copy(v, o) for v, o in zip(x, old_seq, strict=True))
        else:
            return x  # immutable plain values (and anything save() will refuse with a message)
        memo[id(x)] = out
        return out

    return copy(obj, reuse)


def _fits(old: Any, x: Any) -> bool:
    """Whether ``old`` (from the previous snapshot) can take ``x``'s values in place."""
    if type(old) is not type(x) or old.shape != x.shape or old.dtype != x.dtype:
        return False
    if isinstance(x, np.ndarray):
        return bool(old.flags.c_contiguous and old.flags.writeable)
    return bool(old.is_contiguous() and old.device.type == "cpu")


def _into(old: Any, x: Any, used: set[int]) -> Any:
    if id(old) in used:  # one buffer never serves two arrays
        return x.copy() if isinstance(x, np.ndarray) else _clone_tensor(x)
    used.add(id(old))
    if isinstance(x, np.ndarray):
        np.copyto(old, x)
        return old
    import torch

    with torch.no_grad():
        old.copy_(x.detach())
    return old


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "untyped_storage")


def _clone_tensor(t: Any) -> Any:
    import torch

    c = t.detach().to("cpu", copy=True)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(c, requires_grad=t.requires_grad)
    return c
