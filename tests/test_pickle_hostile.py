"""The hostile-pickle matrix (docs/formats.md#hostile-pickles): payloads x every container read.

Each payload is a pickle that would run code, import modules, confuse a scanner, or exhaust
memory or time if ``pickle.load`` (or a careless interpreter) read it. Payloads come from two
sources: the standard library's own pickler at protocols 0-5 (``__reduce__`` objects, with a
pickler subclass that can name any global, so ``posix.system``, ``nt.system``,
``torch.serialization.load`` and friends need not be importable here), and hand-assembled
opcode streams for everything a pickler never writes (INST/OBJ/EXT, BUILD-as-setattr, NEWOBJ of
non-classes, SETITEM on non-dicts, memo tricks behind STACK_GLOBAL, execute-then-break streams,
huge lengths and memo indices in tiny files, billion-laughs memos, deep nesting).

Every payload is delivered in every container satchel reads: a bare pickle file (recognised by
no reader), ``archive/data.pkl`` in a torch zip, the object pickle and the sys_info pickle of a
legacy torch stream, OneFlow ``pickled_data`` in a folder, a OneFlow single file (with the
``__oneflow__`` key so it is detected), an MXNet trainer-states pickle, and an object-dtype
``.npy`` (alone and inside an ``.npz``). Each batch runs in a fresh interpreter (audit hooks cannot
be removed) under ``RLIMIT_AS``, with ``sys.addaudithook`` recording process spawns, ``exec``,
``compile``, imports of new modules, ``pickle.find_class``, ``marshal.loads`` and any ``open``
of the canary path; the canary file must never appear. A positive control shows the same hook
and canary do see ``pickle.loads`` executing a payload.

Expected outcome per case: ``UnsafeContentError`` for payloads that ask for code (in a container
that interprets pickles; a bare pickle is not recognised, so some ``SatchelError``; an object
``.npy`` is always ``UnsafeContentError``); for malformed streams some ``SatchelError`` subclass
(recorded); for resource payloads any ``SatchelError`` or a result, within bounded time and
memory. Never an exception outside ``SatchelError``, never an audit event, never the canary.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import operator
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from fixture_truth import FIXTURES

SRC = Path(__file__).resolve().parents[1] / "src"
MEMORY_HEADROOM = 768 << 20  # RLIMIT_AS above the worker's size after its imports
MAX_RSS_GROWTH_KB = 256 << 10  # per case
MAX_SECONDS = 10.0  # per case

Expect = Literal["unsafe", "malformed", "bounded"]


@dataclass(frozen=True)
class Payload:
    """``stream_level``: malformed only as a whole stream (a missing STOP, an unbalanced
    stack), so embedding it as a value inside another pickle may make it valid."""

    name: str
    data: bytes
    expect: Expect
    stream_level: bool = False


# -- a pickler that can name any global ---------------------------------------------------------
class Ref:
    """A global named by module and name; pickled as GLOBAL/STACK_GLOBAL without importing it."""

    __name__ = "Ref"

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle checks callable(); never called
        raise AssertionError("a Ref is never called")


class Call:
    """An object whose ``__reduce__`` is ``(func, args)``: unpickling calls ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args

    def __call__(self, *args: Any) -> Any:  # pickle checks callable(); never called
        raise AssertionError("a Call is never called")


class _AnyGlobalPickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """The stdlib's Python pickler, writing :class:`Ref` globals verbatim."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, Ref):
            if id(obj) in self.memo:
                self.write(self.get(self.memo[id(obj)][0]))
                return
            if self.proto >= 4:
                self.save(obj.module)
                self.save(obj.name)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save(obj, save_persistent_id)


def dumps(obj: Any, proto: int) -> bytes:
    buf = io.BytesIO()
    _AnyGlobalPickler(buf, protocol=proto).dump(obj)
    return buf.getvalue()


# -- hand-assembled opcode helpers ----------------------------------------------------------------
def u(text: str) -> bytes:
    """BINUNICODE."""
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def g(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL from two strings."""
    return u(module) + u(name) + b"\x93"


P2 = b"\x80\x02"
P4 = b"\x80\x04"


