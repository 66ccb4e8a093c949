"""satchel's own pickle *interpreter*: it never imports, never calls anything from the file.

Foreign checkpoints (PyTorch, MXNet trainer states, OneFlow) are pickles. ``pickle.load`` would
import and call whatever the stream names; this interpreter instead resolves every global
through an explicit allowlist of inert stand-ins written in satchel (``Global`` objects), and
refuses any opcode that could reach code (INST, OBJ, EXT*, buffers). Modelled on
``torch/_weights_only_unpickler.py`` (docs/formats.md#torch-pickle), with the protocol 4-5
opcodes that only build data added.

Every length read from the stream is checked against the bytes that remain before anything is
allocated, the memo is a dict (a huge index costs nothing), and the number of operations and
container items is capped, so a tiny hostile stream cannot exhaust memory or time.

The interpreter rejects every stream CPython's unpicklers reject (tests/test_pickle_strict.py
compares them), and more: a FRAME must hold exactly whole opcodes, and nothing may follow STOP
unless the caller reads several pickles in a row (``trailing=True``). Only data leaves it: a
result still holding a stand-in (a bare global, a storage, an object never given its state) is
refused (docs/formats.md rules P6, P13, P14).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...errors import UnsafeContentError
from .pickle_machine import Buildable, Global, Machine, Unpickled, check_data
from .pickle_opcodes import HANDLERS

__all__ = ["MAX_OPS", "Buildable", "Global", "Unpickled", "unpickle"]

MAX_OPS = 50_000_000  # far above any real checkpoint's pickle; bounds a hostile loop of DUPs

# Opcodes that can only run code or depend on out-of-band machinery: refused outright.
_REFUSED = {
    b"i": "INST",
    b"o": "OBJ",
    b"\x82": "EXT1",
    b"\x83": "EXT2",
    b"\x84": "EXT4",
    b"\x97": "NEXT_BUFFER",
    b"\x98": "READONLY_BUFFER",
}


def unpickle(
    data: bytes | memoryview,
    *,
    where: str,
    allowed: Mapping[tuple[str, str], Global],
    persistent_load: Callable[[Any], Any] | None = None,
    start: int = 0,
    trailing: bool = False,
    leaves: tuple[type, ...] = (),
) -> Unpickled:
    """Interpret one pickle from ``data[start:]`` using only ``allowed`` globals.

    The pickle must end at the end of ``data`` unless ``trailing`` (the caller reads what
    follows ``Unpickled.end``). The result may hold plain data and instances of ``leaves``
    (the caller's stand-ins that it resolves itself), nothing else.

    Raises:
        UnsafeContentError: a global outside the allowlist, a refused opcode, a call the
            stand-in refuses, or a result holding something other than data; names the global
            or opcode.
        FormatError: the stream is malformed or truncated, or bytes follow its STOP; names the
            byte offset.
    """
    m = Machine(memoryview(data), where, allowed, persistent_load, start)
    ops = 0
    while True:
        ops += 1
        if ops > MAX_OPS:
            raise m.fail(f"more than {MAX_OPS} operations")
        if m.pos >= len(m.data):
            raise m.fail("stream ends before STOP")
        m.op_at = m.pos
        op = bytes(m.data[m.pos : m.pos + 1])
        m.pos += 1
        if op == b".":  # STOP
            m.end_opcode()
            if len(m.stack) != 1 or m.marks:
                raise m.fail("STOP with an unbalanced stack")
            if m.frame_end is not None:
                raise m.fail(f"STOP ends the pickle inside a FRAME that runs to byte {m.frame_end}")
            if not trailing and m.pos != len(m.data):
                # Rule P6: a second pickle hidden after the first is what scanners miss, so
                # bytes riding along are refused as unsafe content, not as mere damage.
                raise UnsafeContentError(
                    f"{where}: pickle byte {m.pos}: {len(m.data) - m.pos} bytes follow the "
                    "pickle's STOP (a hidden second pickle?); a record holds one pickle and "
                    "nothing after it, so satchel refuses the file"
                )
            check_data(m.stack[0], where=where, leaves=leaves, made=m.made)
            return Unpickled(m.stack[0], m.used, m.pos)
        handler = HANDLERS.get(op)
        if handler is None:
            if op in _REFUSED:
                raise UnsafeContentError(
                    f"{where}: pickle opcode {_REFUSED[op]} at byte {m.pos - 1} is "
                    "refused: it can run code. satchel loads data only"
                )
            raise m.fail(f"unknown opcode {op!r}")
        handler(m)
        m.end_opcode()
