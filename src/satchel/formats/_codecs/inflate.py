"""Every decompression satchel does: deflate (zip members, zarr zlib/gzip) and zstd, bounded.

A compressed stream's output is limited three ways before and while it is decompressed
(docs/formats.md rule Z5):

1. its declared size may not exceed what the codec can produce from the compressed bytes
   present: deflate emits at most 258 bytes per 2 bits (one length and one distance code of a
   single bit each), so 1032 bytes per compressed byte; a zstd block at most 128 KiB per 4 bytes
   (an RLE block), so 32768. A tiny file cannot claim gigabytes;
2. the declared size is capped (16 GiB) and checked before anything is inflated or allocated;
3. the output goes in 1 MiB steps into one buffer of exactly the declared size and stops there:
   a stream that would give more (or less) is refused, and peak memory is the declared size plus
   one step, never the stream's real output.

A legitimate size that this machine cannot allocate is a :class:`FormatError` saying so, never
a bare ``MemoryError``.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ...errors import FormatError, FrameworkNotAvailableError

__all__ = [
    "DEFLATE_RATIO",
    "MAX_INFLATED",
    "ZSTD_RATIO",
    "allocate",
    "check_declared",
    "inflate",
    "inflate_head",
    "inflate_zstd",
]

MAX_INFLATED = 1 << 34  # 16 GiB: a compressed member claiming more is a bomb, not a checkpoint
DEFLATE_RATIO = 1032  # RFC 1951: 258 bytes from 2 bits at best
ZSTD_RATIO = 32768  # RFC 8878: a 128 KiB RLE block from a 3-byte header and 1 byte
_ZSTD_SLACK = 1 << 17  # one block more, for frames whose size the ratio rounds down
_STEP = 1 << 20

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


def check_declared(size: int, compressed: int, *, ratio: int, where: str, what: str) -> None:
    """Refuse a declared output ``size`` the ``compressed`` bytes cannot hold (or over the cap).

    Raises:
        FormatError: the size exceeds ``ratio`` times the compressed size, or 16 GiB.
    """
    if size > MAX_INFLATED:
        raise FormatError(
            f"{where}: {what} claims {size} bytes inflated, more than the {MAX_INFLATED} satchel "
            "inflates; the file is corrupt or a decompression bomb"
        )
    if size > compressed * ratio:
        raise FormatError(
            f"{where}: {what} declares {size} bytes from {compressed} compressed bytes, more "
            f"than the {ratio}:1 its compression can reach; the file is corrupt or a "
            "decompression bomb"
        )


def allocate(size: int, *, where: str, what: str) -> U8Array:
    """An uninitialised buffer of ``size`` bytes for a declared (already checked) output.

    Raises:
        FormatError: the machine cannot allocate it (a legitimate size, too big for here).
    """
    try:
        return np.empty(size, dtype=np.uint8)
    except MemoryError as e:
        raise FormatError(
            f"{where}: {what} inflates to {size} bytes, more memory than this process can "
            "allocate; read it on a machine with more memory"
        ) from e


def inflate(
    payload: U8Array | bytes | memoryview, size: int, *, where: str, what: str, wbits: int = -15
) -> U8Array:
    """Inflate ``payload`` (raw deflate by default; ``wbits`` as ``zlib``) to exactly ``size``
    bytes, checking the declared size first and never holding more than ``size`` + 1 MiB.

    Raises:
        FormatError: the size is past the deflate ratio or the cap, the stream is damaged, ends
            early, gives more or fewer bytes than ``size``, or has bytes after its end.
    """
    data = _view(payload)
    check_declared(size, len(data), ratio=DEFLATE_RATIO, where=where, what=what)
    out = allocate(size, where=where, what=what)
    inflater = zlib.decompressobj(wbits)
    pos = fed = 0
    # Input goes in in steps too: zlib copies the unconsumed input on every call.
    tail: bytes | memoryview = b""
    while not inflater.eof:
        if not tail:
            if fed == len(data):
                break  # the compressed bytes ran out before the stream's end
            tail = data[fed : fed + _STEP]
            fed += len(tail)
        before = len(tail)
        try:
            # Asking for one byte more than room is left is how a longer stream shows itself.
            chunk = inflater.decompress(tail, min(_STEP, size - pos + 1))
        except zlib.error as e:
            raise FormatError(f"{where}: {what} does not inflate ({e})") from e
        if len(chunk) > size - pos:
            raise FormatError(
                f"{where}: {what} inflates to more than the {size} bytes it declares "
                "(a decompression bomb?); stopped there"
            )
        out[pos : pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        pos += len(chunk)
        tail = inflater.unconsumed_tail
        if not chunk and len(tail) == before:
            raise FormatError(f"{where}: {what} does not inflate (the stream makes no progress)")
    if not inflater.eof or pos != size:
        raise FormatError(
            f"{where}: {what} inflates to {pos} bytes, fewer than the {size} it declares "
            "(truncated)"
        )
    extra = len(inflater.unused_data) + len(data) - fed
    if extra:
        raise FormatError(f"{where}: {what} has {extra} bytes after its compressed stream")
    return out


def inflate_head(
    payload: U8Array | bytes | memoryview, n: int, *, where: str, what: str, wbits: int = -15
) -> bytes:
    """At most the first ``n`` inflated bytes of ``payload`` (fewer if the stream is shorter),
    to validate a header before inflating the rest.

    Raises:
        FormatError: the first bytes of the stream are damaged.
    """
    try:
        return zlib.decompressobj(wbits).decompress(_view(payload), n)
    except zlib.error as e:
        raise FormatError(f"{where}: {what} does not inflate ({e})") from e


def _view(payload: U8Array | bytes | memoryview) -> memoryview:
    return payload.data if isinstance(payload, np.ndarray) else memoryview(payload)


def inflate_zstd(data: bytes | memoryview, cap: int, *, where: str) -> bytes:
    """Decompress exactly one zstd frame of at most ``cap`` bytes (and nothing after it).

    Raises:
        FrameworkNotAvailableError: the optional ``zstandard`` package is not installed.
        FormatError: not a zstd frame, trailing bytes, more output than ``cap`` or than the
            frame's size can hold (a decompression bomb), a damaged frame, or an output this
            process cannot allocate.
    """
    try:
        import zstandard  # noqa: PLC0415 - optional: only Orbax checkpoints need it
    except ImportError as e:
        raise FrameworkNotAvailableError(
            f"{where}: is zstd-compressed and the 'zstandard' package is not installed; "
            "run: pip install satchel[orbax]"
        ) from e
    raw = bytes(data)
    try:
        params = zstandard.get_frame_parameters(raw)
    except zstandard.ZstdError as e:
        raise FormatError(f"{where}: not a zstd frame ({e})") from e
    limit = min(cap, len(raw) * ZSTD_RATIO + _ZSTD_SLACK)
    size = params.content_size
    if size != zstandard.CONTENTSIZE_UNKNOWN and size > limit:
        raise FormatError(
            f"{where}: zstd frame of {len(raw)} bytes claims {size} bytes of output, more than "
            f"the {limit} it may hold; the file is corrupt or hostile"
        )
    try:
        # The output buffer is the frame's declared size, or ``limit`` when it declares none.
        out = zstandard.ZstdDecompressor().decompress(
            raw, max_output_size=max(limit, 1), allow_extra_data=False
        )
    except zstandard.ZstdError as e:
        raise FormatError(f"{where}: zstd data is damaged or exceeds {limit} bytes ({e})") from e
    except MemoryError as e:
        raise FormatError(
            f"{where}: zstd frame needs up to {limit} bytes, more memory than this process can "
            "allocate"
        ) from e
    if len(out) > limit:
        raise FormatError(f"{where}: zstd output of {len(out)} bytes exceeds {limit}")
    return bytes(out)