def reduce_gadgets(canary: str) -> dict[str, Any]:
    """Callables that run code, spawn processes, import or re-enter a loader (rule P1)."""
    cmd = f"touch {canary}"
    py = f"open({canary!r}, 'w').close()"
    code = compile(py, "<payload>", "exec")
    import marshal

    inner = dumps(Call(Ref("posix", "system"), cmd), 2)
    evil_file = canary + ".evil.pkl"
    return {
        "os.system": Call(Ref("os", "system"), cmd),
        "posix.system": Call(Ref("posix", "system"), cmd),
        "nt.system": Call(Ref("nt", "system"), cmd),
        "builtins.eval": Call(Ref("builtins", "eval"), py),
        "builtins.exec": Call(Ref("builtins", "exec"), py),
        "__builtin__.eval": Call(Ref("__builtin__", "eval"), py),
        "builtins.open": Call(Ref("builtins", "open"), canary, "w"),
        "builtins.__import__": Call(
            Call(Ref("builtins", "getattr"), Call(Ref("builtins", "__import__"), "os"), "system"),
            cmd,
        ),
        "subprocess.Popen": Call(Ref("subprocess", "Popen"), ["touch", canary]),
        "subprocess.check_output": Call(Ref("subprocess", "check_output"), ["touch", canary]),
        "os.execv": Call(Ref("os", "execv"), "/usr/bin/touch", ["touch", canary]),
        "os.posix_spawn": Call(Ref("os", "posix_spawnp"), 0, "touch", ["touch", canary], {}),
        "importlib.import_module": Call(
            Call(
                Ref("builtins", "getattr"), Call(Ref("importlib", "import_module"), "os"), "system"
            ),
            cmd,
        ),
        "pkgutil.resolve_name": Call(Call(Ref("pkgutil", "resolve_name"), "os:system"), cmd),
        "operator.attrgetter": Call(
            Call(Ref("operator", "attrgetter"), "system"),
            Call(Ref("importlib", "import_module"), "os"),
        ),
        "operator.methodcaller": Call(
            Call(Ref("operator", "methodcaller"), "system", cmd),
            Call(Ref("importlib", "import_module"), "os"),
        ),
        "functools.partial": Call(Call(Ref("functools", "partial"), Ref("posix", "system"), cmd)),
        "pickle.loads": Call(Ref("pickle", "loads"), inner),
        "_pickle.loads": Call(Ref("_pickle", "loads"), inner),
        "marshal.loads+FunctionType": Call(
            Call(
                Ref("types", "FunctionType"), Call(Ref("marshal", "loads"), marshal.dumps(code)), {}
            )
        ),
        "torch.load": Call(Ref("torch", "load"), evil_file),
        "torch.serialization.load": Call(
            Ref("torch.serialization", "load"), evil_file, None, None, False
        ),
        "torch.jit.load": Call(Ref("torch.jit", "load"), evil_file),
        "torch.utils.collect_env.run": Call(Ref("torch.utils.collect_env", "run"), cmd),
        "torch._utils.unknown": Call(Ref("torch._utils", "_rebuild_xla_tensor"), cmd),
        "numpy.load": Call(Ref("numpy", "load"), evil_file, None, True),
        "numpy.testing.runstring": Call(Ref("numpy.testing._private.utils", "runstring"), py, {}),
        "timeit.timeit": Call(Ref("timeit", "timeit"), py, "pass", Ref("time", "perf_counter"), 1),
        "cProfile.run": Call(Ref("cProfile", "run"), py),
        "site.execsitecustomize": Call(Ref("site", "execsitecustomize")),
        "picklescan.scan": Call(Ref("importlib", "import_module"), "picklescan"),
        "joblib.load": Call(Ref("joblib", "load"), evil_file),
        "numpy object array": _object_array(Call(Ref("posix", "system"), cmd)),
        "copyreg._reconstructor": Call(
            Ref("copy_reg", "_reconstructor"), Ref("os", "system"), Ref("builtins", "object"), None
        ),
        "collections.OrderedDict.attr": Call(Ref("collections", "OrderedDict.__init__"), cmd),
        "torch._utils.dotted": Call(Ref("torch._utils", "_rebuild_tensor_v2.__globals__"), cmd),
    }


def _object_array(item: Any) -> Any:
    import numpy as np

    arr = np.empty(1, dtype=object)
    arr[0] = item
    return arr


def real_pickle_gadgets(canary: str) -> dict[str, Any]:
    """Genuine ``__reduce__`` objects pickled by the C pickler (globals resolved for real)."""
    cmd = f"touch {canary}"

    class System:
        def __reduce__(self) -> tuple[Any, ...]:
            return os.system, (cmd,)

    class Eval:
        def __reduce__(self) -> tuple[Any, ...]:
            return eval, (f"open({canary!r}, 'w').close()",)

    class Popen:
        def __reduce__(self) -> tuple[Any, ...]:
            return subprocess.Popen, (["touch", canary],)

    return {
        "real:os.system": System(),
        "real:eval": Eval(),
        "real:subprocess.Popen": Popen(),
        "real:functools.partial": functools.partial(os.system, cmd),
        "real:operator.attrgetter": operator.attrgetter("system"),
        "real:collections.Counter": collections.Counter({"x": System()}),
    }


