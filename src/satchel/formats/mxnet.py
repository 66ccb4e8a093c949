"""MXNet files without MXNet: NDArray lists (``.params``, ``nd.save``, ``.npx``) and trainer states.

Layouts: docs/formats.md#mxnet (``src/ndarray/ndarray.cc`` ``NDArray::Save/Load/LegacyLoad``,
MXNet 1.9.1). A list file is ``u64 0x112, u64 reserved, u64 n, n records, u64 n_names, names``;
it loads as a dict (named, file order) or a list (unnamed), as ``mx.nd.load`` returns. Records of
every generation are read: V3 (numpy semantics, 0-d allowed), V2 (storage type), V1 (int64 shape)
and the pre-V1 legacy record whose first word is the ndim. A record with no shape (a "none"
array) is ``None``. Dense arrays are :class:`~satchel._read.refs.ArrayRef` views of the file.

Sparse arrays are returned as their stored parts, never densified (a tiny file could declare a
huge dense shape)::

    {"stype": "row_sparse", "shape": (4, 3), "data": <(rows, 3)>, "indices": <int64 (rows,)>}
    {"stype": "csr", "shape": (4, 3), "data": <(nnz,)>, "indices": <(nnz,)>, "indptr": <(5,)>}

Trainer states (``Trainer.save_states``) are a pickle of ``(states, optimizer)``. It is read by
satchel's interpreter with the allowlist of §2: ``NDArray`` (rebuilt from its ``handle`` bytes,
one record), ``bytearray``, ``OrderedDict`` and the optimizer and LR-scheduler classes, which
become plain dicts of their ``__dict__`` (optimizers gain ``param_dict = {}`` as their
``__setstate__`` does). Every other global raises :class:`~satchel.errors.UnsafeContentError`.

Symbol graphs (``-symbol.json``) are read as plain data by ``_mxnet_symbol``: what
``mx.sym.load`` lists (arguments, auxiliary states, outputs) and the nodes; nothing is evaluated.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from .._read.refs import ArrayRef, Storage, make_ref
from .._tree import MAX_DEPTH
from ..errors import FormatError, UnsafeContentError
from ._codecs.pickle import Buildable, Global, unpickle
from ._codecs.source import map_file
from ._mxnet_symbol import MAX_SYMBOL, read_symbol, sniff_symbol
from ._reader import Probe
from ._torch_pickle import ALLOWED as TORCH

__all__ = ["ALLOWED", "LIST_MAGIC", "read", "read_list", "read_record", "read_states", "sniff"]

LIST_MAGIC = 0x112  # kMXAPINDArrayListMagic
_V1, _V2, _V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_MAX_NDIM = 32  # far above any MXNet array; bounds a garbage ndim before dims are read
_LEGACY_MIN = 4  # smallest record: a pre-V1 "none" array is just its zero ndim
# mshadow TypeFlag -> satchel dtype (docs/formats.md#mxnet-record)
_TYPE_FLAGS = (
    "float32", "float64", "float16", "uint8", "int32", "int8", "int64", "bool", "int16",
    "uint16", "uint32", "uint64", "bfloat16",
)  # fmt: skip
_STYPES = {0: "default", 1: "row_sparse", 2: "csr"}
_AUX = {1: ("indices",), 2: ("indptr", "indices")}  # csr::kIndPtr = 0, csr::kIdx = 1

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


class _Cursor:
    """Little-endian fields of one buffer; every read is checked against the bytes left."""

    def __init__(self, buf: U8Array, where: str, pos: int = 0) -> None:
        self.buf, self.pos, self.where = buf, pos, where

    def take(self, n: int, what: str) -> U8Array:
        if n > len(self.buf) - self.pos:
            raise FormatError(
                f"{self.where}: {what} needs {n} bytes at offset {self.pos} but only "
                f"{len(self.buf) - self.pos} remain; the file is truncated or corrupt"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def num(self, code: str, what: str) -> int:
        raw = self.take(struct.calcsize(code), what)
        return int(struct.unpack("<" + code, raw.tobytes())[0])

    def shape(self, what: str, *, ndim: int | None = None, code: str = "q") -> tuple[int, ...]:
        """``TShape::Load``: i32 ndim then int64 dims (pre-V1: the caller's u32 ndim, u32 dims)."""
        if ndim is None:
            ndim = self.num("i", f"ndim of {what}")
        if ndim == -1:
            return (-1,)  # "unknown" (V3 none); callers turn it into None or an error
        if not 0 <= ndim <= _MAX_NDIM:
            raise FormatError(f"{self.where}: {what} has ndim {ndim} (0..{_MAX_NDIM} expected)")
        size = struct.calcsize(code)
        raw = self.take(ndim * size, f"dims of {what}").tobytes()
        return tuple(int(d) for d in struct.unpack(f"<{ndim}{code}", raw))


def read_record(cur: _Cursor, what: str) -> Any:
    """One ``NDArray::Save`` record at the cursor: an ArrayRef, a sparse dict or None.

    Raises:
        FormatError: unknown magic, storage or type flag; bad shapes; truncated data.
    """
    where = cur.where
    magic = cur.num("I", f"magic of {what}")
    stype, sshape = 0, None
    if magic in (_V2, _V3):
        stype = cur.num("i", f"storage type of {what}")
        if stype not in _STYPES or (magic == _V3 and stype != 0):
            raise FormatError(f"{where}: {what} has storage type {stype} (0, 1 or 2 expected)")
        if stype:
            sshape = _known(cur.shape(f"storage shape of {what}"), what, where)
        shape = cur.shape(what)
        # V2: ndim 0 means "none"; V3 (numpy semantics): an unknown dim does, and 0-d is real.
        if (magic == _V2 and shape == ()) or (magic == _V3 and -1 in shape):
            return None
    elif magic == _V1:
        # Writers of V1 and pre-V1 records stored a "none" array as ndim 0 and nothing else.
        shape = cur.shape(what)
        if shape == ():
            return None
    else:  # pre-V1 legacy record: the first word is the ndim, then u32 dims
        if magic > _MAX_NDIM:
            raise FormatError(f"{where}: {what} starts with unknown magic 0x{magic:08X}")
        shape = cur.shape(what, ndim=magic, code="I")
        if shape == ():
            return None
    shape = _known(shape, what, where)
    cur.take(8, f"context of {what}")  # i32 dev_type, i32 dev_id: every array loads to CPU
    dt = _dtype(cur.num("i", f"type flag of {what}"), what, where)
    aux: list[tuple[dtypes.DType, tuple[int, ...]]] = []
    for part in _AUX.get(stype, ()):
        adt = _dtype(cur.num("i", f"{part} type of {what}"), what, where)
        if adt.floating or adt.name == "bool":
            raise FormatError(f"{where}: {what} stores its {part} as {adt.name}, not integers")
        aux.append((adt, _known(cur.shape(f"{part} shape of {what}"), what, where)))
    if stype:  # all shapes are known now: check they agree before reading any data
        _check_sparse(stype, shape, sshape or (), [s for _, s in aux], what=what, w=where)
    data = _array(cur, dt, sshape if sshape is not None else shape, f"{what} data")
    if not stype:
        return data
    parts = {
        p: _array(cur, t, s, f"{what} {p}") for p, (t, s) in zip(_AUX[stype], aux, strict=True)
    }
    # Key order as mxnet's own accessors list them: data, indices, indptr.
    return {"stype": _STYPES[stype], "shape": shape, "data": data} | dict(sorted(parts.items()))


def _known(shape: tuple[int, ...], what: str, where: str) -> tuple[int, ...]:
    if any(not 0 <= n < 2**63 for n in shape) or math.prod(shape) >= 2**63:
        raise FormatError(f"{where}: {what} has invalid dimensions {list(shape)}")
    return shape


def _dtype(flag: int, what: str, where: str) -> dtypes.DType:
    if not 0 <= flag < len(_TYPE_FLAGS):
        raise FormatError(f"{where}: {what} has unknown type flag {flag} (0..12 expected)")
    return dtypes.get(_TYPE_FLAGS[flag])


def _array(cur: _Cursor, dt: dtypes.DType, shape: tuple[int, ...], what: str) -> ArrayRef:
    raw = cur.take(math.prod(shape) * dt.itemsize, what)
    return make_ref(Storage(raw, what), dt, shape, where=f"{cur.where}: {what}")


def _check_sparse(
    stype: int,
    shape: tuple[int, ...],
    sshape: tuple[int, ...],
    aux: list[Any],
    *,
    what: str,
    w: str,
) -> None:
    if stype == 1:  # row_sparse: storage (stored_rows, *shape[1:]); indices (stored_rows,)
        ok = len(shape) >= 1 and sshape[1:] == shape[1:] and len(sshape) == len(shape)
        ok = ok and aux[0] == sshape[:1] and sshape[0] <= shape[0]
    else:  # csr: 2-d; storage (nnz,); indptr (rows + 1,) or empty when nothing is stored
        ok = len(shape) == 2 and len(sshape) == 1 and aux[1] == sshape
        ok = ok and (aux[0] == (shape[0] + 1,) or (aux[0] == (0,) and sshape == (0,)))
    if not ok:
        raise FormatError(
            f"{w}: {what} is {_STYPES[stype]} {list(shape)} with storage {list(sshape)} and "
            f"index shapes {[list(a) for a in aux]}, which do not fit together"
        )


def read_list(buf: U8Array, *, where: str) -> dict[str, Any] | list[Any]:
    """A ``kMXAPINDArrayListMagic`` file: a dict when it stores names, else a list.

    Raises:
        FormatError: bad magic, counts that do not fit the file, bad records, duplicate names,
            bytes after the names.
    """
    cur = _Cursor(buf, where)
    if len(buf) < 24 or cur.num("Q", "magic") != LIST_MAGIC:
        raise FormatError(f"{where}: not an MXNet NDArray file (no 0x112 list magic)")
    cur.num("Q", "reserved word")  # written as 0, never checked by MXNet
    n = cur.num("Q", "array count")
    if n * _LEGACY_MIN > len(buf) - cur.pos:  # rule N1
        raise FormatError(f"{where}: array count {n} cannot fit in a {len(buf)}-byte file")
    arrays = [read_record(cur, f"array {i}") for i in range(n)]
    n_names = cur.num("Q", "name count")
    if n_names not in (0, n):
        raise FormatError(f"{where}: {n_names} names for {n} arrays (0 or {n} expected)")
    names: list[str] = []
    for i in range(n_names):
        size = cur.num("Q", f"length of name {i}")
        try:
            names.append(cur.take(size, f"name {i}").tobytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise FormatError(f"{where}: name {i} is not valid UTF-8") from e
    if cur.pos != len(buf):
        raise FormatError(f"{where}: {len(buf) - cur.pos} unexplained bytes after the names")
    if not n_names:
        return arrays
    if len(set(names)) != n:
        dup = next(x for x in names if names.count(x) > 1)
        raise FormatError(f"{where}: array name {dup!r} appears twice")
    return dict(zip(names, arrays, strict=True))


# -- trainer states: a pickle of (states, optimizer) --------------------------------------------
class _NDArrayStub(Buildable):
    """What ``NDArray(None)`` stands for until BUILD hands it ``{'handle': <record bytes>}``."""

    def __init__(self) -> None:
        self.value: Any = None
        self.built = False

    def build(self, state: Any, *, where: str) -> None:
        if self.built or not isinstance(state, dict) or set(state) != {"handle"}:
            raise FormatError(f"{where}: pickled NDArray state is not one {{'handle': bytes}}")
        handle = state["handle"]
        self.built = True
        if handle is None:
            return
        if not isinstance(handle, (bytes, bytearray)):
            raise FormatError(f"{where}: pickled NDArray handle is a {type(handle).__name__}")
        # A bytearray is already this stand-in's own copy: view it (bytes are copied once).
        raw = handle if isinstance(handle, bytearray) else bytearray(handle)
        cur = _Cursor(np.frombuffer(raw, dtype=np.uint8), f"{where}: NDArray")
        self.value = read_record(cur, "pickled record")
        if cur.pos != len(handle):
            raise FormatError(f"{where}: {len(handle) - cur.pos} bytes after a pickled record")


class _ObjectStub(Buildable):
    """An allowlisted class instance (optimizer, LR scheduler): only its ``__dict__`` is kept."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state: dict[str, Any] | None = None

    def build(self, state: Any, *, where: str) -> None:
        if self.state is not None or not isinstance(state, dict):
            raise FormatError(f"{where}: {self.name} state is not one dict")
        if not all(isinstance(k, str) for k in state):
            raise FormatError(f"{where}: {self.name} state has non-string attribute names")
        self.state = state


_Stub = (_NDArrayStub, _ObjectStub)


def _ndarray(*args: Any, where: str) -> _NDArrayStub:
    if args not in ((), (None,)):
        raise FormatError(f"{where}: NDArray rebuilt with arguments {str(args)[:60]}")
    return _NDArrayStub()


def _bytearray(*args: Any, where: str) -> bytearray:
    # Protocol 3+: bytearray(bytes); protocols 0-2: bytearray(str, 'latin-1').
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1"):
        return bytearray(args[0].encode("latin-1"))
    raise FormatError(f"{where}: bytearray called with unexpected arguments")


def _object(name: str) -> Global:
    def new(*args: Any, where: str) -> _ObjectStub:
        if args:
            raise FormatError(f"{where}: {name} created with arguments; expected none")
        return _ObjectStub(name)

    return Global(name, new=new)


def _reconstructor(cls: Any, base: Any, state: Any, *, where: str) -> _ObjectStub:
    # Protocols 0-1 spell ``object.__new__(cls)`` as copyreg._reconstructor(cls, object, None).
    if not isinstance(cls, Global) or cls.new is None or base is not _OBJECT or state is not None:
        raise UnsafeContentError(f"{where}: copyreg._reconstructor of {cls!r} is refused")
    stub: _ObjectStub = cls.new(where=where)
    return stub


def _build_allowlist() -> dict[tuple[str, str], Global]:
    nd = Global("mxnet.ndarray.ndarray.NDArray", call=_ndarray)
    table = {
        ("mxnet.ndarray.ndarray", "NDArray"): nd,
        ("mxnet.numpy.multiarray", "ndarray"): nd,
        ("builtins", "bytearray"): Global("bytearray", call=_bytearray),
        ("builtins", "object"): _OBJECT,
        ("copyreg", "_reconstructor"): Global("copyreg._reconstructor", call=_reconstructor),
        ("collections", "OrderedDict"): TORCH[("collections", "OrderedDict")],
        ("_codecs", "encode"): TORCH[("_codecs", "encode")],
    }
    for name in _OPTIMIZERS:
        table[("mxnet.optimizer.optimizer", name)] = _object(f"mxnet.optimizer.optimizer.{name}")
    for name in _SCHEDULERS:
        table[("mxnet.lr_scheduler", name)] = _object(f"mxnet.lr_scheduler.{name}")
    return table


_OBJECT = Global("builtins.object")
_OPTIMIZERS = (
    "Optimizer", "SGD", "Signum", "FTML", "LARS", "LBSGD", "DCASGD", "NAG", "SGLD", "ccSGD",
    "Adam", "AdaGrad", "RMSProp", "AdaDelta", "Ftrl", "Adamax", "Nadam", "LAMB",
)  # fmt: skip
_SCHEDULERS = (
    "LRScheduler", "FactorScheduler", "MultiFactorScheduler", "PolyScheduler", "CosineScheduler",
)  # fmt: skip
ALLOWED = _build_allowlist()


def read_states(buf: U8Array, *, where: str) -> Any:
    """What ``pickle.loads`` of a ``.states`` file gives under MXNet, without running it.

    Raises:
        UnsafeContentError: a global outside the allowlist (the message names it).
        FormatError: a malformed pickle or NDArray record.
    """
    value = unpickle(buf.data, where=where, allowed=ALLOWED, leaves=_Stub).value
    return _resolve(value, where, {}, 0)


def _resolve(x: Any, where: str, memo: dict[int, Any], depth: int) -> Any:
    """Replace stand-ins by arrays and dicts; shared containers stay shared."""
    if depth > MAX_DEPTH:
        raise FormatError(f"{where}: structure nested deeper than {MAX_DEPTH} levels")
    if id(x) in memo:
        return memo[id(x)]
    out: Any
    if isinstance(x, _NDArrayStub):
        if not x.built:
            raise FormatError(f"{where}: a pickled NDArray never received its handle")
        out = x.value
    elif isinstance(x, _ObjectStub):
        out = {}
        memo[id(x)] = out
        for k, v in (x.state or {}).items():
            out[k] = _resolve(v, where, memo, depth + 1)
        if x.name.startswith("mxnet.optimizer."):
            out.setdefault("param_dict", {})  # Optimizer.__setstate__ sets it after the state
        return out
    elif isinstance(x, dict):
        out = OrderedDict() if isinstance(x, OrderedDict) else {}
        memo[id(x)] = out
        for k, v in x.items():
            if isinstance(k, _Stub):
                raise FormatError(f"{where}: an array or object is used as a dict key")
            out[k] = _resolve(v, where, memo, depth + 1)
        return out
    elif isinstance(x, list):
        out = []
        memo[id(x)] = out
        out.extend(_resolve(v, where, memo, depth + 1) for v in x)
        return out
    elif isinstance(x, tuple):
        out = tuple(_resolve(v, where, memo, depth + 1) for v in x)
    elif isinstance(x, (set, frozenset)) and any(isinstance(v, _Stub) for v in x):
        raise FormatError(f"{where}: an array or object is stored in a set")
    else:
        return x
    memo[id(x)] = out
    return out


# -- registry hooks -----------------------------------------------------------------------------
_STATE_MARKERS = (b"mxnet.ndarray", b"mxnet.optimizer", b"mxnet.numpy")


def sniff(probe: Probe) -> bool:
    """The list magic, a pickle whose opening bytes name MXNet classes (trainer states), or
    nnvm graph JSON (a ``-symbol.json``)."""
    head = probe.head
    if probe.is_dir:
        return False
    if head[:8] == LIST_MAGIC.to_bytes(8, "little"):
        return True
    if sniff_symbol(head):
        return True
    return head[:1] in (b"\x80", b"(") and any(m in head for m in _STATE_MARKERS)


def read(path: Path, *, verify: bool = True) -> Any:
    """A list file as dict or list, trainer states as ``(states, optimizer_dict)``, or a
    symbol graph as ``{"list_arguments", "list_auxiliary_states", "list_outputs", "nodes"}``."""
    data = map_file(path)
    where = str(path)
    if bytes(data[:8]) == LIST_MAGIC.to_bytes(8, "little"):
        return read_list(data, where=where)
    if sniff_symbol(bytes(data[:4096])):
        if data.nbytes > MAX_SYMBOL:
            raise FormatError(f"{where}: symbol JSON larger than {MAX_SYMBOL} bytes")
        return read_symbol(data.tobytes(), where=where)
    return read_states(data, where=where)
