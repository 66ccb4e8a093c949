"""The state of satchel's pickle interpreter: stack, marks, memo, frames, checked reads, the
allowlist.

``pickle_opcodes`` holds the data opcodes, each a function of a :class:`Machine`; ``pickle``
runs the loop. The opcodes that could reach code (GLOBAL, REDUCE, NEWOBJ, BUILD, persistent
ids) are methods here, next to the allowlist they consult: a global resolves only to a
:class:`Global` stand-in written in satchel, never to anything imported. Frames are checked as
CPython's ``pickle._Unframer`` checks them, and more strictly (docs/formats.md rule P13): a
FRAME holds exactly whole opcodes.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError, UnsafeContentError

__all__ = [
    "MAX_ITEMS",
    "Buildable",
    "Global",
    "Machine",
    "Unpickled",
    "check_data",
    "describe",
    "short",
]

MAX_ITEMS = 50_000_000

# Python 2 module names that protocol-0/2 pickles from old releases use (torch's NAME_MAPPING).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


@dataclass(frozen=True)
class Global:
    """An allowlisted global: what REDUCE, NEWOBJ and BUILD may do with it.

    ``call(*args)`` serves REDUCE, ``new(*args)`` NEWOBJ (defaults to ``call``); both are
    satchel functions that build data. A Global that is only a value (a dtype tag, a class
    used as an argument) leaves them ``None``.
    """

    name: str
    call: Callable[..., Any] | None = None
    new: Callable[..., Any] | None = None
    value: Any = None


class Buildable:
    """Base for stand-in objects that accept BUILD state (checked by the stand-in itself)."""

    def build(self, state: Any, *, where: str) -> None:
        raise UnsafeContentError(f"{where}: BUILD on {type(self).__name__} is not allowed")


@dataclass
class Unpickled:
    """The result and what the stream referred to, for callers that need it (tests, inspect)."""

    value: Any
    globals_used: list[str] = field(default_factory=list)
    end: int = 0


# What a result may hold besides the caller's own leaf types (docs/formats.md rule P14).
_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def check_data(
    value: Any, *, where: str, leaves: tuple[type, ...], made: Mapping[int, tuple[Any, str]]
) -> None:
    """Refuse a result that holds anything but plain data and instances of ``leaves``.

    A bare allowlisted global, a storage outside a tensor or a stand-in that never got its
    state is the interpreter's own machinery, not data (rule P14). ``made`` maps the id of each
    stand-in to the global that made it, for the message. Each container is visited once.

    Raises:
        UnsafeContentError: names the global (or stand-in) and where in the result it is.
    """
    seen: set[int] = set()
    # (value, link): link is (parent link, kind, key) or None: O(1) per item, formatted on error.
    todo: list[tuple[Any, Any]] = [(value, None)]
    while todo:
        x, link = todo.pop()
        if isinstance(x, (*_SCALARS, *leaves)):
            continue
        if not isinstance(x, _CONTAINERS):
            raise UnsafeContentError(
                f"{where}: the pickle's result holds {_what(x, made)}{_path(link)}, which is "
                "not data; satchel returns tensors, containers, numbers and strings only, "
                "never a class, function or unfinished object"
            )
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, dict):
            for k, v in x.items():
                if not isinstance(k, _SCALARS):
                    todo.append((k, (link, "key", k)))
                if not isinstance(v, _SCALARS):
                    todo.append((v, (link, "item", k)))
            meta = getattr(x, "_metadata", None)
            if meta is not None:
                todo.append((meta, (link, "attr", "_metadata")))
        elif isinstance(x, (list, tuple)):
            todo.extend(
                (v, (link, "item", i)) for i, v in enumerate(x) if not isinstance(v, _SCALARS)
            )
        else:
            todo.extend((v, (link, "member", None)) for v in x)


def _what(x: Any, made: Mapping[int, tuple[Any, str]]) -> str:
    if isinstance(x, Global):
        return f"the global {x.name!r}"
    maker = made.get(id(x))
    if maker is not None and maker[0] is x:
        return f"a {type(x).__name__} made by {maker[1]!r}"
    return f"a {type(x).__name__}"


def _path(link: Any) -> str:
    steps: list[str] = []
    while link is not None:
        link, kind, key = link
        step = {"key": " (as a dict key)", "item": f"[{short(key)}]", "attr": f".{key}"}
        steps.append(step.get(kind, " (as a set member)"))
    return f" at the top{''.join(reversed(steps))}" if steps else " as the whole value"


def describe(x: Any) -> str:
    """How an error names a stack value: a global by its name, anything else by its type."""
    if isinstance(x, Global):
        return repr(x.name)
    return f"a {type(x).__name__}"


def short(x: Any) -> str:
    """``repr(x)`` cut to 80 characters, for error messages."""
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


class Machine:
    """One interpretation: the stream, its position, stack, marks and memo."""

    def __init__(
        self,
        data: memoryview,
        where: str,
        allowed: Mapping[tuple[str, str], Global],
        persistent_load: Callable[[Any], Any] | None,
        start: int,
    ) -> None:
        self.data = data
        self.where = where
        self.allowed = allowed
        self.persistent_load = persistent_load
        self.pos = start
        self.op_at = start  # where the opcode being run starts
        self.frame_end: int | None = None  # end of the open FRAME, if any
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.items = 0
        self.used: list[str] = []
        # id -> (stand-in, the global that made it): keeps each alive, so no id is reused.
        self.made: dict[int, tuple[Any, str]] = {}

    # -- reading primitives -------------------------------------------------------------------
    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.where}: pickle byte {self.pos}: {what}; the file is corrupt")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"needs {n} bytes but only {len(self.data) - self.pos} remain")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        (v,) = struct.unpack(fmt, self.take(size))
        return int(v)

    def line(self) -> bytes:
        end = bytes(self.data[self.pos : self.pos + 65536]).find(b"\n")
        if end < 0:
            raise self.fail("text argument has no newline within 64 KiB")
        out = bytes(self.data[self.pos : self.pos + end])
        self.pos += end + 1
        return out

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise self.fail("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.fail("no MARK to pop to")
        k = self.marks.pop()
        items = self.stack[k:]
        del self.stack[k:]
        return items

    def top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise self.fail("stack underflow")
        return self.stack[-1]

    # -- frames (protocol 4+) ------------------------------------------------------------------
    def op_frame(self) -> None:
        """FRAME: the next ``n`` bytes are whole opcodes (pickle.py's _Unframer, rule P13)."""
        n = self.u("<Q")
        if self.frame_end is not None and self.pos < self.frame_end:
            raise self.fail(
                f"FRAME at byte {self.op_at} starts inside the frame that runs to byte "
                f"{self.frame_end}"
            )
        self.end_opcode()
        if n > len(self.data) - self.pos:
            raise self.fail(
                f"FRAME at byte {self.op_at} declares {n} bytes but only "
                f"{len(self.data) - self.pos} remain"
            )
        self.frame_end = self.pos + n
        self.end_opcode()  # an empty frame ends where it starts

    def end_opcode(self) -> None:
        """After each opcode: it may not run past its frame; a frame used up is closed."""
        end = self.frame_end
        if end is not None and self.pos >= end:
            if self.pos > end:
                raise self.fail(
                    f"the opcode at byte {self.op_at} runs past the end of its FRAME at byte {end}"
                )
            self.frame_end = None

    def count(self, n: int) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise self.fail(f"more than {MAX_ITEMS} container items")

    # -- globals and calls --------------------------------------------------------------------
    def resolve(self, module: str, name: str) -> Global:
        module = _PY2_MODULES.get(module, module)
        full = f"{module}.{name}"
        g = self.allowed.get((module, name))
        if g is None:
            raise UnsafeContentError(
                f"{self.where}: refused global {full!r}: satchel only rebuilds tensors and "
                "plain containers, never imports or calls anything a file names"
            )
        self.used.append(full)
        return g

    def op_global(self) -> None:
        try:
            module = self.line().decode("utf-8")
            name = self.line().decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail("GLOBAL name is not UTF-8") from e
        self.stack.append(self.resolve(module, name))

    def op_stack_global(self) -> None:
        name, module = self.pop(), self.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.fail("STACK_GLOBAL needs two strings")
        self.stack.append(self.resolve(module, name))

    def op_reduce(self) -> None:
        args, func = self.pop(), self.pop()
        if not isinstance(func, Global) or func.call is None:
            raise UnsafeContentError(
                f"{self.where}: REDUCE at byte {self.pos - 1} calls {describe(func)}, which is "
                "not an allowed callable"
            )
        if not isinstance(args, tuple):
            raise self.fail("REDUCE arguments are not a tuple")
        self.stack.append(self.call(func, func.call, args))

    def op_newobj(self) -> None:
        args, cls = self.pop(), self.pop()
        self.newobj(cls, args, {})

    def op_newobj_ex(self) -> None:
        kwargs, args, cls = self.pop(), self.pop(), self.pop()
        if not isinstance(kwargs, dict):
            raise self.fail("NEWOBJ_EX keyword arguments are not a dict")
        self.newobj(cls, args, kwargs)

    def newobj(self, cls: Any, args: Any, kwargs: dict[str, Any]) -> None:
        maker = None
        if isinstance(cls, Global):
            maker = cls.new or cls.call
        if maker is None:
            raise UnsafeContentError(
                f"{self.where}: NEWOBJ at byte {self.pos - 1} creates {describe(cls)}, which is "
                "not an allowed class"
            )
        if not isinstance(args, tuple):
            raise self.fail("NEWOBJ arguments are not a tuple")
        assert isinstance(cls, Global)
        self.stack.append(self.call(cls, maker, args, kwargs))

    def call(
        self, g: Global, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any = None
    ) -> Any:
        try:
            out = fn(*args, **(kwargs or {}), where=self.where)
        except (FormatError, UnsafeContentError):
            raise
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            raise self.fail(f"{g.name}{short(args)} is malformed ({e})") from e
        if not isinstance(out, _SCALARS + _CONTAINERS):
            self.made[id(out)] = (out, g.name)
        return out

    def op_build(self) -> None:
        state = self.pop()
        obj = self.top()
        if isinstance(obj, Buildable):
            obj.build(state, where=self.where)
        elif (
            isinstance(obj, OrderedDict) and isinstance(state, dict) and set(state) <= {"_metadata"}
        ):
            # torch state dicts carry their module versions here (read by load_state_dict).
            obj._metadata = state.get("_metadata")  # type: ignore[attr-defined]
        elif isinstance(obj, dict) and isinstance(state, dict) and not state:
            pass
        else:
            raise UnsafeContentError(
                f"{self.where}: BUILD at byte {self.pos - 1} on {describe(obj)} is refused "
                "(only tensors and known data objects accept state)"
            )

    def op_persid(self, pid: Any) -> None:
        if self.persistent_load is None:
            raise UnsafeContentError(f"{self.where}: persistent id {short(pid)} not allowed here")
        out = self.persistent_load(pid)
        self.made[id(out)] = (out, f"persistent id {short(pid)}")
        self.stack.append(out)

    # -- memo -------------------------------------------------------------------------------------
    def put(self, index: int) -> None:
        self.memo[index] = self.top()

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise self.fail(f"memo index {index} was never stored")
        self.stack.append(self.memo[index])
