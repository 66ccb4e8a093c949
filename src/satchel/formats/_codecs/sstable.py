"""The LevelDB-style table behind a TensorFlow ``.index`` file, read as untrusted bytes.

Layout (docs/formats.md#tf-index, TF's ``lib/io/table_format.txt``): data blocks, a metaindex
block, an index block, then a 48-byte footer (two block handles, zero padding, the magic). Each
block is followed by a compression byte and the masked CRC-32C of block ‖ compression byte; a
block holds prefix-compressed entries followed by its restart array. Every handle must lie
inside the file before the footer, every key and value inside its block, and keys must be
strictly increasing across the whole table (which also rules out duplicates).
"""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np

from ...errors import FormatError, IntegrityError
from .crc32c import crc32c, unmask
from .protobuf import read_varint

__all__ = ["FOOTER_SIZE", "MAGIC", "read_table", "slice_key"]

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 * BlockHandle::kMaxEncodedLength (20) + 8-byte magic
_TRAILER = 5  # compression type byte + masked crc32c
_MAX_ENTRIES = 50_000_000  # every entry costs >= 3 bytes; this only caps a runaway loop
_COMPRESSION = {0: "none", 1: "snappy"}

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


def read_table(data: U8Array, *, where: str) -> list[tuple[bytes, memoryview]]:
    """Every (key, value) of the table in ``data`` (a whole ``.index`` file), in key order.

    Block checksums are always verified: the index is small and everything else rests on it.

    Raises:
        FormatError: wrong magic, handles outside the file, malformed blocks, unsorted keys,
            or a snappy-compressed block (TensorFlow's BundleWriter never writes one).
        IntegrityError: a block's CRC-32C does not match (the index file is damaged).
    """
    buf = data.data if data.size else memoryview(b"")
    size = len(buf)
    if size < FOOTER_SIZE:
        raise FormatError(
            f"{where}: {size} bytes is shorter than a table footer ({FOOTER_SIZE}); "
            "the index file is truncated"
        )
    footer_at = size - FOOTER_SIZE
    footer = buf[footer_at:]
    lo, hi = struct.unpack_from("<II", footer, FOOTER_SIZE - 8)
    if (hi << 32) | lo != MAGIC:
        raise FormatError(f"{where}: no table magic in the last 8 bytes; not a TensorFlow index")
    pos = 0
    handles = []
    for _ in range(2):
        offset, pos = read_varint(footer, pos, where=f"{where}: footer")
        length, pos = read_varint(footer, pos, where=f"{where}: footer")
        handles.append((offset, length))
    if pos > FOOTER_SIZE - 8:
        raise FormatError(f"{where}: footer block handles overrun the magic")
    # The metaindex block is always empty in bundles (no filter policy); read it for its CRC.
    _block(buf, *handles[0], limit=footer_at, where=where, what="metaindex block")
    index = _block(buf, *handles[1], limit=footer_at, where=where, what="index block")
    out: list[tuple[bytes, memoryview]] = []
    previous: bytes | None = None
    for i, (_sep, value) in enumerate(_entries(index, where=f"{where}: index block")):
        offset, vpos = read_varint(value, 0, where=f"{where}: index entry {i}")
        length, vpos = read_varint(value, vpos, where=f"{where}: index entry {i}")
        if vpos != len(value):
            raise FormatError(f"{where}: index entry {i} has bytes after its block handle")
        what = f"data block {i}"
        block = _block(buf, offset, length, limit=footer_at, where=where, what=what)
        for key, val in _entries(block, where=f"{where}: {what}"):
            if previous is not None and key <= previous:
                raise FormatError(
                    f"{where}: key {key[:60]!r} is not after {previous[:60]!r}; keys must be "
                    "strictly increasing (a damaged or hand-made index)"
                )
            previous = key
            out.append((key, val))
            if len(out) > _MAX_ENTRIES:
                raise FormatError(f"{where}: more than {_MAX_ENTRIES} entries")
    return out


