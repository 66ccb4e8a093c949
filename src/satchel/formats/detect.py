"""Which format a path holds, from magic bytes and folder contents — never from its extension.

satchel's own file and plain safetensors are sniffed here (an 8-byte header length that fits the
file, then a JSON object); then each reader of :data:`~satchel.formats.registry.READERS` is
asked in order (the call order is in ``_reader``). For a path nobody recognises,
:func:`describe_unknown` says what its first bytes look like.
"""

from __future__ import annotations

import os
import string

from .._format.header import looks_native
from .._format.manifest import MANIFEST_KEY
from .._io.reader import open_file
from ..errors import FormatError
from ._codecs.zip import central_names
from ._reader import FormatName, Probe, probe
from .registry import READERS

__all__ = ["FormatName", "describe_unknown", "detect", "sniffed"]

# Leading bytes of common files satchel does not read, for describe_unknown's message.
_MAGICS = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file that is not a Keras model"),
    (b"\x1f\x8b", "gzip-compressed data (decompress it first)"),
    (b"BZh", "bzip2-compressed data (decompress it first)"),
    (b"\xfd7zXZ\x00", "xz-compressed data (decompress it first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (decompress it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF document"),
    (b"\x08\x01\x12", "a protocol buffer, perhaps an ONNX model (satchel does not read ONNX)"),
)
_TEXT = set(string.printable.encode())
_DAMAGED = "a damaged satchel or safetensors file (its header length or JSON is wrong)"


def detect(path: str | os.PathLike[str]) -> FormatName:
    """The format name of ``path``: ``satchel``, ``safetensors``, ``torch``, ``numpy``, ...

    Raises:
        SatchelFileNotFoundError: the path does not exist.
        FormatError: no reader recognises it (the message says what the bytes look like and
            lists what satchel reads).
    """
    name = sniffed(path)
    if name is None:
        message = describe_unknown(path) or _unknown(path, _DAMAGED)
        raise FormatError(message, path=str(path), reason="format not recognised")
    return name


def sniffed(path: str | os.PathLike[str], *, refine: bool = True) -> FormatName | None:
    """Like :func:`detect`, but ``None`` when no reader recognises the contents.

    ``refine=False`` skips telling satchel files from plain safetensors (which reads the
    header): loading does not need to know, and the header is then parsed only once.
    """
    pr = probe(path)
    if _safetensors(pr):
        if not refine:
            return "safetensors"
        try:
            opened = open_file(pr.path)
        except (FormatError, OSError):
            return "safetensors"
        return "satchel" if MANIFEST_KEY in opened.header.metadata else "safetensors"
    for name, reader in READERS.items():
        if reader.sniff(pr):
            return name
    return None


def _safetensors(pr: Probe) -> bool:
    """An 8-byte length that fits the file, followed by a JSON object (SPEC 1.1-1.2)."""
    return not pr.is_dir and looks_native(pr.head, pr.size)


def describe_unknown(path: str | os.PathLike[str]) -> str | None:
    """Why no reader took ``path``: what its first bytes look like and what satchel reads.

    ``None`` when the bytes could be a damaged satchel or safetensors file (shorter than the
    8-byte header length, JSON at byte 8, or no known signature and a length whose high bytes
    are zero): the native reader's error, which names the broken field, is then better.

    Raises:
        SatchelFileNotFoundError: the path does not exist.
    """
    pr = probe(path)
    head = pr.head
    if pr.is_dir:
        return _unknown(path, "a folder without the marker files of any checkpoint format")
    if pr.size < 8 or head[8:9] == b"{":
        return None  # SPEC H1-H3: the native reader names the length field or the JSON start
    what = _looks_like(pr)
    if what is None:
        if head[5:8] == b"\0\0\0":
            return None  # a plausible header length: a damaged file of satchel's own
        what = f"binary data starting {head[:16].hex(' ')}"
    return _unknown(path, what)


def _looks_like(pr: Probe) -> str | None:
    head = pr.head
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        names = central_names(pr.path, limit=1000) or []
        if any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return "a TorchScript archive"
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        return f"a zip archive ({shown or 'no members'})"
    if head[257:262] == b"ustar":
        return "a tar archive"
    for magic, what in _MAGICS:
        if head.startswith(magic):
            return what
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"a Python pickle (protocol {head[1]}) of no framework satchel reads"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        text = head[: e.start].decode("utf-8") if len(head) - e.start < 4 else ""
    if text and all(ord(c) >= 0x80 or ord(c) in _TEXT for c in text):
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            return f"JSON text ({_quote(stripped)})"
        return f"text ({_quote(stripped)})"
    return None


def _quote(text: str) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= 40 else line[:37] + "...")


def _unknown(path: str | os.PathLike[str], what: str) -> str:
    kinds = ", ".join(["satchel", "safetensors", *READERS])
    return (
        f"{path}: not a format satchel reads: it looks like {what}. satchel reads {kinds}, "
        "recognised from their contents (never from the file name)"
    )
