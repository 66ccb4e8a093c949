"""Framework adapters: what a user's array *is* (dtype, shape, memory) and how to rebuild one.

Each adapter is imported only when an object of its framework shows up, so ``import satchel``
never imports an ML framework (SPEC 6.1). The core sees only :class:`ArrayView` values.
"""

from __future__ import annotations

import sys

import numpy as np

from . import numpy as np_adapter
from ._view import ArrayView, Framework, Kind, Memory, c_strides

__all__ = [
    "ArrayView",
    "Framework",
    "Kind",
    "Memory",
    "c_strides",
    "describe",
    "frozen_foreign",
    "is_array",
    "is_keras",
]


def _is_torch(x: object) -> bool:
    # Checking the module name first keeps torch unimported for users who never touch it.
    return "torch" in sys.modules and type(x).__module__.startswith("torch")


def _is_tf(x: object) -> bool:
    # As for torch: the module name first, so TensorFlow stays unimported (and un-initialised:
    # its import takes seconds) for users who never hand satchel a TensorFlow object. Keras 3
    # Variables on the TensorFlow backend count: they wrap a tf.Variable.
    return "tensorflow" in sys.modules and type(x).__module__.startswith(("tensorflow", "keras"))


def is_keras(x: object) -> bool:
    """True for a Keras 3 layer, model or optimizer; False, at no cost, until Keras is imported."""
    if "keras" not in sys.modules:
        return False
    import keras  # type: ignore[import-untyped]

    return isinstance(x, (keras.Layer, keras.optimizers.Optimizer))


def is_array(x: object) -> bool:
    """True for what satchel stores as data: NumPy arrays and scalars, torch and TensorFlow
    tensors, bytes."""
    if isinstance(x, (np.str_, np.void, np.object_)):
        return False  # text and records are not arrays satchel stores; str() handles np.str_
    if isinstance(x, (np.ndarray, np.generic, bytes, bytearray)):
        return True
    if _is_torch(x):
        import torch

        return isinstance(x, torch.Tensor)
    if _is_tf(x):
        from . import tensorflow as tf_adapter

        return tf_adapter.is_tensor(x)
    return False


def frozen_foreign(x: object) -> object:
    """``x`` unaffected by later in-place updates, for the arrays of frameworks other than
    NumPy and torch (whose copies the async snapshot makes itself); anything else as it is."""
    if _is_tf(x):
        from . import tensorflow as tf_adapter

        return tf_adapter.frozen(x)
    return x


def describe(x: object, *, where: str) -> ArrayView:
    """Describe an array leaf without copying its data.

    Raises:
        UnsupportedObjectError: for object, structured or string arrays and exotic tensors.
    """
    if isinstance(x, (bytes, bytearray)):
        return np_adapter.describe_bytes(bytes(x))
    if isinstance(x, (np.ndarray, np.generic)):
        return np_adapter.describe(x, where=where)
    if _is_tf(x):
        from . import tensorflow as tf_adapter

        return tf_adapter.describe(x, where=where)
    from . import torch as torch_adapter

    return torch_adapter.describe(x, where=where)
