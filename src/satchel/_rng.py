"""Random-number-generator state as plain data, so a resumed run draws the same numbers.

Covers Python's ``random``, NumPy's global generator, torch's CPU generator and, when CUDA is
initialised, every CUDA device's generator. torch is touched only if the program imported it.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np

from .errors import UsageError

__all__ = ["capture_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    """The state of every generator in use, as a structure ``satchel.save`` stores exactly."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=True),
    }
    if "torch" in sys.modules:
        import torch

        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Any) -> None:
    """Put back what :func:`capture_rng` returned (after a save/load round trip).

    Raises:
        UsageError: ``state`` is not such a structure.
    """
    if not isinstance(state, dict) or "python" not in state or "numpy" not in state:
        raise UsageError("rng state must be the mapping capture_rng() returned")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    if "torch" in state:
        import torch

        torch.set_rng_state(_contiguous_copy(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_contiguous_copy(s) for s in state["cuda"]])


def _contiguous_copy(t: Any) -> Any:
    import torch

    if isinstance(t, np.ndarray):
        return torch.from_numpy(np.array(t, dtype=np.uint8))
    return t.detach().clone().contiguous()
