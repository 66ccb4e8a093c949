"""The state of satchel's pickle interpreter: stack, marks, memo, checked reads, the allowlist.

``pickle_opcodes`` holds the data opcodes, each a function of a :class:`Machine`; ``pickle``
runs the loop. The opcodes that could reach code (GLOBAL, REDUCE, NEWOBJ, BUILD, persistent
ids) are methods here, next to the allowlist they consult: a global resolves only to a
:class:`Global` stand-in written in satchel, never to anything imported.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError, UnsafeContentError

__all__ = ["MAX_ITEMS", "Buildable", "Global", "Machine", "Unpickled", "describe", "short"]

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
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.items = 0
        self.used: list[str] = []

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
        module = self.line().decode("utf-8", "replace")
        name = self.line().decode("utf-8", "replace")
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
            return fn(*args, **(kwargs or {}), where=self.where)
        except (FormatError, UnsafeContentError):
            raise
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            raise self.fail(f"{g.name}{short(args)} is malformed ({e})") from e

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
        self.stack.append(self.persistent_load(pid))

    # -- memo -------------------------------------------------------------------------------------
    def put(self, index: int) -> None:
        self.memo[index] = self.top()

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise self.fail(f"memo index {index} was never stored")
        self.stack.append(self.memo[index])