def handmade(canary: str) -> list[Payload]:
    """Opcode streams a pickler never writes (rules P1-P6 and P8)."""
    cmd = f"touch {canary}"
    system = g("posix", "system") + u(cmd) + b"\x85R"
    od = g("collections", "OrderedDict")
    out = [
        # P2: INST / OBJ refused as opcodes, also with an allowlisted class.
        Payload("INST os.system", b"(" + u(cmd) + b"ios\nsystem\n.", "unsafe"),
        Payload("INST proto0 text", f"(S'{cmd}'\nios\nsystem\n.".encode(), "unsafe"),
        Payload("INST allowed class", b"(icollections\nOrderedDict\n.", "unsafe"),
        Payload("OBJ os.system", b"(" + g("os", "system") + u(cmd) + b"o.", "unsafe"),
        Payload("OBJ allowed class", P2 + b"(" + od + b"o.", "unsafe"),
        # copyreg extension registry: EXT1/2/4 name globals by number.
        Payload("EXT1", P2 + b"\x82\x01" + u(cmd) + b"\x85R.", "unsafe"),
        Payload("EXT2", P2 + b"\x83\x01\x00)R.", "unsafe"),
        Payload("EXT4", P2 + b"\x84\x01\x00\x00\x00)R.", "unsafe"),
        Payload("NEXT_BUFFER", b"\x80\x05\x97.", "unsafe"),
        Payload("READONLY_BUFFER", b"\x80\x05\x97\x98.", "unsafe"),
        # P1: STACK_GLOBAL names from the memo; a static scan of the first PUT sees torch._utils.
        Payload(
            "STACK_GLOBAL posix.system", P4 + sg("posix", "system") + u(cmd) + b"\x85R.", "unsafe"
        ),
        Payload(
            "STACK_GLOBAL memo overwrite",
            P4
            + u("torch._utils")
            + b"q\x000"
            + u("posix")
            + b"q\x000"  # memo[0] is now 'posix'
            + b"h\x00"
            + u("system")
            + b"\x93"
            + u(cmd)
            + b"\x85R.",
            "unsafe",
        ),
        Payload(
            "STACK_GLOBAL mixed MEMOIZE/BINPUT",
            P4
            + u("collections")
            + b"\x94"  # MEMOIZE -> 0
            + u("OrderedDict")
            + b"\x94"  # -> 1
            + b"00"
            + u("os")
            + b"q\x00"  # BINPUT 0 overwrites
            + u("system")
            + b"q\x010h\x00h\x01\x93"
            + u(cmd)
            + b"\x85R.",
            "unsafe",
        ),
        Payload("STACK_GLOBAL non-str names", P4 + b"K\x01K\x02\x93.", "malformed"),
        # P3: BUILD used as setattr on allowlisted objects and on plain containers.
        Payload("BUILD setattr on global", P2 + od + b"}" + u("a") + u("os") + b"sb.", "unsafe"),
        Payload(
            "BUILD setattr on rebuild fn",
            P2
            + g("torch._utils", "_rebuild_tensor_v2")
            + b"}"
            + u("__module__")
            + u("os")
            + b"sb.",
            "unsafe",
        ),
        Payload(
            "BUILD __class__ on OrderedDict",
            P2 + od + b")R}" + u("__class__") + u("x") + b"sb.",
            "unsafe",
        ),
        Payload("BUILD slotstate on OrderedDict", P2 + od + b")R(}}tb.", "unsafe"),
        Payload("BUILD on list", P2 + b"]}" + u("append") + u("x") + b"sb.", "unsafe"),
        Payload("BUILD on dict", P2 + b"}}" + u("k") + u("v") + b"sb.", "unsafe"),
        Payload("BUILD on str", P2 + u("x") + b"}" + u("k") + u("v") + b"sb.", "unsafe"),
        # P3: NEWOBJ / NEWOBJ_EX of things that are not allowed classes.
        Payload("NEWOBJ builtins.object", P2 + g("builtins", "object") + b")\x81.", "unsafe"),
        Payload("NEWOBJ storage type", P2 + g("torch", "FloatStorage") + b")\x81.", "unsafe"),
        Payload(
            "NEWOBJ Parameter", P2 + g("torch.nn.parameter", "Parameter") + b")\x81.", "unsafe"
        ),
        Payload("NEWOBJ torch.Tensor", P2 + g("torch", "Tensor") + b")\x81.", "unsafe"),
        Payload("NEWOBJ str", P2 + u("posix") + b")\x81.", "unsafe"),
        Payload("NEWOBJ_EX os.system", P4 + g("os", "system") + b")}\x92.", "unsafe"),
        # REDUCE on things that are not allowed callables.
        Payload("REDUCE on str", P2 + u("posix.system") + u(cmd) + b"\x85R.", "unsafe"),
        Payload("REDUCE on dict", P2 + b"}" + b")R.", "unsafe"),
        Payload("REDUCE on dtype value", P2 + g("torch", "float32") + b")R.", "unsafe"),
        Payload(
            "REDUCE on Parameter class",
            P2 + g("torch.nn.parameter", "Parameter") + b")R.",
            "unsafe",
        ),
        Payload(
            "REDUCE rebuild_from_type_v2 with a value",
            P2
            + g("torch._tensor", "_rebuild_from_type_v2")
            + b"("
            + g("torch", "float32")
            + b"N)Nt"
            + b"R.",
            "unsafe",
        ),
        # P4: SETITEM(S)/APPEND(S)/ADDITEMS on the wrong targets.
        Payload("SETITEM on global", P2 + g("torch", "FloatStorage") + b"K\x01K\x02s.", "unsafe"),
        Payload("SETITEM on class", P2 + od + b"K\x01K\x02s.", "unsafe"),
        Payload("SETITEM on list", P2 + b"]K\x01K\x02s.", "unsafe"),
        Payload("SETITEMS on tuple", P2 + b")(K\x01K\x02u.", "unsafe"),
        Payload("SETITEMS on str", P2 + u("s") + b"(K\x01K\x02u.", "unsafe"),
        Payload("APPEND on dict", P2 + b"}K\x01a.", "unsafe"),
        Payload("APPENDS on OrderedDict", P2 + od + b")R(K\x01e.", "unsafe"),
        Payload("APPEND on global", P2 + od + b"K\x01a.", "unsafe"),
        Payload("ADDITEMS on list", P4 + b"](K\x01\x90.", "unsafe"),
        # P5: persistent ids that are not storages.
        Payload("PERSID text", b"P0\n.", "unsafe"),
        Payload("BINPERSID module", P2 + b"(" + u("module") + g("os", "system") + b"tQ.", "unsafe"),
        Payload("BINPERSID str", P2 + u("storage") + b"Q.", "unsafe"),
        Payload(
            "BINPERSID storage path escape",
            P2
            + b"("
            + u("storage")
            + g("torch", "FloatStorage")
            + u("../../../etc/passwd")
            + u("cpu")
            + b"K\x04tQ.",
            "malformed",
        ),
        Payload(
            "BINPERSID storage huge numel",
            P2
            + b"("
            + u("storage")
            + g("torch", "FloatStorage")
            + u("0")
            + u("cpu")
            + b"\x8a\x08"
            + (2**62).to_bytes(8, "little")
            + b"tQ.",
            "malformed",
        ),
        # P6: execute-then-break: the payload first, then a stream no parser can finish.
        Payload("exec-then-break GLOBAL", P2 + system + b"\xff\xfe\xfd garbage", "unsafe"),
        Payload(
            "exec-then-break STACK_GLOBAL",
            P4 + sg("posix", "system") + u(cmd) + b"\x85R" + b"\x00" * 7,
            "unsafe",
        ),
        Payload(
            "exec-then-break INST",
            b"(" + u(cmd) + b"ios\nsystem\n" + b"X\xff\xff\xff\xff",
            "unsafe",
        ),
        Payload("exec-then-break unbalanced", P2 + system + b"0000000.", "unsafe"),
        Payload("exec after valid prefix", P2 + b"}" + u("w") + system + b"s.", "unsafe"),
        # P8: tiny files declaring huge memo indices and lengths.
        Payload(
            "LONG_BINPUT 2**32-1 then missing GET", P2 + b"]r\xff\xff\xff\xffh\x05.", "malformed"
        ),
        Payload(
            "LONG_BINPUT 2**32-1 then system", P2 + b"]r\xff\xff\xff\xff0" + system + b".", "unsafe"
        ),
        Payload("LONG_BINPUT 2**32-1 valid", P2 + b"]r\xff\xff\xff\xff.", "bounded"),
        Payload("LONG_BINGET 2**32-1", P2 + b"j\xff\xff\xff\xff.", "malformed"),
        Payload("PUT text huge index", b"(lp99999999999999999999\n.", "bounded"),
        Payload(
            "BINUNICODE8 2**63", P4 + b"\x8d" + (2**63).to_bytes(8, "little") + b"ab.", "malformed"
        ),
        Payload("BINUNICODE8 2**64-1", P4 + b"\x8d" + b"\xff" * 8 + b"ab.", "malformed"),
        Payload(
            "BINBYTES8 2**62", P4 + b"\x8e" + (2**62).to_bytes(8, "little") + b"ab.", "malformed"
        ),
        Payload(
            "BYTEARRAY8 2**62",
            b"\x80\x05\x96" + (2**62).to_bytes(8, "little") + b"ab.",
            "malformed",
        ),
        Payload("BINUNICODE 2**32-1", P2 + b"X\xff\xff\xff\xffab.", "malformed"),
        Payload("BINBYTES 2**32-1", b"\x80\x03B\xff\xff\xff\xffab.", "malformed"),
        Payload("BINSTRING negative", P2 + b"T\xff\xff\xff\xffab.", "malformed"),
        Payload("LONG4 2**31-1", P2 + b"\x8b\xff\xff\xff\x7fab.", "malformed"),
        Payload("LONG text 100k digits", b"L" + b"9" * 100_000 + b"L\n.", "malformed"),
        Payload("INT text no newline", b"I" + b"1" * 200_000, "malformed"),
        Payload("FRAME 2**63", P4 + b"\x95" + (2**63).to_bytes(8, "little") + b"N.", "bounded"),
        # P8: billion laughs through the memo; bounded time everywhere.
        Payload("billion laughs list", _laughs(b"(", b"l", 9, 10), "bounded"),
        Payload("billion laughs tuple", _laughs(b"(", b"t", 9, 10), "bounded"),
        Payload("billion laughs dict", _laughs_dict(9, 10), "bounded"),
        Payload("DUP flood", P2 + b"N" + b"2" * 200_000 + b".", "malformed", stream_level=True),
        Payload("MARK flood", P2 + b"(" * 200_000 + b"N.", "malformed"),
        # Deep nesting (rule P8): a clean error or a value, never RecursionError.
        Payload("deep list nesting", P2 + b"(" * 100_000 + b"]" + b"l" * 100_000 + b".", "bounded"),
        Payload("deep tuple nesting", P2 + b"N" + b"\x85" * 100_000 + b".", "bounded"),
        Payload("deep dict nesting", _deep_dict(50_000), "bounded"),
        # Stream structure.
        Payload("empty", b"", "malformed"),
        Payload("no STOP", P2 + b"N", "malformed", stream_level=True),
        Payload("STOP on empty stack", P2 + b".", "malformed"),
        Payload("unknown opcode", P2 + b"\xff.", "malformed"),
        Payload("POP_MARK without MARK", P2 + b"1.", "malformed"),
        Payload("GET unset", P2 + b"h\x07.", "malformed"),
        Payload("odd SETITEMS", P2 + b"}(K\x01u.", "malformed"),
        Payload("unhashable key", P2 + b"}]K\x01s.", "malformed"),
        Payload("STRING unquoted", b"Sabc\n.", "malformed"),
        # Allowlisted callables used to allocate: bytearray(2**40) is 1 TiB of zeros.
        Payload(
            "bytearray(2**40)",
            P2
            + g("builtins", "bytearray")
            + b"\x8a\x06"
            + (2**40).to_bytes(6, "little")
            + b"\x85R.",
            "bounded",
        ),
        Payload(
            "bytearray(2**62)",
            P2
            + g("builtins", "bytearray")
            + b"\x8a\x08"
            + (2**62).to_bytes(8, "little")
            + b"\x85R.",
            "bounded",
        ),
        Payload(
            "_codecs.encode utf-8",
            P2 + g("_codecs", "encode") + u("x") + u("utf-8") + b"\x86R.",
            "malformed",
        ),
        Payload(
            "rebuild_tensor from a str",
            P2
            + g("torch._utils", "_rebuild_tensor_v2")
            + b"("
            + u("storage")
            + b"K\x00(K\x01t(K\x01t\x89"
            + od
            + b")Rt"
            + b"R.",
            "malformed",
        ),
        # Name tricks around allowlisted modules.
        Payload(
            "trailing space module", P2 + g("torch._utils ", "_rebuild_tensor_v2") + b".", "unsafe"
        ),
        Payload("NUL in name", P2 + b"ctorch\x00\nload\n.", "unsafe"),
        Payload("newline-split name", P2 + g("torch", "load") + b".", "unsafe"),
        Payload("builtins.getattr", P2 + g("builtins", "getattr") + b".", "unsafe"),
        Payload(
            "collections.defaultdict", P2 + g("collections", "defaultdict") + b"N\x85R.", "unsafe"
        ),
        Payload(
            "collections.namedtuple",
            P2 + g("collections", "namedtuple") + u("T") + u("a") + b"\x86R.",
            "unsafe",
        ),
        # NumPy stand-ins (allowlisted for OneFlow single files): only numeric arrays.
        Payload(
            "numpy._reconstruct of dtype class",
            P2
            + g("numpy.core.multiarray", "_reconstruct")
            + g("numpy", "dtype")
            + b"(K\x00t"
            + u("b")
            + b"\x87R.",
            "unsafe",
        ),
        Payload(
            "numpy object dtype", P2 + g("numpy", "dtype") + u("O8") + b"\x89\x88\x87R.", "unsafe"
        ),
        Payload(
            "numpy unicode dtype", P2 + g("numpy", "dtype") + u("U8") + b"\x89\x88\x87R.", "unsafe"
        ),
        Payload(
            "numpy array with str dtype",
            P2
            + g("numpy.core.multiarray", "_reconstruct")
            + g("numpy", "ndarray")
            + b"(K\x00t"
            + u("b")
            + b"\x87R"
            + b"(K\x01(K\x01t"
            + u("O")
            + b"\x89]"
            + u("harmless")
            + b"atb.",
            "unsafe",
        ),
    ]
    return out


