"""NumPy ``.npy`` files without ``np.load``: a strict header parser and zero-copy arrays.

Layout (docs/formats.md#npy, from numpy ``lib/_format_impl.py``)::

    b"\\x93NUMPY" u8 major u8 minor
    v1.0: u16 LE header_len (latin1)   v2.0: u32 LE header_len (latin1)   v3.0: u32 (utf8)
    header: "{'descr': <descr>, 'fortran_order': <bool>, 'shape': (<ints>), }" + padding
    data: prod(shape) * itemsize bytes, C order (Fortran order if fortran_order)

numpy reads the header with ``ast.literal_eval``; we never evaluate anything. A tiny parser
accepts exactly the literal grammar numpy writes (strings, ints, booleans, tuples, lists, one
dict) and refuses the rest, after capping the header at numpy's own default of 10000 bytes
(docs/formats.md rule N10). Object arrays (``'|O'``) hold a pickle after the header and are refused
without reading it (rule P10, CVE-2019-6446).

Returned values: dtypes in satchel's table become :class:`~satchel._read.refs.ArrayRef`
views of the file (Fortran order as strides; big-endian data byteswapped into a copy once).
Other dtypes (structured records, strings, datetimes) come back as NumPy arrays viewing the
file bytes, converted to native byte order when the file's order differs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
from numpy.lib.format import descr_to_dtype

from .. import dtypes
from .._read.refs import ArrayRef, Storage, c_strides, make_ref
from ..errors import FormatError, UnsafeContentError
from ._codecs.source import map_file
from ._reader import Probe

__all__ = ["HEAD_SIZE", "MAGIC", "MAX_HEADER", "image_size", "parse_header", "read", "read_npy",
           "sniff"]  # fmt: skip

MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000  # numpy's default max_header_size: literal headers are never larger
HEAD_SIZE = 12 + MAX_HEADER  # magic, version, a 4-byte header length, the longest header
_MAX_NDIM = 64  # numpy 2's NPY_MAXDIMS
_MAX_DEPTH = 16  # nesting of structured descrs; numpy's own writer never nests this deep
_KEYS = ("descr", "fortran_order", "shape")

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


def read_npy(buf: U8Array, *, where: str) -> ArrayRef | np.ndarray[Any, Any]:
    """The array held by one ``.npy`` image (a whole file or an ``.npz`` member).

    Raises:
        UnsafeContentError: the array holds Python objects (its payload is a pickle).
        FormatError: bad magic or version, a header outside the grammar, too few or too
            many data bytes.
    """
    descr, fortran, shape, start = parse_header(buf, where=where)
    dt = _dtype(descr, where)
    nbytes = _nbytes(shape, dt)
    if start + nbytes != len(buf):
        raise FormatError(
            f"{where}: shape {shape} of {dt.str} needs {nbytes} data bytes after the "
            f"{start}-byte header, the file holds {len(buf) - start}; it is truncated or has "
            "trailing bytes"
        )
    raw = buf[start:]
    known = dtypes.by_numpy(dt.newbyteorder("=")) if dt.fields is None else None
    if known is not None:
        if dt.byteorder == ">":
            raw = byteswapped(raw, known)
        strides = tuple(reversed(c_strides(tuple(reversed(shape))))) if fortran else None
        return make_ref(Storage(raw, where), known, shape, strides=strides, where=where)
    arr = raw.view(dt)  # structured, string and datetime records: data, never objects
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    native = dt.newbyteorder("=")
    if native != dt:  # (dtype.isnative misses big-endian subarray fields)
        # Zeroed first so that padding between record fields never shows stale memory.
        out = np.zeros_like(arr, dtype=native)
        out[...] = arr
        arr = out
    return arr


def image_size(head: U8Array | bytes, *, where: str) -> int:
    """The size of the whole ``.npy`` image whose first bytes (at least :data:`HEAD_SIZE`, or
    all of a shorter image) are ``head``: its header plus the array bytes the header declares.

    For an ``.npz`` member: checked against the size the zip declares before it is inflated.

    Raises:
        UnsafeContentError: the array holds Python objects.
        FormatError: as :func:`parse_header`, or a dtype that is not a fixed-size type.
    """
    buf = np.frombuffer(head, dtype=np.uint8) if isinstance(head, bytes) else head
    descr, _, shape, start = parse_header(buf, where=where)
    return start + _nbytes(shape, _dtype(descr, where))


def _nbytes(shape: tuple[int, ...], dt: np.dtype[Any]) -> int:
    # Python ints: np.prod would wrap silently (rule N3).
    return math.prod(shape) * dt.itemsize


def byteswapped(raw: U8Array, dt: dtypes.DType) -> U8Array:
    """A little-endian copy of big-endian elements of ``dt`` (complex parts swap separately)."""
    if dt.itemsize == 1:
        return raw
    big = raw.view(dt.numpy.newbyteorder(">"))
    return big.astype(dt.numpy).view(np.uint8)


def parse_header(buf: U8Array, *, where: str) -> tuple[Any, bool, tuple[int, ...], int]:
    """``(descr, fortran_order, shape, data_start)`` from the preamble and header dict.

    Raises:
        FormatError: wrong magic or version, a header length over the cap or past the end of
            the file, or a header that is not exactly numpy's three-key literal dict.
    """
    if len(buf) < 10 or bytes(buf[:6]) != MAGIC:
        raise FormatError(f"{where}: not a .npy file (no \\x93NUMPY magic)")
    major, minor = int(buf[6]), int(buf[7])
    if major not in (1, 2, 3) or minor != 0:
        raise FormatError(f"{where}: .npy format version {major}.{minor} is not 1.0, 2.0 or 3.0")
    size_len = 2 if major == 1 else 4
    if len(buf) < 8 + size_len:
        raise FormatError(f"{where}: .npy file ends inside its header length")
    header_len = int.from_bytes(bytes(buf[8 : 8 + size_len]), "little")
    start = 8 + size_len + header_len
    # Rule N10: check the declared length before touching that many bytes.
    if header_len > MAX_HEADER:
        raise FormatError(
            f"{where}: .npy header_len {header_len} exceeds the {MAX_HEADER}-byte cap "
            "(numpy's max_header_size); the file is corrupt or hostile"
        )
    if start > len(buf):
        raise FormatError(
            f"{where}: .npy header_len {header_len} runs past the end of the "
            f"{len(buf)}-byte file (truncated)"
        )
    encoding = "utf-8" if major == 3 else "latin-1"
    try:
        text = bytes(buf[8 + size_len : start]).decode(encoding)
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: .npy header is not valid {encoding}") from e
    header = _Literal(text, where).document()
    if not isinstance(header, dict) or sorted(header) != sorted(_KEYS):
        keys = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise FormatError(f"{where}: .npy header must have exactly the keys {_KEYS}, got {keys}")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(fortran, bool):
        raise FormatError(f"{where}: .npy fortran_order is {fortran!r}, not True or False")
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_NDIM
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        or not all(0 <= n < 2**63 for n in shape)
    ):
        raise FormatError(f"{where}: .npy shape {str(shape)[:80]} is not a tuple of sizes")
    return header["descr"], fortran, shape, start


def _dtype(descr: Any, where: str) -> np.dtype[Any]:
    if not isinstance(descr, (str, list)):
        raise FormatError(f"{where}: .npy descr {str(descr)[:80]} is not a dtype description")
    try:
        # Builds a dtype from strings and tuples only; nothing is imported or called.
        dt = descr_to_dtype(cast(Any, descr))
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, SyntaxError) as e:
        raise FormatError(f"{where}: .npy descr {str(descr)[:80]} is not a valid dtype") from e
    if dt.hasobject:
        # Rule P10: the payload of an object array is a pickle; never read it.
        raise UnsafeContentError(
            f"{where}: .npy array of dtype {dt.str} holds Python objects stored as a pickle; "
            "satchel never unpickles. Convert it to a numeric array in a trusted environment"
        )
    if dt.itemsize == 0 or dt.subdtype is not None:
        raise FormatError(f"{where}: .npy descr {dt.str} has no fixed-size element type")
    return dt


class _Literal:
    """A strict reader for the Python literal subset numpy writes in ``.npy`` headers."""

    _ESCAPES: ClassVar[dict[str, str]] = {
        "\\": "\\",
        "'": "'",
        '"': '"',
        "n": "\n",
        "t": "\t",
        "r": "\r",
        "0": "\0",
    }

    def __init__(self, text: str, where: str) -> None:
        self.text, self.pos, self.where = text, 0, where

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.where}: .npy header character {self.pos}: {what}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}")
        self.pos += 1

    def document(self) -> Any:
        value = self.dict()
        if self.peek():
            raise self.fail("text after the header dict")
        return value

    def dict(self) -> dict[str, Any]:
        self.expect("{")
        out: dict[str, Any] = {}
        while self.peek() != "}":
            key = self.string()
            if key in out:
                raise self.fail(f"key {key!r} appears twice")
            self.expect(":")
            out[key] = self.value(1)
            if self.peek() != "}":
                self.expect(",")
        self.pos += 1
        return out

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail(f"nested deeper than {_MAX_DEPTH} levels")
        c = self.peek()
        if c in ("'", '"'):
            return self.string()
        if c in ("(", "["):
            items = self.sequence(depth, ")" if c == "(" else "]")
            return tuple(items) if c == "(" else items
        for word, val in (("True", True), ("False", False)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return val
        return self.integer()

    def sequence(self, depth: int, close: str) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while self.peek() != close:
            items.append(self.value(depth + 1))
            if self.peek() != close:
                self.expect(",")
        self.pos += 1
        return items

    def integer(self) -> int:
        start = self.pos
        if self.text.startswith("-", self.pos):
            self.pos += 1
        while (
            self.pos < len(self.text)
            and self.text[self.pos].isascii()
            and (self.text[self.pos].isdigit())
        ):
            self.pos += 1
        digits = self.text[start : self.pos]
        if digits in ("", "-") or len(digits) > 20:
            raise self.fail("expected a string, integer, boolean, tuple or list")
        if self.text.startswith("L", self.pos):  # Python 2 longs in headers from numpy < 1.9
            self.pos += 1
        return int(digits)

    def string(self) -> str:
        quote = self.peek()
        if quote not in ("'", '"'):
            raise self.fail("expected a quoted string")
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise self.fail("string is not closed")
            c = self.text[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\":
                out.append(self.escape())
            else:
                out.append(c)

    def escape(self) -> str:
        c = self.text[self.pos : self.pos + 1]
        if c in self._ESCAPES:
            self.pos += 1
            return self._ESCAPES[c]
        width = {"x": 2, "u": 4, "U": 8}.get(c)
        digits = self.text[self.pos + 1 : self.pos + 1 + width] if width else ""
        if (
            not width
            or len(digits) != width
            or not all(d in "0123456789abcdefABCDEF" for d in digits)
        ):
            raise self.fail("unsupported escape in string")
        self.pos += 1 + width
        code = int(digits, 16)
        if code > 0x10FFFF:
            raise self.fail("escape is not a Unicode code point")
        return chr(code)


# -- registry hooks -----------------------------------------------------------------------------
def sniff(probe: Probe) -> bool:
    """The ``\\x93NUMPY`` magic."""
    return probe.head[:6] == MAGIC


def read(path: Path, *, verify: bool = True) -> Any:
    """The array a ``.npy`` file holds (see the module docstring for its type)."""
    return read_npy(map_file(path), where=str(path))
