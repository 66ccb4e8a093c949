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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...errors import UnsafeContentError
from .pickle_machine import Buildable, Global, Machine, Unpickled
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
) -> Unpickled:
    """Interpret one pickle from ``data[start:]`` using only ``allowed`` globals.

    Raises:
        UnsafeContentError: a global outside the allowlist, a refused opcode, or a call the
            stand-in refuses; names the global or opcode.
        FormatError: the stream is malformed or truncated; names the byte offset.
    """
    m = Machine(memoryview(data), where, allowed, persistent_load, start)
    ops = 0
    while True:
        ops += 1
        if ops > MAX_OPS:
            raise m.fail(f"more than {MAX_OPS} operations")
        if m.pos >= len(m.data):
            raise m.fail("stream ends before STOP")
        op = bytes(m.data[m.pos : m.pos + 1])
        m.pos += 1
        if op == b".":  # STOP
            if len(m.stack) != 1 or m.marks:
                raise m.fail("STOP with an unbalanced stack")
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
