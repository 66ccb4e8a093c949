"""Cross-checks between the safetensors header and the satchel manifest (SPEC 3.2-3.5).

A flipped bit in a tensor name, dtype, shape or metadata value makes the two disagree, so such
damage is caught even though safetensors itself has no header checksum.
"""

from __future__ import annotations

import json
import math
from itertools import accumulate
from operator import mul, sub
from typing import Any

import xxhash

from .. import dtypes
from ..errors import FormatError, IntegrityError
from .header import MAX_CONTAINERS, METADATA_KEY, Entry, Header, render_columns
from .manifest import MANIFEST_CHECKSUM_KEY, MANIFEST_KEY, Manifest, parse_manifest

__all__ = ["manifest_of", "written_header", "xxh3_hex"]


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
    m = _manifest(header.metadata, where=where)
    if m is None:
        return None
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
    return m


def written_header(raw: bytes, *, header_len: int, where: str) -> tuple[Header, Manifest] | None:
    """The header and manifest of a file whose header is exactly what satchel writes, else None.

    satchel's writer renders the header from the manifest: ``__metadata__`` first, then the
    stored tensors in the manifest's order, back to back (SPEC 3.11). When rendering the
    manifest that way gives the very header bytes, every rule of SPEC 1.4-2.7 and 3.4 holds by
    construction, and the per-entry parse and checks are skipped. Any difference returns
    ``None``, and the caller takes the general path, which names what is wrong.

    Raises:
        IntegrityError: the manifest does not match its checksum.
        FormatError: the manifest breaks a rule of SPEC 3-5.
    """
    # SPEC 1.6's container cap comes before any parse (the general path reports it).
    if not raw.startswith(_PREFIX) or raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:
        return None
    try:
        text = raw.decode("ascii")
        meta, end = _DECODER.raw_decode(text, len(_PREFIX) - 1)
    except (ValueError, RecursionError):  # not ASCII, not JSON, a repeated key, too deep:
        # the general path says which
        return None
    if type(meta) is not dict or not all(type(v) is str for v in meta.values()):
        return None
    m = _manifest(meta, where=where)
    if m is None:
        return None
    if m.columns is not None:
        names, dnames, shapes = m.columns.names, m.columns.dtypes, m.columns.shapes
    else:
        names = list(m.stored)
        dnames = [s.dtype.name for s in m.stored.values()]
        shapes = [s.shape for s in m.stored.values()]
    if METADATA_KEY in names:
        return None
    # Whole-column operations (each map runs in C): offsets are the running sum of the sizes.
    sizes = list(map(mul, map(math.prod, shapes), map(_ITEMSIZE.__getitem__, dnames)))
    ends = list(accumulate(sizes))
    starts = list(map(sub, ends, sizes))
    wires = list(map(_WIRE.__getitem__, dnames))
    if "" in wires:  # SPEC 2.4: a dtype safetensors cannot name is stored as U8 bytes
        shapes = [sh if w else (n,) for w, sh, n in zip(wires, shapes, sizes, strict=True)]
        wires = [w or "U8" for w in wires]
    # The metadata object was parsed above (its spelling does not matter, its value does);
    # everything after it must be exactly the entries the manifest renders to.
    rendered = render_columns(names, wires, shapes, starts, ends)
    if text.rstrip(" ")[end:] != ("," + rendered + "}" if rendered else "}"):
        return None

    def entries() -> tuple[Entry, ...]:
        types = map(_BY_WIRE.__getitem__, wires)
        return tuple(map(Entry, names, types, shapes, starts, ends))

    pos = ends[-1] if ends else 0
    return Header(None, meta, 8 + header_len, pos, build=entries, ends=ends), m


_ITEMSIZE = {d.name: d.itemsize for d in dtypes.DTYPES}
_WIRE = {d.name: d.wire or "" for d in dtypes.DTYPES}
_BY_WIRE = {d.wire: d for d in dtypes.DTYPES if d.wire is not None}


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")  # SPEC 1.5; the general path names it
    return out


_PREFIX = b'{"__metadata__":{'
_DECODER = json.JSONDecoder(object_pairs_hook=_no_repeats)


def _manifest(metadata: dict[str, str], *, where: str) -> Manifest | None:
    """SPEC 3.1-3.5: the manifest in ``metadata``, checked against its checksum and the
    metadata; ``None`` when there is none."""
    text = metadata.get(MANIFEST_KEY)
    digest = metadata.get(MANIFEST_CHECKSUM_KEY)
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
    # SPEC 3.1/3.5: keys starting "satchel" are reserved (for this and future versions).
    user_meta = {k: v for k, v in metadata.items() if not k.startswith(MANIFEST_KEY)}
    if any(k.startswith(MANIFEST_KEY) for k in m.metadata):
        raise FormatError(f"{where}: manifest metadata uses a reserved 'satchel' key")
    if user_meta != m.metadata:
        raise FormatError(f"{where}: header metadata and the manifest's copy of it disagree")
    return m