def _laughs(open_: bytes, close: bytes, depth: int, fan: int) -> bytes:
    """memo[0] = 'lol'; memo[i+1] = container of ``fan`` x memo[i] (``fan**depth`` leaves)."""
    out = P2 + u("lol") + b"q\x000"
    for i in range(depth):
        out += open_ + (b"h" + bytes([i])) * fan + close + b"q" + bytes([i + 1]) + b"0"
    return out + b"h" + bytes([depth]) + b"."


def _laughs_dict(depth: int, fan: int) -> bytes:
    out = P2 + u("lol") + b"q\x000"
    for i in range(depth):
        items = b"".join(u(f"k{j}") + b"h" + bytes([i]) for j in range(fan))
        out += b"}(" + items + b"uq" + bytes([i + 1]) + b"0"
    return out + b"h" + bytes([depth]) + b"."


def _deep_dict(depth: int) -> bytes:
    # {'k': {'k': ... None ...}}: push (dict, key) pairs, then SETITEM from the inside out.
    return P2 + (b"}" + u("k")) * depth + b"N" + b"s" * depth + b"."


def build_payloads(canary: str) -> list[Payload]:
    payloads: list[Payload] = []
    for name, obj in reduce_gadgets(canary).items():
        for proto in range(6):
            payloads.append(Payload(f"{name} p{proto}", dumps(obj, proto), "unsafe"))
    for name, obj in real_pickle_gadgets(canary).items():
        for proto in range(6):
            payloads.append(
                Payload(f"{name} p{proto}", pickle.dumps(obj, protocol=proto), "unsafe")
            )
    payloads.extend(handmade(canary))
    names = [p.name for p in payloads]
    assert len(names) == len(set(names)), "payload names must be unique"
    return payloads


