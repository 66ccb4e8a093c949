"""PyTorch's pickles without torch: the allowlist both ``torch.save`` generations share.

The allowlist is the data-only subset of ``torch/_weights_only_unpickler.py``
(docs/formats.md#torch-pickle): tensor/parameter rebuilders, storage types, dtypes as values, a few
plain builtins. Every stand-in builds data; nothing from the file is imported or called. The zip
reader (``torch``) and the legacy stream reader (``torch_legacy``) resolve storage persistent
ids to :class:`TorchStorage`; MXNet trainer states reuse two entries.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import numpy as np

from .. import dtypes
from .._read.refs import ArrayRef, Storage, make_ref
from ..errors import FormatError, UnsafeContentError
from ._codecs.pickle import Global

__all__ = [
    "ALLOWED",
    "ALLOWED_UNWRAPPED",
    "LEGACY_MAGIC",
    "LEGACY_PROTOCOL",
    "StorageType",
    "TorchStorage",
    "byteswap",
    "unwrap",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_TYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "UntypedStorage": "uint8",
}
_TORCH_DTYPES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "bool": "bool", "uint16": "uint16", "uint32": "uint32",
    "uint64": "uint64", "complex64": "complex64", "cfloat": "complex64",
    "complex128": "complex128", "cdouble": "complex128", "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StorageType:
    dtype: dtypes.DType


@dataclasses.dataclass(frozen=True)
class TorchStorage:
    """What a storage persistent id resolves to: the bytes and the dtype they were saved as."""

    storage: Storage
    dtype: dtypes.DType


def _rebuild_tensor(  # noqa: PLR0917 - mirrors torch._utils._rebuild_tensor_v2's signature
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
    *,
    where: str,
    dtype: dtypes.DType | None = None,
) -> ArrayRef:
    if not isinstance(storage, TorchStorage):
        raise FormatError(f"{where}: tensor rebuilt from {type(storage).__name__}, not a storage")
    if not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise FormatError(f"{where}: tensor size/stride are not tuples")
    dt = dtype or storage.dtype
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise FormatError(f"{where}: storage offset {offset!r} is not an int")
    return make_ref(
        storage.storage,
        dt,
        tuple(size),
        strides=tuple(stride),
        offset=offset * dt.itemsize,
        where=where,
        requires_grad=bool(requires_grad),
    )


def _rebuild_tensor_v3(  # noqa: PLR0917 - mirrors torch._utils' signature
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
    *,
    where: str,
) -> ArrayRef:
    if not isinstance(dtype, dtypes.DType):
        raise FormatError(f"{where}: _rebuild_tensor_v3 dtype {dtype!r} is not a torch dtype")
    return _rebuild_tensor(
        storage, offset, size, stride, requires_grad, hooks, metadata, where=where, dtype=dtype
    )


def _rebuild_parameter(
    data: Any, requires_grad: Any, hooks: Any, state: Any = None, *, where: str
) -> ArrayRef:
    if not isinstance(data, ArrayRef):
        raise FormatError(f"{where}: Parameter rebuilt from {type(data).__name__}")
    return dataclasses.replace(data, kind="parameter", requires_grad=bool(requires_grad))


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any, *, where: str) -> Any:
    # Tensor subclasses: only plain Tensor/Parameter are known; rebuild the data, drop the class.
    if not isinstance(func, Global) or func.call is None or not isinstance(args, tuple):
        raise UnsafeContentError(f"{where}: _rebuild_from_type_v2 of {func!r} is refused")
    out = func.call(*args, where=where)
    if new_type is _PARAMETER and isinstance(out, ArrayRef):
        return dataclasses.replace(out, kind="parameter")
    return out


def _unsupported(kind: str) -> Any:
    def refuse(*args: Any, where: str) -> Any:
        raise FormatError(
            f"{where}: holds a {kind} tensor; satchel reads dense tensors only "
            "(convert it with torch to a dense tensor first)"
        )

    return refuse


def _ordered_dict(*args: Any, where: str) -> OrderedDict[Any, Any]:
    if not args:
        return OrderedDict()
    if len(args) == 1 and isinstance(args[0], list):
        return OrderedDict(args[0])
    raise FormatError(f"{where}: OrderedDict called with unexpected arguments")


def _size(*args: Any, where: str) -> tuple[int, ...]:
    if len(args) != 1 or not all(isinstance(n, int) for n in args[0]):
        raise FormatError(f"{where}: torch.Size takes one tuple of ints")
    return tuple(args[0])


def _device(*args: Any, where: str) -> str:
    if not args or not isinstance(args[0], str):
        raise FormatError(f"{where}: torch.device takes a device name")
    return args[0] if len(args) == 1 else f"{args[0]}:{args[1]}"


def _encode(text: Any, encoding: Any = "latin1", *, where: str) -> bytes:
    # Protocol-2 pickles spell ``bytes`` as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise FormatError(f"{where}: _codecs.encode only rebuilds latin1 bytes")
    return text.encode("latin1")


def _plain(kind: type, arity: int) -> Any:
    def build(*args: Any, where: str) -> Any:
        if len(args) > arity:
            raise FormatError(f"{where}: {kind.__name__} takes at most {arity} argument(s)")
        return kind(*args)

    return build


def _bytearray(*args: Any, where: str) -> bytearray:
    # bytearray(n) would allocate n zero bytes on the file's say-so: only rebuild from data.
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin1")
    raise FormatError(f"{where}: bytearray is only rebuilt from bytes or latin-1 text")


_PARAMETER = Global("torch.nn.parameter.Parameter")
_TENSOR = Global("torch.Tensor")


def _build_allowlist() -> dict[tuple[str, str], Global]:
    table: dict[tuple[str, str], Global] = {
        ("collections", "OrderedDict"): Global("collections.OrderedDict", call=_ordered_dict),
        ("torch._utils", "_rebuild_tensor_v2"): Global("_rebuild_tensor_v2", call=_rebuild_tensor),
        ("torch._utils", "_rebuild_tensor_v3"): Global(
            "_rebuild_tensor_v3", call=_rebuild_tensor_v3
        ),
        ("torch._utils", "_rebuild_parameter"): Global(
            "_rebuild_parameter", call=_rebuild_parameter
        ),
        ("torch._utils", "_rebuild_parameter_with_state"): Global(
            "_rebuild_parameter_with_state", call=_rebuild_parameter
        ),
        ("torch._tensor", "_rebuild_from_type_v2"): Global(
            "_rebuild_from_type_v2", call=_rebuild_from_type_v2
        ),
        ("torch.nn.parameter", "Parameter"): _PARAMETER,
        ("torch", "Tensor"): _TENSOR,
        ("torch", "Size"): Global("torch.Size", call=_size),
        ("torch", "device"): Global("torch.device", call=_device),
        ("_codecs", "encode"): Global("_codecs.encode", call=_encode),
        ("builtins", "bytearray"): Global("bytearray", call=_bytearray),
        ("builtins", "set"): Global("set", call=_plain(set, 1)),
        ("builtins", "frozenset"): Global("frozenset", call=_plain(frozenset, 1)),
        ("builtins", "complex"): Global("complex", call=_plain(complex, 2)),
    }
    for fn, kind in (
        ("_rebuild_qtensor", "quantized"),
        ("_rebuild_sparse_tensor", "sparse"),
        ("_rebuild_sparse_csr_tensor", "sparse"),
        ("_rebuild_nested_tensor", "nested"),
        ("_rebuild_meta_tensor_no_storage", "meta (data-less)"),
        ("_rebuild_wrapper_subclass", "wrapper-subclass"),
        ("_rebuild_device_tensor_from_numpy", "device"),
    ):
        table[("torch._utils", fn)] = Global(fn, call=_unsupported(kind))
    for name, dt in _STORAGE_TYPES.items():
        table[("torch", name)] = Global(f"torch.{name}", value=StorageType(dtypes.get(dt)))
    # torch >= 2.x pickles the untyped storage class under its defining module.
    table[("torch.storage", "UntypedStorage")] = table[("torch", "UntypedStorage")]
    for name, dt in _TORCH_DTYPES.items():
        table[("torch", name)] = Global(f"torch.{name}", value=dtypes.get(dt))
    return table


ALLOWED = _build_allowlist()


def unwrap(x: Any) -> Any:
    """A value-only Global's value (a storage type, a dtype); anything else unchanged."""
    return x.value if isinstance(x, Global) and x.value is not None else x


def byteswap(raw: np.ndarray[Any, np.dtype[np.uint8]], dt: dtypes.DType) -> Any:
    """A little-endian copy of a big-endian storage of ``dt`` elements."""
    if dt.itemsize == 1:
        return raw
    n = raw.nbytes // dt.itemsize
    swapped = raw[: n * dt.itemsize].view(dt.numpy.newbyteorder(">")).astype(dt.numpy)
    return swapped.view(np.uint8)


# The interpreter passes Global objects as arguments; storage types and dtypes are values.
def _unwrapping(g: Global) -> Global:
    if g.call is None:
        return g
    inner = g.call

    def call(*args: Any, where: str) -> Any:
        return inner(*(unwrap(a) for a in args), where=where)

    return dataclasses.replace(g, call=call)


ALLOWED_UNWRAPPED = {k: _unwrapping(g) for k, g in ALLOWED.items()}
