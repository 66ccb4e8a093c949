"""A read-only OCDBT key-value store: tensorstore's B+tree database, decoded by hand.

The layout is tensorstore's ``kvstore/ocdbt/index.rst`` ("Storage format") and its codecs
(``kvstore/ocdbt/format/*.cc``). Every encoded manifest and node is an *envelope*: a magic
``uint32be``, the total length ``uint64le``, a format version varint (0), a compression varint
(0 none, 1 one zstd frame), the body, and a CRC-32C ``uint32le`` of everything before it.

* ``manifest.ocdbt`` (magic ``0c db 3a 2a``): config (uuid, manifest kind, limits, version tree
  arity, compression), a data file table, the newest versions inline (each naming its B+tree
  root by data file, offset and length) and references to older version tree nodes.
* B+tree nodes (magic ``0c db 20 de``) inside data files ``d/<hex>``: a height byte, a data
  file table, then columns: key prefix/suffix lengths and suffix bytes, and either child node
  references (interior) or values (leaf), stored inline or as (file, offset, length) runs.

Only the newest version is read, as a plain reader of the database does. Every varint,
length, offset and count is checked against caps and the bytes that remain; data file paths
must stay inside the database folder (no absolute paths, no ``..``, no symlink way out).
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FormatError, IntegrityError
from .crc32c import crc32c
from .inflate import inflate_zstd
from .source import map_file

__all__ = [
    "MANIFEST",
    "MANIFEST_MAGIC",
    "Store",
    "Value",
    "open_store",
    "read_capped",
]

MANIFEST = "manifest.ocdbt"
MANIFEST_MAGIC = 0x0CDB3A2A
_BTREE_MAGIC = 0x0CDB20DE
_MAX_MANIFEST = 16 << 20  # encoded and decoded: a manifest holds a few versions, not data
_MAX_NODE = 256 << 20  # decoded B+tree node (tensorstore's default limit is 100 MB)
_MAX_PATH = 65535  # kMaxPathLength
_MAX_KEY = 65535  # kMaxKeyLength
_MAX_ARITY = 1 << 20  # kMaxNodeArity
_MAX_NODES = 1_000_000  # B+tree nodes visited in one store
_MAX_KEYS = 10_000_000  # keys in one store
_MAX_VARINT = 10
U8Array = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class Value:
    """A key's value: ``inline`` bytes, or ``length`` bytes of ``file`` at ``offset``."""

    inline: bytes | None
    file: Path | None = None
    offset: int = 0
    length: int = 0