def _block(
    buf: memoryview, offset: int, length: int, *, limit: int, where: str, what: str
) -> memoryview:
    """The contents of one block after checking its place, compression byte and CRC."""
    if not 0 <= offset <= offset + length + _TRAILER <= limit:
        raise FormatError(
            f"{where}: {what} at byte {offset} (+{length}) lies outside the file's "
            f"{limit} bytes before the footer; the index is truncated or corrupt"
        )
    contents = buf[offset : offset + length]
    kind = buf[offset + length]
    (stored,) = struct.unpack_from("<I", buf, offset + length + 1)
    actual = crc32c(buf[offset : offset + length + 1])
    if actual != unmask(stored):
        raise IntegrityError(
            f"{where}: {what} at byte {offset} fails its CRC-32C check; the index is damaged"
        )
    if kind != 0:
        name = _COMPRESSION.get(kind, f"unknown ({kind})")
        raise FormatError(
            f"{where}: {what} uses {name} compression; satchel reads uncompressed tables only "
            "(TensorFlow's BundleWriter writes them uncompressed)"
        )
    return contents


def _entries(block: memoryview, *, where: str) -> list[tuple[bytes, memoryview]]:
    """The (key, value) pairs of one block, keys rebuilt from their shared prefixes."""
    if len(block) < 4:
        raise FormatError(f"{where}: {len(block)} bytes cannot hold a restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    if num_restarts > (len(block) - 4) // 4:
        raise FormatError(f"{where}: restart count {num_restarts} does not fit the block")
    end = len(block) - 4 - 4 * num_restarts
    restarts = struct.unpack_from(f"<{num_restarts}I", block, end)
    if any(r > end for r in restarts) or list(restarts) != sorted(restarts):
        raise FormatError(f"{where}: restart offsets are outside the entries or out of order")
    out: list[tuple[bytes, memoryview]] = []
    key = b""
    pos = 0
    restart_set = set(restarts)
    while pos < end:
        at = pos
        shared, pos = read_varint(block, pos, where=where)
        non_shared, pos = read_varint(block, pos, where=where)
        value_len, pos = read_varint(block, pos, where=where)
        if shared > len(key) or (at in restart_set and shared):
            raise FormatError(f"{where}: entry at byte {at} shares {shared} bytes it cannot")
        if non_shared + value_len > end - pos:
            raise FormatError(f"{where}: entry at byte {at} runs past the end of its block")
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        out.append((key, block[pos : pos + value_len]))
        pos += value_len
    if restarts and restarts[0] != 0 and out:
        raise FormatError(f"{where}: the first restart is not at the first entry")
    return out


# -- keys of partitioned variables' slices -----------------------------------------------------
def slice_key(name: bytes, extents: tuple[tuple[int, int], ...]) -> bytes:
    """The table key of one slice of a partitioned variable (docs/formats.md#tf-protos).

    ``checkpoint::EncodeTensorNameSlice`` (``tensorflow/core/util/saved_tensor_slice_util.cc``):
    TF's OrderedCode of (0, name, rank, then start and length per extent; length -1 = full).
    """
    out = _ordered_uint(0) + _ordered_bytes(name) + _ordered_uint(len(extents))
    for start, length in extents:
        out += _ordered_int(start) + _ordered_int(length)
    return out


def _ordered_uint(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


def _ordered_bytes(s: bytes) -> bytes:
    escaped = re.sub(
        rb"[\x00\xff]", lambda m: b"\x00\xff" if m.group() == b"\x00" else b"\xff\x00", s
    )
    return escaped + b"\x00\x01"


def _ordered_int(v: int) -> bytes:
    """OrderedCode::WriteSignedNumIncreasing (tensorflow/core/lib/strings/ordered_code.cc)."""
    x = ~v if v < 0 else v
    if x < 64:
        return bytes([(0x80 ^ v) & 0xFF])
    length = next(n for n in range(2, 11) if x < 1 << (7 * n - 1))
    buf = bytearray((v & ((1 << 80) - 1)).to_bytes(10, "big"))[10 - length :]
    # kLengthToHeaderBits: `length` leading one bits spread over the first two bytes.
    buf[0] ^= (0xFF << (8 - min(length, 8))) & 0xFF
    buf[1] ^= (0xFF << (16 - length)) & 0xFF if length > 8 else 0
    return bytes(buf)
