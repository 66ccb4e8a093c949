"""Turning live training objects into saveable structures, and freezing them for async saves."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["prepare_item", "snapshot"]


def prepare_item(value: Any) -> Any:
    """A module, optimizer, scheduler or scaler becomes its ``state_dict()``; data stays as is."""
    state_dict = getattr(value, "state_dict", None)
    if callable(state_dict):
        return state_dict()
    return value


def snapshot(obj: Any) -> Any:
    """A deep copy whose arrays own their memory, so the caller may change the originals.

    An array object met twice is copied once (tied weights stay tied). This is the only copy an
    async save makes: one memcpy of the state into host memory.
    """
    memo: dict[int, Any] = {}

    def copy(x: Any) -> Any:
        if id(x) in memo:
            return memo[id(x)]
        out: Any
        if isinstance(x, np.ndarray):
            out = x.copy()
        elif _is_torch_tensor(x):
            out = _clone_tensor(x)
        elif isinstance(x, OrderedDict):
            out = OrderedDict((k, copy(v)) for k, v in x.items())
        elif isinstance(x, dict):
            out = {k: copy(v) for k, v in x.items()}
        elif isinstance(x, list):
            out = [copy(v) for v in x]
        elif isinstance(x, tuple) and type(x) is tuple:
            out = tuple(copy(v) for v in x)
        else:
            return x  # immutable plain values (and anything save() will refuse with a message)
        memo[id(x)] = out
        return out

    return copy(obj)


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "untyped_storage")


def _clone_tensor(t: Any) -> Any:
    import torch

    c = t.detach().to("cpu", copy=True)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(c, requires_grad=t.requires_grad)
    return c
