"""CRC-32C (Castagnoli), the checksum of TensorFlow tensor bundles and their SSTable blocks.

docs/formats.md#crc32c: polynomial 0x82F63B78 (reflected), initial value and final xor 0xFFFFFFFF,
and TF's *masked* form ``mask(c) = rotr15(c) + 0xa282ead8`` (``tensorflow/core/lib/hash/crc32c.h``).

Pure Python is ~1 MB/s, far too slow for multi-GB checkpoints, so large inputs are split into
many equal lanes whose CRCs NumPy computes side by side (slicing-by-4 tables), then joined.
The join rests on linearity over GF(2): with a zero initial register ("raw" CRC),
``raw(A ‖ B) = shift_|B|(raw(A)) ^ raw(B)``, where ``shift_n`` (feeding n zero bytes) is a
32×32 bit matrix; and leading zero bytes leave a raw CRC unchanged, so padding the front of the
input to a whole number of lanes is free.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

__all__ = ["crc32c", "mask", "unmask"]

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_LANE = 256  # bytes per lane: a multiple of 4 (slicing-by-4 reads little-endian words)
_MAX_LANES = 1 << 16  # one window = 16 MiB of input
_SMALL = 2048  # below this, the plain byte loop is faster than setting up lanes

U32Array = np.ndarray[Any, np.dtype[np.uint32]]


def _byte_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _byte_table()
# Slicing-by-4: _T4[k][b] is the register after byte b followed by k zero bytes.
_T4 = [np.array(_TABLE, dtype=np.uint32)]
for _ in range(3):
    prev = _T4[-1]
    _T4.append((prev >> np.uint32(8)) ^ _T4[0][prev & np.uint32(0xFF)])


def mask(crc: int) -> int:
    """TF's masked CRC, stored in bundles so that CRCs of CRCs stay well distributed."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """The inverse of :func:`mask`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview | np.ndarray[Any, Any], crc: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``crc`` (the CRC of the bytes before it).

    Example::

        >>> hex(crc32c(b"123456789"))
        '0xe3069283'
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1).view(np.uint8)
    n = int(buf.size)
    # Standard CRC = raw CRC with the register preloaded: the preload travels n bytes.
    start = crc ^ 0xFFFFFFFF
    return (_raw(buf) ^ _shift(start, n)) ^ 0xFFFFFFFF


def _raw(buf: np.ndarray[Any, np.dtype[np.uint8]]) -> int:
    n = int(buf.size)
    if n < _SMALL:
        return _raw_loop(buf.tobytes(), 0)
    window = _LANE * _MAX_LANES
    total = 0
    pos = n % window or window  # the first window is the short one (front-padded with zeros)
    total = _raw_window(buf[:pos])
    while pos < n:
        total = _apply_pow2(total, window.bit_length() - 1) ^ _raw_window(buf[pos : pos + window])
        pos += window
    return total


def _raw_loop(data: bytes, reg: int) -> int:
    table = _TABLE
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _raw_window(buf: np.ndarray[Any, np.dtype[np.uint8]]) -> int:
    """Raw CRC of at most one window: lanes in parallel, then a tree of joins."""
    n = int(buf.size)
    if n < _SMALL:
        return _raw_loop(buf.tobytes(), 0)
    lanes = 1 << max(0, (-(-n // _LANE) - 1).bit_length())  # a power of two >= n / _LANE
    padded = np.zeros(lanes * _LANE, dtype=np.uint8)
    padded[lanes * _LANE - n :] = buf
    # Row j holds word j of every lane: each step reads one contiguous row.
    words = np.ascontiguousarray(padded.view("<u4").reshape(lanes, _LANE // 4).T)
    reg = np.zeros(lanes, dtype=np.uint32)
    t0, t1, t2, t3 = _T4
    ff, s8, s16, s24 = np.uint32(0xFF), np.uint32(8), np.uint32(16), np.uint32(24)
    for row in words:
        x = reg ^ row
        reg = t3[x & ff] ^ t2[(x >> s8) & ff] ^ t1[(x >> s16) & ff] ^ t0[x >> s24]
    step = _LANE.bit_length() - 1
    while reg.size > 1:
        left, right = reg[0::2], reg[1::2]
        reg = _apply_pow2_many(left, step) ^ right
        step += 1
    return int(reg[0])


# -- the zero-feeding operator shift_n as a 32x32 bit matrix (a tuple of column images) --------
@cache
def _pow2_matrix(k: int) -> tuple[int, ...]:
    """Columns of shift_(2**k): the register after 2**k zero bytes, for each single-bit start."""
    if k == 0:
        return tuple(_raw_loop(b"\x00", 1 << i) for i in range(32))
    half = _pow2_matrix(k - 1)
    return tuple(_mat_vec(half, col) for col in half)


@cache
def _pow2_tables(k: int) -> tuple[U32Array, U32Array, U32Array, U32Array]:
    cols = np.array(_pow2_matrix(k), dtype=np.uint32)
    tables = []
    for byte in range(4):
        t = np.zeros(256, dtype=np.uint32)
        idx = np.arange(256)
        for bit in range(8):
            t[(idx >> bit) & 1 == 1] ^= cols[8 * byte + bit]
        tables.append(t)
    return tables[0], tables[1], tables[2], tables[3]


def _mat_vec(cols: tuple[int, ...], v: int) -> int:
    out, i = 0, 0
    while v:
        if v & 1:
            out ^= cols[i]
        v >>= 1
        i += 1
    return out


def _apply_pow2(v: int, k: int) -> int:
    return _mat_vec(_pow2_matrix(k), v)


def _apply_pow2_many(v: U32Array, k: int) -> U32Array:
    t0, t1, t2, t3 = _pow2_tables(k)
    ff = np.uint32(0xFF)
    out: U32Array = t0[v & ff] ^ t1[(v >> np.uint32(8)) & ff]
    out ^= t2[(v >> np.uint32(16)) & ff] ^ t3[v >> np.uint32(24)]
    return out


def _shift(v: int, n: int) -> int:
    """shift_n(v): the register ``v`` after ``n`` zero bytes."""
    k = 0
    while n:
        if n & 1:
            v = _apply_pow2(v, k)
        n >>= 1
        k += 1
    return v
