"""The safetensors layer of the single file: length prefix, JSON header, data offsets (SPEC 1-2).

Every number comes from an untrusted file, so each one is checked in Python ``int`` arithmetic
against a cap and against the bytes that really exist before anything is allocated or mapped.
Layout (little-endian)::

    [u64 N][N bytes: UTF-8 JSON object, space padded][data: tensors back to back, no holes]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from json.encoder import encode_basestring_ascii as c_quote
from operator import attrgetter
from typing import Any, NamedTuple

from .. import dtypes
from ..errors import FormatError

__all__ = [
    "ALIGNMENT",
    "MAX_CONTAINERS",
    "MAX_ENTRIES",
    "MAX_HEADER",
    "Entry",
    "Header",
    "check_addressable",
    "encode_header",
    "header_text",
    "json_object",
    "looks_native",
    "parse_header",
    "parse_length",
    "render_columns",
    "render_entries",
]

MAX_HEADER = 100_000_000  # SPEC 1.2, the same cap safetensors uses
MAX_ENTRIES = 1_000_000  # SPEC 1.6: bounds parse time and memory within the header cap
MAX_DIMS = 64  # SPEC 2.5
_TWO63 = 2**63
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_BY_WIRE = {d.wire: d for d in dtypes.DTYPES if d.wire is not None}
MAX_CONTAINERS = 8_000_000  # SPEC 1.6: JSON objects + arrays (raw '{' and '[' bytes) per header
ALIGNMENT = 64  # SPEC 1.3: data starts on a 64-byte boundary
METADATA_KEY = "__metadata__"


class Entry(NamedTuple):
    """One stored tensor as the safetensors header declares it; offsets relative to data start."""

    # A NamedTuple, not a frozen dataclass: as immutable, and 3x cheaper to build, which
    # matters at one per tensor in files of 50,000 tensors.

    name: str
    dtype: dtypes.DType
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class Header:
    """A validated header: entries in data order, the string metadata, where data begins.

    A header satchel wrote is checked as a whole against its manifest (SPEC 3.11); its entries
    are then built only when someone asks for them, and ``ends`` holds the end offset of each
    stored tensor in the manifest's order (each starts where the previous one ends).
    """

    __slots__ = ("_build", "_by_name", "_entries", "data_len", "data_start", "ends", "metadata")

    def __init__(
        self,
        entries: tuple[Entry, ...] | None,
        metadata: dict[str, str],
        data_start: int,
        data_len: int,
        *,
        build: Callable[[], tuple[Entry, ...]] | None = None,
        ends: list[int] | None = None,
    ) -> None:
        if entries is None and build is None:
            raise TypeError("Header needs its entries or how to build them")
        self._entries = entries
        self._build = build
        self._by_name: dict[str, Entry] | None = None
        self.metadata = metadata
        self.data_start = data_start
        self.data_len = data_len
        self.ends = ends

    @property
    def entries(self) -> tuple[Entry, ...]:
        if self._entries is None:
            assert self._build is not None
            self._entries = self._build()
            self._build = None
        return self._entries

    def entry(self, name: str) -> Entry | None:
        if self._by_name is None:
            self._by_name = {e.name: e for e in self.entries}
        return self._by_name.get(name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header):
            return NotImplemented
        mine = (self.entries, self.metadata, self.data_start, self.data_len)
        return mine == (other.entries, other.metadata, other.data_start, other.data_len)

    # Unhashable, like the dataclass it was: its contents are mutable.
    __hash__ = None  # type: ignore[assignment]


def looks_native(head: bytes, file_size: int) -> bool:
    """Whether a file starting ``head`` is shaped like safetensors: an 8-byte length that fits
    the file, then a JSON object (SPEC 1.1-1.2). What detection asks before anything else."""
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= MAX_HEADER and 8 + n <= file_size and head[8:9] == b"{"


def parse_length(prefix: bytes, file_size: int, *, where: str) -> int:
    """SPEC 1.1-1.2: the header length N, checked against the cap and the file size."""
    if len(prefix) < 8 or file_size < 8:
        raise FormatError(
            f"{where}: file is {file_size} bytes, too short for the 8-byte header length; "
            "it is truncated or not a satchel/safetensors file"
        )
    n = int.from_bytes(prefix[:8], "little")
    if n < 2:
        raise FormatError(f"{where}: header length {n} is too small to hold a JSON object")
    if n > MAX_HEADER:
        raise FormatError(
            f"{where}: header length {n} exceeds the {MAX_HEADER}-byte cap; the file is corrupt "
            "or not a satchel/safetensors file"
        )
    if 8 + n > file_size:
        raise FormatError(
            f"{where}: header length {n} runs past the end of the file ({file_size} bytes); "
            "the file is truncated"
        )
    return n


def json_object(raw: bytes, *, where: str, what: str) -> dict[str, Any]:
    """Parse JSON that must be an object, refusing duplicate keys (SPEC 1.4-1.5)."""
    # JSON containers cost ~60 bytes of memory each in Python: bound them before parsing, so a
    # 100 MB header of "[{},{},...]" is refused instead of exhausting memory (SPEC 1.6).
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_CONTAINERS:
        raise FormatError(
            f"{where}: {what} holds {containers:,} JSON objects and arrays, more than the "
            f"{MAX_CONTAINERS:,} satchel parses"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: {what} is not valid UTF-8 (byte {e.start})") from e
    if not text.startswith("{"):
        raise FormatError(f"{where}: {what} must start with '{{', found {text[:1]!r}")
    obj = _strict(text, where=where, what=what)
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: {what} must be a JSON object, got {type(obj).__name__}")
    if _SURROGATE_ESCAPE.search(raw):
        # JSON can spell a lone UTF-16 surrogate as an escape; such a string is not text and
        # breaks whoever encodes it later. Checked only when an escape of that range appears.
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise FormatError(f"{where}: {what} holds a lone surrogate escape (not text)") from e
    return obj


def _strict(text: str, *, where: str, what: str) -> Any:
    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):  # the slow search runs only when there is a duplicate
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    raise FormatError(f"{where}: {what} has the key {k!r} twice")
                seen.add(k)
        return out

    try:
        return json.loads(
            text, object_pairs_hook=no_dupes, parse_constant=_no_constant, parse_float=_finite
        )
    except FormatError:
        raise
    except RecursionError as e:
        raise FormatError(f"{where}: {what} is nested too deeply") from e
    except ValueError as e:  # JSONDecodeError and over-long integer literals
        raise FormatError(f"{where}: {what} is not valid JSON: {e}") from e


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf; SPEC 4.1 allows finite numbers only
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_header(raw: bytes, *, header_len: int, file_size: int, where: str) -> Header:
    """Validate the JSON header against SPEC 1-2 and the real file size.

    Raises:
        FormatError: naming the file and the field that breaks a rule.
    """
    obj = json_object(raw, where=where, what="header")
    if len(obj) > MAX_ENTRIES:
        raise FormatError(f"{where}: header declares {len(obj)} entries, cap is {MAX_ENTRIES}")
    meta_raw = obj.pop(METADATA_KEY, {})
    if not isinstance(meta_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta_raw.items()
    ):
        raise FormatError(f"{where}: header field {METADATA_KEY!r} must map strings to strings")
    data_start = 8 + header_len
    data_len = file_size - data_start
    entries = sorted(
        (_entry(name, spec, where=where) for name, spec in obj.items()),
        key=lambda e: (e.start, e.end),
    )
    pos = 0
    for e in entries:
        # SPEC 2.6: entries tile the data section exactly: no holes, no overlaps.
        if e.start != pos:
            problem = "overlaps the previous one" if e.start < pos else "leaves a hole before it"
            raise FormatError(
                f"{where}: tensor {e.name!r} data_offsets [{e.start}, {e.end}] {problem} "
                f"(expected start {pos})"
            )
        pos = e.end
    if pos != data_len:
        verb = "truncated" if pos > data_len else "followed by unaccounted bytes"
        raise FormatError(
            f"{where}: tensors cover {pos} data bytes but the file holds {data_len}; "
            f"the file is {verb}"
        )
    return Header(tuple(entries), dict(meta_raw), data_start, data_len)


def _entry(name: str, spec: object, *, where: str) -> Entry:
    # Fast path: a well-formed entry (the usual case) is checked without building messages.
    if type(spec) is dict and spec.keys() == _ENTRY_KEYS:
        wire, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        dt = _BY_WIRE.get(wire) if type(wire) is str else None
        if (
            dt is not None
            and type(shape) is list
            and len(shape) <= MAX_DIMS
            and all(type(n) is int and 0 <= n < _TWO63 for n in shape)
            and type(offsets) is list
            and len(offsets) == 2
            and all(type(n) is int and 0 <= n < _TWO63 for n in offsets)
            and offsets[1] - offsets[0] == math.prod(shape) * dt.itemsize
            and all(shape)  # zero-size shapes take the full check (addressability)
        ):
            return Entry(name, dt, tuple(shape), offsets[0], offsets[1])
    return _entry_checked(name, spec, where=where)


def _entry_checked(name: str, spec: object, *, where: str) -> Entry:
    field = f"{where}: tensor {name!r}"
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{field} must be an object with exactly dtype, shape, data_offsets")
    wire = spec["dtype"]
    dt = dtypes.by_wire(wire) if isinstance(wire, str) else None
    if dt is None:
        raise FormatError(f"{field} has unknown dtype {wire!r}")
    shape = _ints(spec["shape"], f"{field} shape", max_len=MAX_DIMS)
    offsets = _ints(spec["data_offsets"], f"{field} data_offsets", max_len=2)
    if len(offsets) != 2:
        raise FormatError(f"{field} data_offsets must be [start, end]")
    start, end = offsets
    if end < start:
        raise FormatError(f"{field} data_offsets end {end} is before start {start}")
    nbytes = math.prod(shape) * dt.itemsize  # Python int: cannot overflow (SPEC 2.5)
    if end - start != nbytes:
        raise FormatError(
            f"{field} shape {list(shape)} of {dt.wire} needs {nbytes} bytes but data_offsets "
            f"span {end - start}"
        )
    check_addressable(shape, dt.itemsize, f"{field} shape")
    return Entry(name, dt, shape, start, end)


def check_addressable(shape: tuple[int, ...], itemsize: int, field: str) -> None:
    """SPEC 2.5: the shape's size, counting zero dimensions as 1, fits in 2^63 bytes.

    A zero-size shape like [2^62, 2^62, 0] holds no data but no array library can create it.
    """
    size = itemsize
    for n in shape:
        size *= max(n, 1)
    if size >= 2**63:
        raise FormatError(f"{field} {list(shape)} describes more than 2^63 bytes")


def _ints(value: object, field: str, *, max_len: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > max_len:
        raise FormatError(f"{field} must be a list of at most {max_len} integers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
            raise FormatError(f"{field} holds {v!r}; expected integers in [0, 2^63)")
    return tuple(value)


def encode_header(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    """The 8-byte length plus the JSON header, space padded so data starts 64-byte aligned."""
    body = header_text(entries, metadata).encode("ascii")
    body += b" " * (-(8 + len(body)) % ALIGNMENT)
    return len(body).to_bytes(8, "little") + body


def header_text(entries: Iterable[Entry], metadata: dict[str, str]) -> str:
    """The header JSON, unpadded: what ``json.dumps(..., separators=(",", ":"),
    ensure_ascii=True)`` makes of ``{"__metadata__": metadata, name: entry, ...}``, spelled out
    so that a reader can rebuild it from a manifest and compare (SPEC 3.11)."""
    parts = [f'"{METADATA_KEY}":{_dumps(metadata)}'] if metadata else []
    rendered = render_entries(entries)
    if rendered:
        parts.append(rendered)
    return "{" + ",".join(parts) + "}"


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def render_entries(entries: Iterable[Entry]) -> str:
    """The header's tensor entries as compact JSON members (no braces), in the given order."""
    items = list(entries)
    if not items:
        return ""
    names, types, shapes, starts, ends = zip(*items, strict=True)
    wires = map(_WIRE, types)
    return render_columns(names, wires, shapes, starts, ends)


def render_columns(
    names: Iterable[str],
    wires: Iterable[str],
    shapes: Sequence[tuple[int, ...]],
    starts: Iterable[int],
    ends: Iterable[int],
) -> str:
    """Entries given as columns (wire dtype names), rendered as compact JSON members: what
    ``json.dumps(..., separators=(",", ":"), ensure_ascii=True)`` writes for them, each column
    mapped in C (``c_quote`` is the string encoder json.dumps itself uses)."""
    spelled = {sh: "[" + ",".join(map(str, sh)) + "]" for sh in set(shapes)}
    quoted, spelled_shapes = map(c_quote, names), map(spelled.__getitem__, shapes)
    members = zip(quoted, wires, spelled_shapes, starts, ends, strict=True)
    return ",".join(map(_ENTRY.__mod__, members))


_ENTRY = '%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}'
_WIRE = attrgetter("wire")
