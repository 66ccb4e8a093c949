"""The opcode table of satchel's pickle interpreter: one function of the machine per opcode.

Each handler reads its argument through the machine's checked readers and pushes plain data.
Container mutations check their target's type first (CVE-2026-24747: SETITEM on a non-dict).
The handlers for GLOBAL, REDUCE, NEWOBJ, BUILD, FRAME and persistent ids are the machine's
methods, where the allowlist and the frame state live.

Text arguments are read as CPython's ``pickle._Unpickler`` reads them, or more strictly
(docs/formats.md rule P13): ``INT``/``LONG`` are decimal, as ``int(text, 0)`` takes them;
memo indices are non-negative decimal; ``STRING`` has only the escapes Python 2's ``repr``
writes, decoded as ``codecs.escape_decode`` would.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from ...errors import UnsafeContentError
from .pickle_machine import Machine, describe

__all__ = ["HANDLERS"]


_SIGNED = re.compile(rb"-?[0-9]+")
_INDEX = re.compile(rb"[0-9]+")


def _text_int(m: Machine, raw: bytes, *, index: bool = False) -> int:
    """A decimal INT/LONG literal (``int(raw, 0)``: no leading zeros) or a memo index."""
    if not (_INDEX if index else _SIGNED).fullmatch(raw):
        raise m.fail(f"bad {'memo index' if index else 'integer literal'} {raw[:20]!r}")
    try:
        return int(raw, 10 if index else 0)
    except ValueError as e:  # leading zeros, or more digits than int() converts
        raise m.fail(f"bad integer literal {raw[:20]!r}") from e


def _op_int(m: Machine) -> None:
    raw = m.line()
    if raw == b"00":
        m.stack.append(False)
    elif raw == b"01":
        m.stack.append(True)
    else:
        m.stack.append(_text_int(m, raw))


def _op_long(m: Machine) -> None:
    raw = m.line()
    m.stack.append(_text_int(m, raw[:-1] if raw.endswith(b"L") else raw))


def _op_proto(m: Machine) -> None:
    version = m.u("<B")
    if version > 5:  # pickle.HIGHEST_PROTOCOL; CPython refuses more too
        raise m.fail(f"pickle protocol {version} does not exist (0 to 5)")


def _op_float(m: Machine) -> None:
    raw = m.line()
    try:
        m.stack.append(float(raw))
    except ValueError as e:
        raise m.fail(f"bad float literal {raw[:20]!r}") from e


_ESCAPES = {
    ord("\\"): 0x5C, ord("'"): 0x27, ord('"'): 0x22, ord("a"): 0x07, ord("b"): 0x08,
    ord("f"): 0x0C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("v"): 0x0B,
}  # fmt: skip
_OCTAL = re.compile(rb"[0-7]{1,3}")
_HEX = re.compile(rb"[0-9a-fA-F]{2}")


def _op_string(m: Machine) -> None:
    # Python 2 ``str``: bytes, decoded as latin-1 (torch's weights_only unpickler does the same).
    raw = m.line()
    if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
        raise m.fail("STRING argument is not quoted")
    m.stack.append(_unescape(m, raw[1:-1]).decode("latin1"))


def _unescape(m: Machine, raw: bytes) -> bytes:
    """``codecs.escape_decode``, refusing the escapes it only warns about (``\\q``, ``\\u``)."""
    out = bytearray()
    pos = 0
    while (at := raw.find(b"\\", pos)) >= 0:
        out += raw[pos:at]
        c = raw[at + 1 : at + 2]
        if c and c[0] in _ESCAPES:
            out.append(_ESCAPES[c[0]])
            pos = at + 2
        elif c == b"x" and (h := _HEX.match(raw, at + 2)):
            out.append(int(h.group(), 16))
            pos = h.end()
        elif (o := _OCTAL.match(raw, at + 1)) and int(o.group(), 8) <= 0xFF:
            out.append(int(o.group(), 8))
            pos = o.end()
        else:
            raise m.fail(f"bad STRING escape {raw[at : at + 4]!r}")
    out += raw[pos:]
    return bytes(out)


def _op_unicode(m: Machine) -> None:
    try:
        m.stack.append(m.line().decode("raw_unicode_escape"))
    except UnicodeDecodeError as e:
        raise m.fail("bad UNICODE text") from e


def _utf8(m: Machine, n: int) -> None:
    try:
        m.stack.append(bytes(m.take(n)).decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError as e:
        raise m.fail("string is not valid UTF-8") from e


def _binstring(m: Machine, n: int) -> None:
    # Python 2 ``str``: torch's weights_only unpickler decodes these as text too.
    m.stack.append(bytes(m.take(n)).decode("latin1"))


def _long(m: Machine, n: int) -> None:
    if n > 1 << 16:
        raise m.fail(f"LONG of {n} bytes is beyond any real value")
    m.stack.append(int.from_bytes(m.take(n), "little", signed=True))


def _set_items(m: Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if not isinstance(target, dict) or len(items) % 2:
        raise UnsafeContentError(
            f"{m.where}: SETITEMS at byte {m.pos - 1} on {describe(target)} is refused"
        )
    m.count(len(items) // 2)
    for k, v in zip(items[::2], items[1::2], strict=True):
        _set(m, target, k, v)


def _set_item(m: Machine) -> None:
    v, k = m.pop(), m.pop()
    target = m.top()
    if not isinstance(target, dict):
        raise UnsafeContentError(
            f"{m.where}: SETITEM at byte {m.pos - 1} on {describe(target)} is refused"
        )
    m.count(1)
    _set(m, target, k, v)


def _set(m: Machine, target: dict[Any, Any], k: Any, v: Any) -> None:
    try:
        target[k] = v
    except TypeError as e:  # unhashable key
        raise m.fail(f"dict key {describe(k)} is not hashable") from e


def _append(m: Machine) -> None:
    v = m.pop()
    target = m.top()
    if not isinstance(target, list):
        raise UnsafeContentError(
            f"{m.where}: APPEND at byte {m.pos - 1} on {describe(target)} is refused"
        )
    m.count(1)
    target.append(v)


def _appends(m: Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if not isinstance(target, list):
        raise UnsafeContentError(
            f"{m.where}: APPENDS at byte {m.pos - 1} on {describe(target)} is refused"
        )
    m.count(len(items))
    target.extend(items)


def _add_items(m: Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if not isinstance(target, set):
        raise UnsafeContentError(f"{m.where}: ADDITEMS on {describe(target)} is refused")
    m.count(len(items))
    try:
        target.update(items)
    except TypeError as e:
        raise m.fail("set item is not hashable") from e


def _dict_from_mark(m: Machine) -> None:
    items = m.pop_mark()
    if len(items) % 2:
        raise m.fail("DICT with an odd number of items")
    m.count(len(items) // 2)
    d: dict[Any, Any] = {}
    for k, v in zip(items[::2], items[1::2], strict=True):
        _set(m, d, k, v)
    m.stack.append(d)


def _frozenset(m: Machine) -> None:
    items = m.pop_mark()
    try:
        m.stack.append(frozenset(items))
    except TypeError as e:
        raise m.fail("frozenset item is not hashable") from e


def _tuple_n(n: int) -> Callable[[Machine], None]:
    def op(m: Machine) -> None:
        items = [m.pop() for _ in range(n)][::-1]
        m.stack.append(tuple(items))

    return op


def _memoize(m: Machine) -> None:
    m.put(len(m.memo))


def _pop(m: Machine) -> None:
    if m.marks and len(m.stack) == m.marks[-1]:
        m.marks.pop()  # POP of a bare MARK, as CPython allows
    else:
        m.pop()


def _persid_text(m: Machine) -> None:
    try:
        pid = m.line().decode("ascii")
    except UnicodeDecodeError as e:
        raise m.fail("PERSID is not ASCII") from e
    m.op_persid(pid)


HANDLERS: dict[bytes, Callable[[Machine], object]] = {
    b"\x80": _op_proto,  # any protocol's data opcodes are handled below
    b"\x95": lambda m: m.op_frame(),
    b"N": lambda m: m.stack.append(None),
    b"\x88": lambda m: m.stack.append(True),
    b"\x89": lambda m: m.stack.append(False),
    b"I": _op_int,
    b"J": lambda m: m.stack.append(m.u("<i")),
    b"K": lambda m: m.stack.append(m.u("<B")),
    b"M": lambda m: m.stack.append(m.u("<H")),
    b"L": _op_long,
    b"\x8a": lambda m: _long(m, m.u("<B")),
    b"\x8b": lambda m: _long(m, m.u("<i")),
    b"F": _op_float,
    b"G": lambda m: m.stack.append(struct.unpack(">d", m.take(8))[0]),
    b"S": _op_string,
    b"T": lambda m: _binstring(m, m.u("<i")),
    b"U": lambda m: _binstring(m, m.u("<B")),
    b"V": _op_unicode,
    b"X": lambda m: _utf8(m, m.u("<I")),
    b"\x8c": lambda m: _utf8(m, m.u("<B")),
    b"\x8d": lambda m: _utf8(m, m.u("<Q")),
    b"B": lambda m: m.stack.append(bytes(m.take(m.u("<I")))),
    b"C": lambda m: m.stack.append(bytes(m.take(m.u("<B")))),
    b"\x8e": lambda m: m.stack.append(bytes(m.take(m.u("<Q")))),
    b"\x96": lambda m: m.stack.append(bytearray(m.take(m.u("<Q")))),
    b"(": lambda m: m.marks.append(len(m.stack)),
    b")": lambda m: m.stack.append(()),
    b"]": lambda m: m.stack.append([]),
    b"}": lambda m: m.stack.append({}),
    b"\x8f": lambda m: m.stack.append(set()),
    b"t": lambda m: m.stack.append(tuple(m.pop_mark())),
    b"\x85": _tuple_n(1),
    b"\x86": _tuple_n(2),
    b"\x87": _tuple_n(3),
    b"l": lambda m: m.stack.append(m.pop_mark()),
    b"d": _dict_from_mark,
    b"\x91": _frozenset,
    b"a": _append,
    b"e": _appends,
    b"s": _set_item,
    b"u": _set_items,
    b"\x90": _add_items,
    b"0": _pop,
    b"1": lambda m: m.pop_mark(),
    b"2": lambda m: m.stack.append(m.top()),
    b"p": lambda m: m.put(_text_int(m, m.line(), index=True)),
    b"q": lambda m: m.put(m.u("<B")),
    b"r": lambda m: m.put(m.u("<I")),
    b"\x94": _memoize,
    b"g": lambda m: m.get(_text_int(m, m.line(), index=True)),
    b"h": lambda m: m.get(m.u("<B")),
    b"j": lambda m: m.get(m.u("<I")),
    b"c": lambda m: m.op_global(),
    b"\x93": lambda m: m.op_stack_global(),
    b"R": lambda m: m.op_reduce(),
    b"\x81": lambda m: m.op_newobj(),
    b"\x92": lambda m: m.op_newobj_ex(),
    b"b": lambda m: m.op_build(),
    b"P": _persid_text,
    b"Q": lambda m: m.op_persid(m.pop()),
}
