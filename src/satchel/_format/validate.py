"""Cross-checks between the safetensors header and the satchel manifest (SPEC 3.2-3.5).

A flipped bit in a tensor name, dtype, shape or metadata value makes the two disagree, so such
damage is caught even though safetensors itself has no header checksum.
"""

from __future__ import annotations

from typing import Any

import xxhash

from ..errors import FormatError, IntegrityError
from .header import Header
from .manifest import MANIFEST_CHECKSUM_KEY, MANIFEST_KEY, Manifest, parse_manifest

__all__ = ["manifest_of", "xxh3_hex"]


def xxh3_hex(data: Any) -> str:
    """xxh3-64 of a buffer (bytes, memoryview, ndarray) as 16 lowercase hex digits (SPEC 3.7)."""
    digest: str = xxhash.xxh3_64_hexdigest(data)
    return digest


def manifest_of(header: Header, *, where: str) -> Manifest | None:
    """The validated manifest, or ``None`` for a plain safetensors file without one.

    Raises:
        IntegrityError: the manifest text does not match its checksum.
        FormatError: the manifest contradicts the header.
    """
    text = header.metadata.get(MANIFEST_KEY)
    digest = header.metadata.get(MANIFEST_CHECKSUM_KEY)
    if text is None and digest is None:
        return None
    if text is None or digest is None:
        raise FormatError(
            f"{where}: header metadata has only one of {MANIFEST_KEY!r} and "
            f"{MANIFEST_CHECKSUM_KEY!r}; the header is damaged"
        )
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as bad:  # a lone surrogate escape (\ud800) in the JSON string
        raise FormatError(f"{where}: the satchel manifest is not valid Unicode text") from bad
    if xxh3_hex(raw) != digest:
        raise IntegrityError(
            f"{where}: the satchel manifest does not match its checksum {digest}; the header "
            "is damaged (restore the file from a good copy)"
        )
    m = parse_manifest(text, where=where)
    names = {e.name for e in header.entries}
    if names != set(m.stored):
        extra, missing = sorted(names - set(m.stored)), sorted(set(m.stored) - names)
        raise FormatError(
            f"{where}: header tensors and manifest disagree (only in header: {extra[:5]}, "
            f"only in manifest: {missing[:5]})"
        )
    for e in header.entries:
        s = m.stored[e.name]
        wire_shape = s.shape if s.dtype.wire is not None else (s.nbytes,)
        wire = s.dtype.wire or "U8"
        if e.dtype.wire != wire or e.shape != wire_shape:
            raise FormatError(
                f"{where}: tensor {e.name!r} is {e.dtype.wire}{list(e.shape)} in the header "
                f"but the manifest stores it as {wire}{list(wire_shape)}"
            )
    # SPEC 3.1/3.5: keys starting "satchel" are reserved (for this and future versions).
    user_meta = {k: v for k, v in header.metadata.items() if not k.startswith(MANIFEST_KEY)}
    if any(k.startswith(MANIFEST_KEY) for k in m.metadata):
        raise FormatError(f"{where}: manifest metadata uses a reserved 'satchel' key")
    if user_meta != m.metadata:
        raise FormatError(f"{where}: header metadata and the manifest's copy of it disagree")
    return m