def read_capped(path: Path, cap: int, *, what: str) -> bytes:
    """The whole of a small file, refused (before reading) when larger than ``cap`` bytes.

    Raises:
        FormatError: the file is missing, unreadable, or larger than ``cap``.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > cap:
                raise FormatError(f"{path}: {size} bytes is too large for {what} (cap {cap})")
            raw = f.read(size + 1)
    except FileNotFoundError as e:
        raise FormatError(f"{path}: missing; an Orbax/OCDBT checkpoint needs its {what}") from e
    except OSError as e:
        raise FormatError(f"{path}: cannot be read ({e})") from e
    if len(raw) > size:
        raise FormatError(f"{path}: grew while being read")
    return raw


class _Cursor:
    """Reads a decoded body front to back; every read is checked against what remains."""

    def __init__(self, buf: bytes, where: str) -> None:
        self.buf, self.pos, self.where = buf, 0, where

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.where}: {what} (at byte {self.pos} of the decoded body)")

    def byte(self, field: str) -> int:
        if self.pos >= len(self.buf):
            raise self.fail(f"{field} runs past the end")
        self.pos += 1
        return self.buf[self.pos - 1]

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{field} needs {n} bytes, {len(self.buf) - self.pos} remain")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def varint(self, field: str, cap: int = (1 << 64) - 1) -> int:
        value = 0
        for i in range(_MAX_VARINT):
            b = self.byte(field)
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if value > cap:
                    raise self.fail(f"{field} = {value} exceeds its limit {cap}")
                return value
        raise self.fail(f"{field} varint is longer than {_MAX_VARINT} bytes")

    def varints(self, n: int, field: str, cap: int = (1 << 64) - 1) -> list[int]:
        if n > len(self.buf) - self.pos:  # each varint is at least one byte
            raise self.fail(f"{n} {field} values cannot fit in the bytes that remain")
        return [self.varint(field, cap) for _ in range(n)]

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} unexpected bytes after the last field")


def _envelope(buf: bytes, magic: int, cap: int, *, where: str, verify: bool) -> _Cursor:
    """The decoded body of a manifest or node (index.rst "Manifest header" / "footer")."""
    if len(buf) < 4 + 8 + 2 + 4:
        raise FormatError(f"{where}: {len(buf)} bytes is too short for an OCDBT header")
    (found,) = struct.unpack_from(">I", buf, 0)
    if found != magic:
        raise FormatError(f"{where}: magic 0x{found:08x}, expected 0x{magic:08x}")
    (length,) = struct.unpack_from("<Q", buf, 4)
    if length != len(buf):
        raise FormatError(f"{where}: header length {length} but {len(buf)} bytes are stored")
    if verify:
        (stored,) = struct.unpack_from("<I", buf, len(buf) - 4)
        if crc32c(buf[:-4]) != stored:
            raise IntegrityError(f"{where}: CRC-32C mismatch; the file is damaged")
    head = _Cursor(buf[:-4], where)
    head.pos = 12
    version = head.varint("format version")
    if version != 0:
        raise FormatError(f"{where}: format version {version}; satchel reads version 0")
    compression = head.varint("compression format")
    body = buf[head.pos : len(buf) - 4]
    if compression == 0:
        if len(body) > cap:
            raise FormatError(f"{where}: body of {len(body)} bytes exceeds {cap}")
        return _Cursor(body, where)
    if compression == 1:
        return _Cursor(inflate_zstd(body, cap, where=where), where)
    raise FormatError(f"{where}: compression format {compression} is unknown (0 none, 1 zstd)")


def _data_file_table(cur: _Cursor, transitive: str) -> list[tuple[str, str]]:
    """(base path, full path) of each data file (index.rst "Data file table format")."""
    n = cur.varint("num_files", cap=len(cur.buf) - cur.pos)
    prefix = [0, *cur.varints(max(n - 1, 0), "path_prefix_length", _MAX_PATH)]
    suffix = cur.varints(n, "path_suffix_length", _MAX_PATH)
    base = cur.varints(n, "base_path_length", _MAX_PATH)
    out: list[tuple[str, str]] = []
    prev = b""
    for i in range(n):
        if prefix[i] > len(prev):
            raise cur.fail(f"data file {i}: prefix length {prefix[i]} exceeds the previous path")
        path = prev[: prefix[i]] + cur.take(suffix[i], f"data file {i} path")
        if base[i] > len(path) or len(path) + len(transitive) > _MAX_PATH:
            raise cur.fail(f"data file {i}: base path length {base[i]} or path length invalid")
        try:
            text = path.decode("utf-8")
            base_text = path[: base[i]].decode("utf-8")
        except UnicodeDecodeError as e:
            raise cur.fail(f"data file {i}: path is not UTF-8") from e
        out.append((transitive + base_text, transitive + text))
        prev = path
    return out


def _file_ref(cur: _Cursor, table: list[tuple[str, str]], field: str) -> int:
    i = cur.varint(field)
    if i >= len(table):
        raise cur.fail(f"{field} {i} is outside the data file table of {len(table)}")
    return i


class Store:
    """The keys and values of one OCDBT database folder (newest version)."""

    def __init__(self, root: Path, *, verify: bool) -> None:
        self.root = root
        self.verify = verify
        self._real = root.resolve()
        self._files: dict[Path, U8Array] = {}
        self.values: dict[bytes, Value] = {}
        self._nodes = 0

    # -- files ---------------------------------------------------------------------------------
    def resolve(self, rel: str, *, where: str) -> Path:
        """``rel`` under the root; absolute paths, ``..`` and symlinks leading out are refused."""
        parts = rel.split("/")
        if (
            not rel
            or rel.startswith("/")
            or "\\" in rel
            or "\x00" in rel
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise FormatError(f"{where}: data file path {rel!r} is not a plain relative path")
        path = self.root.joinpath(*parts)
        real = path.resolve()
        if not real.is_relative_to(self._real):
            raise FormatError(f"{where}: data file {rel!r} leads outside {self.root}")
        return path

    def bytes_at(self, path: Path, offset: int, length: int, *, where: str) -> U8Array:
        """``length`` bytes of a data file at ``offset`` (the file is mapped once)."""
        data = self._files.get(path)
        if data is None:
            if not path.is_file():
                raise FormatError(f"{where}: data file {path} is missing")
            data = self._files[path] = map_file(path)
        if not 0 <= offset <= offset + length <= data.size:
            raise FormatError(
                f"{where}: bytes [{offset}, {offset + length}) lie outside {path.name} "
                f"({data.size} bytes); the file is truncated or corrupt"
            )
        return data[offset : offset + length]

    def read(self, key: bytes, *, cap: int) -> bytes | None:
        """The value of ``key`` (``None`` when absent), refusing values above ``cap`` bytes."""
        v = self.values.get(key)
        if v is None:
            return None
        where = f"{self.root}: key {key.decode('utf-8', 'replace')!r}"
        if v.inline is not None:
            return v.inline
        if v.length > cap:
            raise FormatError(f"{where}: value of {v.length} bytes exceeds {cap}")
        assert v.file is not None
        return self.bytes_at(v.file, v.offset, v.length, where=where).tobytes()

    # -- manifest ------------------------------------------------------------------------------
    def load(self) -> None:
        where = str(self.root / MANIFEST)
        raw = read_capped(self.root / MANIFEST, _MAX_MANIFEST, what="OCDBT manifest")
        cur = _envelope(raw, MANIFEST_MAGIC, _MAX_MANIFEST, where=where, verify=self.verify)
        cur.take(16, "uuid")
        kind = cur.byte("manifest_kind")
        if kind != 0:
            raise FormatError(
                f"{where}: manifest kind {kind} (numbered manifests) is not supported; "
                "satchel reads single-file OCDBT manifests"
            )
        cur.varint("max_inline_value_bytes", cap=(1 << 32) - 1)
        cur.varint("max_decoded_node_bytes", cap=(1 << 32) - 1)
        arity_log2 = cur.byte("version_tree_arity_log2")
        if not 1 <= arity_log2 <= 16:
            raise cur.fail(f"version_tree_arity_log2 {arity_log2} outside [1, 16]")
        method = cur.varint("compression_method")
        if method == 1:
            cur.take(4, "zstd level")
        elif method != 0:
            raise cur.fail(f"compression method {method} is unknown")
        table = _data_file_table(cur, "")
        # Inline versions (index.rst "Version tree leaf node entries"): columns of n values.
        n = cur.varint("num_versions", cap=1 << arity_log2)
        if n == 0:
            raise cur.fail("the manifest lists no version")
        gens = cur.varints(n, "generation_number")
        if gens[0] == 0 or any(a >= b for a, b in itertools.pairwise(gens)):
            raise cur.fail(f"generation numbers {gens} are not positive and increasing")
        heights = [cur.byte("root_height") for _ in range(n)]
        files = [_file_ref(cur, table, "data_file_id") for _ in range(n)]
        offsets = cur.varints(n, "data_file_offset")
        lengths = cur.varints(n, "data_file_length")
        for stat in ("num_keys", "num_tree_bytes", "num_indirect_value_bytes"):
            cur.varints(n, stat)
        cur.take(8 * n, "commit_time")
        m = cur.varint("num_version_nodes", cap=64)
        cur.varints(m, "generation_number")
        for _ in range(m):
            _file_ref(cur, table, "version node data_file_id")
        cur.varints(3 * m, "version node reference")
        cur.take(8 * m, "commit_time")
        cur.take(m, "entry_height")
        cur.end()
        base, full = table[files[-1]]
        if full == "" and offsets[-1] == 0 and lengths[-1] == 0:
            return  # the newest version is an empty database
        self._node(base, full, (offsets[-1], lengths[-1]), heights[-1], b"", where=where)

    # -- B+tree --------------------------------------------------------------------------------
    def _node(
        self,
        base: str,
        rel: str,
        span: tuple[int, int],
        height: int,
        prefix: bytes,
        *,
        where: str,
    ) -> None:
        """Read the node ``span`` = (offset, length) of data file ``rel``, then its children."""
        offset, length = span
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise FormatError(f"{self.root}: more than {_MAX_NODES} B+tree nodes")
        path = self.resolve(rel, where=where)
        if length > _MAX_NODE:
            raise FormatError(f"{where}: B+tree node of {length} bytes exceeds {_MAX_NODE}")
        raw = self.bytes_at(path, offset, length, where=where).tobytes()
        here = f"{path} (B+tree node at byte {offset})"
        cur = _envelope(raw, _BTREE_MAGIC, _MAX_NODE, where=here, verify=self.verify)
        found = cur.byte("height")
        if found != height:
            raise cur.fail(f"height {found}, but its parent expects {height}")
        table = _data_file_table(cur, base)
        n = cur.varint("num_entries", cap=_MAX_ARITY)
        if n == 0:
            raise cur.fail("empty B+tree node")
        keys, common = _keys(cur, n, interior=height > 0)
        if height > 0:
            files = [_file_ref(cur, table, "data_file_id") for _ in range(n)]
            offsets = cur.varints(n, "data_file_offset")
            lengths = cur.varints(n, "data_file_length", cap=_MAX_NODE)
            cur.varints(3 * n, "statistics")
            cur.end()
            for i in range(n):
                child_base, child = table[files[i]]
                child_prefix = prefix + keys[i][: common[i]]
                span = (offsets[i], lengths[i])
                self._node(child_base, child, span, height - 1, child_prefix, where=here)
            return
        lengths = cur.varints(n, "value_length")
        kinds = [cur.byte("value_kind") for _ in range(n)]
        if any(k > 1 for k in kinds):
            raise cur.fail(f"value_kind {max(kinds)} is unknown (0 inline, 1 out of line)")
        indirect = [i for i in range(n) if kinds[i] == 1]
        files = [_file_ref(cur, table, "data_file_id") for _ in indirect]
        offsets = cur.varints(len(indirect), "data_file_offset")
        for i, f, off in zip(indirect, files, offsets, strict=True):
            if off + lengths[i] >= 1 << 64:
                raise cur.fail(f"value {i}: offset {off} + length {lengths[i]} overflows")
            self._add(prefix + keys[i], Value(None, self.resolve(table[f][1], where=here), off,
                                              lengths[i]))  # fmt: skip
        for i in range(n):
            if kinds[i] == 0:
                self._add(prefix + keys[i], Value(cur.take(lengths[i], f"inline value {i}")))
        cur.end()

    def _add(self, key: bytes, value: Value) -> None:
        if key in self.values:
            raise FormatError(f"{self.root}: key {key!r} appears twice in the B+tree")
        if len(self.values) >= _MAX_KEYS:
            raise FormatError(f"{self.root}: more than {_MAX_KEYS} keys")
        self.values[key] = value


def _keys(cur: _Cursor, n: int, *, interior: bool) -> tuple[list[bytes], list[int]]:
    """Relative keys of a node, and (interior) each child's subtree common prefix length."""
    prefix = [0, *cur.varints(n - 1, "key_prefix_length", _MAX_KEY)]
    suffix = cur.varints(n, "key_suffix_length", _MAX_KEY)
    common = cur.varints(n, "subtree_common_prefix_length", _MAX_KEY) if interior else []
    keys: list[bytes] = []
    for i in range(n):
        prev = keys[-1] if keys else b""
        if prefix[i] > len(prev) or prefix[i] + suffix[i] > _MAX_KEY:
            raise cur.fail(f"key {i}: prefix length {prefix[i]} or key length is invalid")
        key = prev[: prefix[i]] + cur.take(suffix[i], f"key {i} suffix")
        if keys and key <= prev:
            raise cur.fail(f"key {i} is not greater than the key before it")
        if interior and common[i] > len(key):
            raise cur.fail(f"key {i}: subtree common prefix {common[i]} exceeds the key")
        keys.append(key)
    return keys, common


def open_store(root: Path, *, verify: bool = True) -> Store:
    """Read the manifest and the whole B+tree of the OCDBT database in folder ``root``.

    Raises:
        FormatError: a damaged manifest or node, a path leaving the folder, a missing file.
        IntegrityError: a manifest or node fails its CRC-32C (``verify=True``).
        FrameworkNotAvailableError: the database is zstd-compressed and ``zstandard`` is missing.
    """
    store = Store(root, verify=verify)
    store.load()
    return store