# -- containers ------------------------------------------------------------------------------------
def _body(data: bytes) -> bytes:
    """The payload without PROTO/FRAME and the final STOP, to embed inside another pickle."""
    if data[:1] == b"\x80":
        data = data[2:]
    if data[:1] == b"\x95":
        data = data[9:]
    return data[:-1] if data.endswith(b".") else data


def _torch_zip(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/version", b"3\n")
    return path


_LEGACY_MAGIC = P2 + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
_LEGACY_PROTO = P2 + b"M\xe9\x03."
_SYS_INFO = pickle.dumps(
    {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    },
    protocol=2,
)
_EMPTY_KEYS = P2 + b"]."


def _legacy(path: Path, data: bytes) -> Path:
    path.write_bytes(_LEGACY_MAGIC + _LEGACY_PROTO + _SYS_INFO + data + _EMPTY_KEYS)
    return path


def _legacy_sysinfo(path: Path, data: bytes) -> Path:
    path.write_bytes(_LEGACY_MAGIC + _LEGACY_PROTO + data + P2 + b"}." + _EMPTY_KEYS)
    return path


def _oneflow_wrapper(data: bytes, *, single: bool) -> bytes:
    marker = u("__oneflow__") + b"N" if single else b""
    return P4 + b"}(" + u("protocol_version") + b"K\x01" + marker + u("data") + _body(data) + b"u."


def _oneflow_folder(path: Path, data: bytes) -> Path:
    path.mkdir()
    (path / "pickled_data").write_bytes(_oneflow_wrapper(data, single=False))
    return path


def _oneflow_file(path: Path, data: bytes) -> Path:
    path.write_bytes(_oneflow_wrapper(data, single=True))
    return path


def _mxnet_states(path: Path, data: bytes) -> Path:
    # The sniffer looks for an MXNet class name near the start: a string, popped at once.
    path.write_bytes(P2 + u("mxnet.optimizer") + b"0" + _body(data) + b".")
    return path


def _npy_object(data: bytes) -> bytes:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * ((-(10 + len(header) + 1)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def _npy(path: Path, data: bytes) -> Path:
    path.write_bytes(_npy_object(data))
    return path


def _npz(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arr_0.npy", _npy_object(data))
    return path


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# name -> (writer, kind): "pickle" containers interpret the payload, "unrecognised" must be
# refused as an unknown format, "object-npy" must be refused for its dtype before the payload.
CONTAINERS: dict[str, tuple[Callable[[Path, bytes], Path], str]] = {
    "raw-pickle": (_raw, "unrecognised"),
    "torch-zip": (_torch_zip, "pickle"),
    "torch-legacy": (_legacy, "pickle"),
    "torch-legacy-sysinfo": (_legacy_sysinfo, "pickle"),
    "oneflow-folder": (_oneflow_folder, "pickle"),
    "oneflow-single-file": (_oneflow_file, "pickle"),
    "mxnet-states": (_mxnet_states, "pickle"),
    "npy-object": (_npy, "object-npy"),
    "npz-object": (_npz, "object-npy"),
}
# Containers that embed the payload as a value inside their own pickle.
_EMBEDDING = {"oneflow-folder", "oneflow-single-file", "mxnet-states"}
_DETECTED_AS = {
    "torch-zip": "torch",
    "torch-legacy": "torch",
    "torch-legacy-sysinfo": "torch",
    "oneflow-folder": "oneflow",
    "oneflow-single-file": "oneflow",
    "mxnet-states": "mxnet",
    "npy-object": "numpy",
    "npz-object": "npz",
}

# -- the worker: one fresh interpreter per container ------------------------------------------
WORKER = textwrap.dedent(
    r"""
    import json, os, resource, sys, time
    cases_file, canary = sys.argv[1], sys.argv[2]
    import numpy
    import satchel
    with open(cases_file) as f:
        spec = json.load(f)
    for p in spec["warmup"]:           # import every lazily imported reader module now
        satchel.load(p)
        satchel.open(p).keys()
        satchel.detect(p)
    for p in spec["error_warmup"]:     # and the modules of the error paths
        try:
            satchel.load(p)
        except satchel.SatchelError:
            pass
    # Codecs the interpreter's text opcodes (STRING, UNICODE) use are imported on first use;
    # their names are fixed by satchel, not chosen by the file.
    for codec in ("unicode_escape", "raw_unicode_escape", "latin1", "ascii"):
        b"x".decode(codec)

    events = []
    current = ["<none>"]
    WATCH = {"os.system", "exec", "compile", "import", "pickle.find_class", "marshal.loads",
             "marshal.load", "builtins.input", "ctypes.dlopen", "os.fork", "os.forkpty",
             "os.kill", "os.remove", "os.unlink", "os.rmdir", "shutil.rmtree",
             "webbrowser.open", "urllib.Request", "function.__new__", "code.__new__"}
    PREFIXES = ("os.exec", "os.spawn", "os.posix_spawn", "subprocess.", "socket.", "ctypes.")

    def hook(event, args):
        if event == "open":
            target = args[0] if args else None
            if isinstance(target, (str, bytes, os.PathLike)) and "canary" in os.fsdecode(target):
                events.append([current[0], event, repr(args)[:200]])
        elif event in WATCH or event.startswith(PREFIXES):
            events.append([current[0], event, repr(args)[:200]])

    sys.addaudithook(hook)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm + int(spec["headroom"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    results = []
    for case in spec["cases"]:
        current[0] = case["id"]
        for api in ("load", "open"):
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            message = ""
            try:
                if api == "load":
                    satchel.load(case["path"])
                else:
                    satchel.open(case["path"]).keys()
                outcome = "ok"
            except satchel.SatchelError as e:
                outcome, message = type(e).__name__, str(e)
            except BaseException as e:  # noqa: BLE001 - recorded, the test fails on it
                outcome, message = "UNEXPECTED:" + type(e).__name__, str(e)
            results.append({
                "id": case["id"], "api": api, "outcome": outcome, "message": message[:300],
                "seconds": time.perf_counter() - t0,
                "rss_growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0,
            })
    current[0] = "<after>"
    print(json.dumps({"results": results, "events": events,
                      "canary": os.path.exists(canary), "limit": limit}))
    """
)


@dataclass
class Batch:
    container: str
    payloads: dict[str, Payload]
    results: list[dict[str, Any]]
    events: list[list[str]]
    canary_created: bool
    returncode: int
    stderr: str


def _run_batch(container: str, root: Path, payloads: list[Payload], canary: Path) -> Batch:
    writer, _ = CONTAINERS[container]
    folder = root / container
    folder.mkdir()
    cases = []
    for i, p in enumerate(payloads):
        path = writer(folder / f"case{i:04d}", p.data)
        cases.append({"id": p.name, "path": str(path)})
    bad = root / f"{container}.not-a-checkpoint"
    bad.write_bytes(b"\x80\x02N.")
    spec = {
        "cases": cases,
        "warmup": [
            str(FIXTURES / "torch" / "mlp_state_dict.pt"),
            str(FIXTURES / "torch" / "mlp_state_dict_legacy.pt"),
            str(FIXTURES / "oneflow" / "mlp_state_dict"),
            str(FIXTURES / "oneflow" / "EMULATED_v1_single_file.of"),
            str(FIXTURES / "mxnet" / "mlp.states"),
            str(FIXTURES / "numpy" / "w0.npy"),
            str(FIXTURES / "numpy" / "mlp.npz"),
        ],
        "error_warmup": [str(bad), str(FIXTURES / "numpy" / "object_pickle.npy")],
        "headroom": MEMORY_HEADROOM,
    }
    spec_file = root / f"{container}.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(spec_file), str(canary)],
        env={
            **os.environ,
            "PYTHONPATH": str(SRC),
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        },
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report: dict[str, Any] = {"results": [], "events": [], "canary": canary.exists()}
    if proc.returncode == 0 and proc.stdout.strip():
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    return Batch(
        container,
        {p.name: p for p in payloads},
        report["results"],
        report["events"],
        bool(report["canary"]) or canary.exists(),
        proc.returncode,
        proc.stderr[-3000:],
    )


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Batch]:
    root = tmp_path_factory.mktemp("hostile_pickles")
    canary = root / "canary"
    payloads = build_payloads(str(canary))
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c: pool.submit(_run_batch, c, root, payloads, canary) for c in CONTAINERS}
        batches = {c: f.result() for c, f in futures.items()}
    assert not canary.exists()
    return batches


def _expected(container: str, payload: Payload) -> str:
    kind = CONTAINERS[container][1]
    if kind == "unrecognised":
        return "satchel-error"
    if kind == "object-npy":
        return "UnsafeContentError"
    if payload.stream_level and container in _EMBEDDING:
        return "any"
    return {"unsafe": "UnsafeContentError", "malformed": "satchel-error", "bounded": "any"}[
        payload.expect
    ]


def _problems(batch: Batch) -> list[str]:
    problems = []
    if batch.returncode != 0:
        problems.append(f"worker exited {batch.returncode}: {batch.stderr}")
    if len(batch.results) != 2 * len(batch.payloads) and batch.returncode == 0:
        problems.append(f"{len(batch.results)} results for {len(batch.payloads)} payloads")
    for r in batch.results:
        want = _expected(batch.container, batch.payloads[r["id"]])
        got = r["outcome"]
        where = f"[{batch.container}] {r['id']!r} {r['api']}"
        if got.startswith("UNEXPECTED"):
            problems.append(f"{where}: {got}: {r['message'][:160]}")
        elif want == "UnsafeContentError" and got != want:
            problems.append(
                f"{where}: expected UnsafeContentError, got {got}: {r['message'][:120]}"
            )
        elif want == "satchel-error" and got == "ok":
            problems.append(f"{where}: accepted, expected a SatchelError")
        if r["seconds"] > MAX_SECONDS:
            problems.append(f"{where}: took {r['seconds']:.1f} s")
        if r["rss_growth_kb"] > MAX_RSS_GROWTH_KB:
            problems.append(f"{where}: peak RSS grew by {r['rss_growth_kb'] // 1024} MiB")
    for case, event, args in batch.events:
        problems.append(f"[{batch.container}] {case!r}: AUDIT EVENT {event} {args}")
    if batch.canary_created:
        problems.append(f"[{batch.container}]: THE CANARY FILE WAS CREATED")
    return problems


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_hostile_pickle_matrix(matrix: dict[str, Batch], container: str) -> None:
    problems = _problems(matrix[container])
    assert not problems, f"{len(problems)} problem(s):\n  " + "\n  ".join(problems[:40])


def test_containers_are_detected_as_intended(tmp_path: Path) -> None:
    """Each container really reaches the reader it is meant for (else the matrix tests little)."""
    import satchel

    harmless = P2 + b"N."
    for name, (writer, _kind) in CONTAINERS.items():
        path = writer(tmp_path / f"probe-{name}", harmless)
        if name == "raw-pickle":
            with pytest.raises(satchel.FormatError):
                satchel.detect(path)
        else:
            assert satchel.detect(path) == _DETECTED_AS[name], name


def test_matrix_summary(matrix: dict[str, Batch], capsys: pytest.CaptureFixture[str]) -> None:
    """Counts for the report: payloads x containers, outcome classes, executions (must be 0)."""
    n_payloads = len(next(iter(matrix.values())).payloads)
    cases = sum(len(b.payloads) for b in matrix.values())
    outcomes: collections.Counter[str] = collections.Counter()
    by_expect: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for b in matrix.values():
        for r in b.results:
            outcomes[r["outcome"]] += 1
            by_expect[b.payloads[r["id"]].expect][r["outcome"]] += 1
    executions = sum(len(b.events) for b in matrix.values()) + sum(
        b.canary_created for b in matrix.values()
    )
    timed = sorted(
        (
            (r["seconds"], b.container, r["id"], r["api"])
            for b in matrix.values()
            for r in b.results
        ),
        reverse=True,
    )
    slowest = timed[0][0] if timed else 0.0
    peak = max((r["rss_growth_kb"] for b in matrix.values() for r in b.results), default=0)
    with capsys.disabled():
        print(
            f"\nhostile-pickle matrix: {n_payloads} payloads x {len(matrix)} containers = "
            f"{cases} cases ({2 * cases} load/open calls); executions (audit events + canary) = "
            f"{executions}; outcomes {dict(outcomes)}; by payload class "
            f"{ {k: dict(v) for k, v in by_expect.items()} }; slowest {slowest:.3f} s; "
            f"max RSS growth {peak // 1024} MiB; slowest cases {timed[:3]}"
        )
    assert executions == 0


def test_positive_control_hook_and_canary_see_real_unpickling(tmp_path: Path) -> None:
    """The same hook and canary do notice ``pickle.loads`` running a payload of the matrix."""
    canary = tmp_path / "canary"
    payloads = {p.name: p for p in build_payloads(str(canary))}
    data = payloads["posix.system p2"].data
    script = textwrap.dedent(
        f"""
        import pickle, sys
        seen = []
        watch = ("os.system", "pickle.find_class")
        sys.addaudithook(lambda e, a: seen.append(e) if e in watch else None)
        pickle.loads({data!r})
        print(sorted(set(seen)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "os.system" in out.stdout
    assert "pickle.find_class" in out.stdout
    assert canary.exists()
