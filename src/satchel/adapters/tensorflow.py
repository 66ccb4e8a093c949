"""TensorFlow adapter: ``tf.Tensor`` and ``tf.Variable`` in, ``tf.Tensor``/``tf.Variable`` out.

Imported only when a TensorFlow object is saved or a TensorFlow leaf is loaded, so ``import
satchel`` never pays TensorFlow's import (seconds). A Keras 3 ``Variable`` on the TensorFlow
backend is saved as the ``tf.Variable`` it wraps.

TensorFlow tensors are immutable and own their buffers, so nothing is shared on either side:
saving reads each tensor's host buffer without copying (``np.asarray`` on an eager tensor is a
view), loading copies each array once into a new tensor. Two places holding one tensor object
still come back as one object (SPEC 5.1), as for every framework.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import tensorflow as tf  # type: ignore[import-untyped]

from .. import dtypes
from ..errors import UnsupportedObjectError
from ._view import ArrayView, Kind

__all__ = ["describe", "finish", "frozen", "is_tensor"]

# TensorFlow has every satchel dtype (bfloat16 and float8 included) under satchel's name, with
# the same NumPy (ml_dtypes) type; tests/test_tf_live.py round-trips each one.
_DTYPES: dict[tf.DType, dtypes.DType] = {tf.as_dtype(dt.numpy): dt for dt in dtypes.DTYPES}


def _unwrap(x: Any) -> Any:
    # A Keras 3 Variable is not a tf.Variable; on the TensorFlow backend ``.value`` is one.
    if not isinstance(x, (tf.Tensor, tf.Variable)) and type(x).__module__.startswith("keras"):
        inner = getattr(x, "value", None)
        if isinstance(inner, tf.Variable):
            return inner
    return x


def is_tensor(x: Any) -> bool:
    """True for an eager ``tf.Tensor``, a ``tf.Variable`` or a Keras Variable wrapping one."""
    return isinstance(_unwrap(x), (tf.Tensor, tf.Variable))


def frozen(x: Any) -> Any:
    """``x`` as it is now, unaffected by later in-place updates (an async save's snapshot).

    A tf.Tensor is immutable and comes back as it is. A variable comes back as a new
    ``tf.Variable`` over ``read_value()``, trainable as it is: reading takes a reference to the
    variable's buffer, and TensorFlow copies a buffer that is still referenced before any op
    updates it in place (assign, assign_add, the optimizers' resource-apply kernels), so the
    copy is paid by the next update, not by the save's stall.
    """
    inner = _unwrap(x)
    if isinstance(inner, tf.Variable):
        return tf.Variable(inner.read_value(), trainable=inner.trainable)
    return x


def describe(x: Any, *, where: str) -> ArrayView:
    """An :class:`ArrayView` of a tensor or variable; the host buffer is read, not copied.

    Raises:
        UnsupportedObjectError: a symbolic tensor (inside ``tf.function``), a string, resource
            or variant tensor, or a dtype satchel does not store.
    """
    t = _unwrap(x)
    label = where or "<root>"
    if not isinstance(t, (tf.Tensor, tf.Variable)):
        raise UnsupportedObjectError(f"cannot save {type(x).__qualname__} at {label!r}")
    dt = _DTYPES.get(t.dtype)
    if dt is None:
        raise UnsupportedObjectError(
            f"cannot save tensor {label!r} of dtype {t.dtype.name}: satchel stores "
            f"{', '.join(d.name for d in dtypes.DTYPES)} (strings would need pickle); "
            "convert it with tf.cast or tf.io.serialize_tensor first"
        )
    if isinstance(t, tf.Tensor) and not hasattr(t, "numpy"):
        raise UnsupportedObjectError(
            f"cannot save tensor {label!r}: it is symbolic (inside tf.function or a Keras "
            "functional graph) and has no value; save it outside the traced function"
        )
    kind: Kind = "parameter" if isinstance(t, tf.Variable) else "tensor"
    requires_grad = bool(t.trainable) if isinstance(t, tf.Variable) else False
    shape = tuple(int(n) for n in t.shape)

    def values() -> np.ndarray[Any, Any]:
        # An eager tensor's __array__ is a view of its host buffer; a variable reads its value.
        arr = np.asarray(t)
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)

    return ArrayView("tensorflow", kind, dt, shape, requires_grad, None, values)


def finish(
    arr: np.ndarray[Any, Any],
    *,
    kind: str,
    requires_grad: bool,
    dtype: dtypes.DType | None,
    device: Any,
) -> Any:
    """A ``tf.Tensor`` (a ``tf.Variable`` for a saved variable or Parameter) holding ``arr``.

    Floating arrays are cast to ``dtype``; ``device`` (``"cpu"``, ``"/GPU:0"``...) places the
    result. The array, a view of the mapped file, is copied once into TensorFlow's memory.
    """
    if dtype is not None:
        found = dtypes.by_numpy(arr.dtype)
        if found is not None and found.floating:  # complex is not cast, as for NumPy and torch
            arr = arr.astype(dtype.numpy)
    with tf.device(device) if device is not None else contextlib.nullcontext():
        t = tf.convert_to_tensor(arr)
        if kind == "parameter":
            return tf.Variable(t, trainable=requires_grad)
        return t
