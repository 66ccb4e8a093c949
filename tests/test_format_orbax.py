"""Orbax checkpoints (docs/formats.md#orbax): the genuine fixture, built stores, hostile input.

The ground truth is ``tests/fixtures/orbax/ckpt.expected.{json,npz}``, written by
``StandardCheckpointer().restore``. Other stores come from ``write_store`` below: a tiny OCDBT
writer (uncompressed or zstd envelopes, one leaf node, inline or out-of-line values) following
tensorstore's ``kvstore/ocdbt/index.rst``, so every field can be made hostile on purpose.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import struct
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

import fixture_truth
import satchel
from fixture_truth import assert_matches, load_truth
from satchel.errors import (
    FormatError,
    FrameworkNotAvailableError,
    IntegrityError,
    SatchelError,
)
from satchel.formats._codecs.crc32c import crc32c
from satchel.formats.detect import sniffed

FIXTURES = fixture_truth.FIXTURES / "orbax"
assert FIXTURES.is_dir(), f"{FIXTURES}: the Orbax fixture is missing from tests/fixtures"
CKPT = FIXTURES / "ckpt"
MANIFEST_MAGIC, BTREE_MAGIC = 0x0CDB3A2A, 0x0CDB20DE
ROOT_NODE = "d/a2b923fbba269b0aad261688d056c21e"


# -- a minimal OCDBT writer (test-only) ---------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def envelope(magic: int, body: bytes, *, zstd: bool = False) -> bytes:
    payload = varint(0) + varint(1 if zstd else 0)
    payload += zstandard.ZstdCompressor().compress(body) if zstd else body
    head = struct.pack(">I", magic) + struct.pack("<Q", 12 + len(payload) + 4)
    return head + payload + struct.pack("<I", crc32c(head + payload))


def file_table(paths: list[str]) -> bytes:
    raw = [p.encode() for p in paths]
    out = varint(len(raw)) + b"".join(varint(0) for _ in raw[1:])
    out += b"".join(varint(len(p)) for p in raw) + b"".join(varint(0) for _ in raw)
    return out + b"".join(raw)


def manifest(path: str, length: int, *, height: int = 0, offset: int = 0) -> bytes:
    body = bytes(16) + b"\x00" + varint(1024) + varint(10**8) + b"\x04" + varint(0)
    body += file_table([path]) + varint(1) + varint(1) + bytes([height])
    body += varint(0) + varint(offset) + varint(length) + varint(0) * 3 + bytes(8) + varint(0)
    return body


def leaf(items: dict[bytes, bytes | tuple[str, int, int]]) -> bytes:
    """A leaf node: bytes values inline, (path, offset, length) values out of line."""
    keys = sorted(items)
    paths = sorted({v[0] for v in items.values() if isinstance(v, tuple)})
    body = b"\x00" + file_table(paths) + varint(len(keys))
    body += b"".join(varint(0) for _ in keys[1:]) + b"".join(varint(len(k)) for k in keys)
    body += b"".join(keys)
    vals = [items[k] for k in keys]
    body += b"".join(varint(v[2] if isinstance(v, tuple) else len(v)) for v in vals)
    body += bytes(1 if isinstance(v, tuple) else 0 for v in vals)
    body += b"".join(varint(paths.index(v[0])) for v in vals if isinstance(v, tuple))
    body += b"".join(varint(v[1]) for v in vals if isinstance(v, tuple))
    return body + b"".join(v for v in vals if isinstance(v, bytes))


def zarray(shape: list[int], dtype: str = "<f4", compressor: Any = None, **kw: Any) -> bytes:
    meta = {"chunks": kw.pop("chunks", shape), "compressor": compressor, "dtype": dtype,
            "fill_value": None, "filters": None, "order": "C", "shape": shape,
            "zarr_format": 2, "dimension_separator": "."}  # fmt: skip
    meta.update(kw)
    return json.dumps(meta).encode()


def tree_metadata(names: dict[str, str]) -> bytes:
    tree = {
        repr(tuple(name.split("."))): {
            "key_metadata": [{"key": k, "key_type": 2} for k in name.split(".")],
            "value_metadata": {"value_type": vt, "skip_deserialize": False},
        }
        for name, vt in names.items()
    }
    return json.dumps({"tree_metadata": tree, "use_ocdbt": True}).encode()


def write_store(
    folder: Path,
    items: dict[bytes, bytes | tuple[str, int, int]],
    leaves: dict[str, str] | None = None,
    *,
    zstd: bool = False,
) -> Path:
    """An Orbax-shaped folder: _METADATA, manifest.ocdbt and one leaf node in d/root."""
    (folder / "d").mkdir(parents=True, exist_ok=True)
    node = envelope(BTREE_MAGIC, leaf(items), zstd=zstd)
    (folder / "d" / "root").write_bytes(node)
    (folder / "manifest.ocdbt").write_bytes(
        envelope(MANIFEST_MAGIC, manifest("d/root", len(node)), zstd=zstd)
    )
    (folder / "_METADATA").write_bytes(tree_metadata(leaves if leaves is not None else {}))
    return folder


def array_items(name: str, a: np.ndarray, *, compress: bool = True) -> dict[bytes, bytes]:
    raw = a.tobytes()
    chunk = zstandard.ZstdCompressor().compress(raw) if compress else raw
    comp = {"id": "zstd", "level": 1} if compress else None
    return {
        f"{name}/.zarray".encode(): zarray(list(a.shape), a.dtype.str, comp),
        f"{name}/{'.'.join('0' for _ in a.shape) or '0'}".encode(): chunk,
    }


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A writable copy of the genuine fixture."""
    dst = tmp_path / "ckpt"
    shutil.copytree(CKPT, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def raises_satchel(path: Path, **kw: Any) -> SatchelError:
    with pytest.raises(SatchelError) as info:
        satchel.load(path, **kw)
    return info.value


# -- the genuine fixture ------------------------------------------------------------------------
def test_fixture_matches_ground_truth() -> None:
    truth = load_truth(CKPT)
    assert_matches(satchel.load(CKPT), truth)


def _leaves(x: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{prefix}{k}/")
    else:
        yield prefix[:-1], x


def test_every_array_is_bitwise_equal_to_the_npz() -> None:
    got = dict(_leaves(satchel.load(CKPT)))
    with np.load(FIXTURES / "ckpt.expected.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(k for k in got if k != "step")
        for key in z.files:
            a, b = got[key], z[key]
            assert isinstance(a, np.ndarray), key
            assert (a.dtype, a.shape) == (b.dtype, b.shape), key
            assert a.tobytes() == b.tobytes(), key
    assert got["step"] == 1 and type(got["step"]) is int


def _order(node: dict[str, Any]) -> Any:
    if node["kind"] != "dict":
        return None
    return [(item["key"], _order(item["value"])) for item in node["items"]]


def _actual_order(x: Any) -> Any:
    if not isinstance(x, dict):
        return None
    assert type(x) is dict
    return [(k, _actual_order(v)) for k, v in x.items()]


def test_structure_and_key_order_follow_the_expected_json() -> None:
    doc = json.loads((FIXTURES / "ckpt.expected.json").read_text())
    assert _actual_order(satchel.load(CKPT)) == _order(doc["root"])


def test_detect_says_orbax() -> None:
    assert satchel.detect(CKPT) == "orbax"


def test_detect_ignores_a_folder_without_the_ocdbt_magic(ckpt: Path) -> None:
    (ckpt / "manifest.ocdbt").write_bytes(b"not a manifest")
    assert sniffed(ckpt) != "orbax"


def test_open_keys_info_and_getitem() -> None:
    doc = json.loads((FIXTURES / "ckpt.expected.json").read_text())
    with np.load(FIXTURES / "ckpt.expected.npz", allow_pickle=False) as z:
        expected = {k: z[k] for k in z.files}
    with satchel.open(CKPT) as f:
        assert sorted(f.keys()) == sorted(k.replace("/", ".") for k in doc["tensors"])
        for key, spec in doc["tensors"].items():
            name = key.replace("/", ".")
            info = f.info(name)
            assert (info.dtype, list(info.shape)) == (spec["dtype"], spec["shape"])
            assert f[name].tobytes() == expected[key].tobytes()


def test_verify_false_reads_the_same() -> None:
    a, b = dict(_leaves(satchel.load(CKPT))), dict(_leaves(satchel.load(CKPT, verify=False)))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# -- hand-built stores --------------------------------------------------------------------------
@pytest.mark.parametrize("zstd", [False, True])
def test_written_store_round_trips(tmp_path: Path, zstd: bool) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    items = {
        **array_items("a.w", w),
        **array_items("b", np.array([1, 2], np.int64), compress=False),
    }
    write_store(tmp_path, items, {"a.w": "jax.Array", "b": "np.ndarray"}, zstd=zstd)
    out = satchel.load(tmp_path)
    assert list(out) == ["a", "b"]
    assert np.array_equal(out["a"]["w"], w) and out["b"].tolist() == [1, 2]


def test_out_of_line_values_and_missing_chunks(tmp_path: Path) -> None:
    a = np.arange(10, dtype=np.int32)
    blob = zstandard.ZstdCompressor().compress(a[:4].tobytes())
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data").write_bytes(b"xx" + blob)
    items: dict[bytes, Any] = {
        b"v/.zarray": zarray([10], "<i4", {"id": "zstd"}, chunks=[4], fill_value=7),
        b"v/0": ("d/data", 2, len(blob)),
    }  # chunks 1 and 2 are missing: fill value
    write_store(tmp_path, items, {"v": "jax.Array"})
    assert satchel.load(tmp_path)["v"].tolist() == [0, 1, 2, 3] + [7] * 6


def zarr_json(shape: list[int], dtype: str, codecs: list[Any], **kw: Any) -> bytes:
    meta = {"zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shape}},
            "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
            "codecs": codecs}  # fmt: skip
    meta.update(kw)
    return json.dumps(meta).encode()


def test_zarr3_bytes_and_zstd(tmp_path: Path) -> None:
    a = np.arange(6, dtype=">i2").reshape(2, 3)
    codecs = [{"name": "bytes", "configuration": {"endian": "big"}}, {"name": "zstd"}]
    items = {
        b"a/zarr.json": zarr_json([2, 3], "int16", codecs),
        b"a/c/0/0": zstandard.ZstdCompressor().compress(a.tobytes()),
        b"s/zarr.json": zarr_json([], "float64", [{"name": "bytes"}]),
        b"s/c": np.float64(2.5).tobytes(),
    }
    write_store(tmp_path, items, {"a": "jax.Array", "s": "scalar"})
    out = satchel.load(tmp_path)
    assert out["a"].dtype == np.int16 and out["a"].tolist() == a.tolist()
    assert out["s"] == 2.5


@pytest.mark.parametrize(
    "change",
    [
        {"codecs": [{"name": "sharding_indexed"}]},
        {"codecs": [{"name": "bytes"}, {"name": "blosc"}]},
        {"codecs": [{"name": "bytes", "configuration": []}]},
        {"chunk_key_encoding": "x"},
        {"chunk_key_encoding": {"name": "default", "configuration": 3}},
        {"chunk_grid": {"name": "rectilinear"}},
        {"data_type": "string"},
        {"node_type": "group"},
    ],
)
def test_zarr3_unsupported_parts_are_refused(tmp_path: Path, change: dict[str, Any]) -> None:
    raw = json.loads(zarr_json([2], "int16", [{"name": "bytes"}]))
    raw.update(change)
    meta = json.dumps(raw).encode()
    write_store(tmp_path, {b"a/zarr.json": meta}, {"a": "jax.Array"})
    assert isinstance(raises_satchel(tmp_path), FormatError)


def test_sequence_keys_become_lists_and_empty_values(tmp_path: Path) -> None:
    items = {**array_items("x.0", np.zeros(2, np.float32)), **array_items("x.1", np.ones(1, "<f8"))}
    meta = {
        "(x, 0)": {"key_metadata": [{"key": "x", "key_type": 2}, {"key": "0", "key_type": 1}],
                   "value_metadata": {"value_type": "jax.Array"}},
        "(x, 1)": {"key_metadata": [{"key": "x", "key_type": 2}, {"key": "1", "key_type": 1}],
                   "value_metadata": {"value_type": "np.ndarray"}},
        "(e,)": {"key_metadata": [{"key": "e", "key_type": 2}],
                 "value_metadata": {"value_type": "Dict"}},
        "__import__('os').system('false')": {"key_metadata": [{"key": "n", "key_type": 2}],
                                             "value_metadata": {"value_type": "None"}},
    }  # fmt: skip
    write_store(tmp_path, items)
    (tmp_path / "_METADATA").write_text(json.dumps({"tree_metadata": meta}))
    out = satchel.load(tmp_path)
    assert isinstance(out["x"], list) and out["x"][1].tolist() == [1.0]
    assert out["e"] == {} and out["n"] is None


def test_zstandard_missing_asks_for_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(FrameworkNotAvailableError, match=r"pip install satchel\[orbax\]"):
        satchel.load(CKPT)


# -- hostile input ------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["manifest.ocdbt", ROOT_NODE])
def test_truncated_files_raise(ckpt: Path, rel: str) -> None:
    raw = (ckpt / rel).read_bytes()
    for cut in [0, 3, 12, 15, len(raw) // 2, len(raw) - 5, len(raw) - 1]:
        (ckpt / rel).write_bytes(raw[:cut])
        raises_satchel(ckpt)
        raises_satchel(ckpt, verify=False)


@pytest.mark.parametrize("rel", ["manifest.ocdbt", ROOT_NODE])
def test_every_bit_flip_is_caught_by_the_crc(ckpt: Path, rel: str) -> None:
    raw = (ckpt / rel).read_bytes()
    for i in range(len(raw)):
        (ckpt / rel).write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :])
        raises_satchel(ckpt)


@pytest.mark.parametrize("rel", ["manifest.ocdbt", ROOT_NODE])
def test_garbled_files_without_verify_raise_only_satchel_errors(ckpt: Path, rel: str) -> None:
    raw = (ckpt / rel).read_bytes()
    rng = random.Random(1234)
    for _ in range(150):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        (ckpt / rel).write_bytes(bytes(b))
        with contextlib.suppress(SatchelError):
            satchel.load(ckpt, verify=False)


def test_garbled_decoded_node_bodies_raise_only_satchel_errors(tmp_path: Path) -> None:
    """Flip bytes *inside* the decoded body (CRC recomputed), so the decoder itself is probed."""
    items = {**array_items("a", np.arange(6, dtype=np.float32)), b"z/key": b"v" * 10}
    body = leaf(items)
    rng = random.Random(99)
    for _ in range(300):
        b = bytearray(body)
        b[rng.randrange(len(b))] = rng.randrange(256)
        write_store(tmp_path, items, {"a": "jax.Array"})
        node = envelope(BTREE_MAGIC, bytes(b))
        (tmp_path / "d" / "root").write_bytes(node)
        (tmp_path / "manifest.ocdbt").write_bytes(
            envelope(MANIFEST_MAGIC, manifest("d/root", len(node)))
        )
        with contextlib.suppress(SatchelError):
            satchel.load(tmp_path)


def test_crc_mismatch_is_an_integrity_error(ckpt: Path) -> None:
    raw = bytearray((ckpt / ROOT_NODE).read_bytes())
    raw[-1] ^= 1
    (ckpt / ROOT_NODE).write_bytes(bytes(raw))
    assert isinstance(raises_satchel(ckpt), IntegrityError)


@pytest.mark.parametrize(
    "path", ["../outside", "d/../../outside", "/etc/passwd", "d//x", "d\\..\\x", "./d/root"]
)
def test_data_file_paths_may_not_escape(tmp_path: Path, path: str) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    root = tmp_path / "ck"
    write_store(root, {})
    (root / "manifest.ocdbt").write_bytes(envelope(MANIFEST_MAGIC, manifest(path, 10)))
    err = raises_satchel(root)
    assert isinstance(err, FormatError) and "path" in str(err)


def test_out_of_line_value_escaping_the_folder(tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    root = tmp_path / "ck"
    write_store(root, {b"k": ("../outside", 0, 6)})
    assert "plain relative path" in str(raises_satchel(root))


def test_symlink_out_of_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    write_store(root, {b"a/.zarray": zarray([1]), b"a/0": ("d/link", 0, 4)}, {"a": "jax.Array"})
    (tmp_path / "outside").write_bytes(b"\0" * 4)
    (root / "d" / "link").symlink_to(tmp_path / "outside")
    assert "outside" in str(raises_satchel(root))


def test_missing_data_file(tmp_path: Path) -> None:
    write_store(tmp_path, {b"a/.zarray": zarray([1]), b"a/0": ("d/gone", 0, 4)}, {"a": "jax.Array"})
    raises_satchel(tmp_path)


def test_value_outside_its_data_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data").write_bytes(b"1234")
    items: dict[bytes, Any] = {b"a/.zarray": zarray([1]), b"a/0": ("d/data", 2, 4)}
    write_store(tmp_path, items, {"a": "jax.Array"})
    assert "outside" in str(raises_satchel(tmp_path))


@pytest.mark.parametrize(
    "body",
    [
        bytes(16) + b"\x00" + b"\xff" * 11,  # an 11-byte varint
        bytes(16) + b"\x00" + b"\xff" * 9 + b"\x7f",  # a 70-bit value in a 64-bit field
        bytes(16) + b"\x00" + varint(1) + varint(1) + b"\x04\x00" + varint(2**63),  # num_files
        bytes(16) + b"\x00" + varint(1) + varint(1) + b"\x04\x00" + varint(1) + varint(2**40),
        manifest("d/root", 2**64 - 1),  # node length
        manifest("d/root", 100, offset=2**63),  # node offset
        bytes(16) + b"\x07",  # unknown manifest kind
        manifest("d/root", 100) + b"junk",  # trailing bytes
    ],
)
def test_huge_and_bad_manifest_numbers(tmp_path: Path, body: bytes) -> None:
    write_store(tmp_path, {})
    (tmp_path / "manifest.ocdbt").write_bytes(envelope(MANIFEST_MAGIC, body))
    tracemalloc.start()
    try:
        raises_satchel(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_huge_lengths_inside_a_node(tmp_path: Path) -> None:
    write_store(tmp_path, {})
    for tail in [varint(2**40), varint(1) + varint(2**32), varint(2) + varint(0) + varint(2**20)]:
        node = envelope(BTREE_MAGIC, b"\x00" + varint(0) + tail)
        (tmp_path / "d" / "root").write_bytes(node)
        (tmp_path / "manifest.ocdbt").write_bytes(
            envelope(MANIFEST_MAGIC, manifest("d/root", len(node)))
        )
        raises_satchel(tmp_path)


def test_header_length_field_must_match(ckpt: Path) -> None:
    raw = bytearray((ckpt / "manifest.ocdbt").read_bytes())
    raw[4:12] = struct.pack("<Q", 2**63)
    (ckpt / "manifest.ocdbt").write_bytes(bytes(raw))
    assert "length" in str(raises_satchel(ckpt, verify=False))


def _bomb_frame(claimed: int) -> bytes:
    """A valid small frame whose header claims ``claimed`` bytes of content."""
    frame = bytearray(zstandard.ZstdCompressor().compress(b"\0" * 64))
    # Frame header descriptor: single segment + 8-byte content size field.
    return bytes(frame[:4]) + b"\xe0" + struct.pack("<Q", claimed) + bytes(frame[6:])


@pytest.mark.parametrize("claimed", [2**30, 2**40, 2**63])
def test_zstd_chunk_claiming_huge_output(tmp_path: Path, claimed: int) -> None:
    items = {b"a/.zarray": zarray([2**28], compressor={"id": "zstd"}), b"a/0": _bomb_frame(claimed)}
    write_store(tmp_path, items, {"a": "jax.Array"})
    tracemalloc.start()
    try:
        raises_satchel(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_zstd_chunk_producing_more_than_its_size(tmp_path: Path) -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (50 << 20))
    items = {b"a/.zarray": zarray([16], compressor={"id": "zstd"}), b"a/0": bomb}
    write_store(tmp_path, items, {"a": "jax.Array"})
    tracemalloc.start()
    try:
        raises_satchel(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_zstd_node_claiming_huge_output(tmp_path: Path) -> None:
    write_store(tmp_path, {})
    payload = varint(0) + varint(1) + _bomb_frame(2**50)
    head = struct.pack(">I", BTREE_MAGIC) + struct.pack("<Q", 12 + len(payload) + 4)
    node = head + payload + struct.pack("<I", crc32c(head + payload))
    (tmp_path / "d" / "root").write_bytes(node)
    (tmp_path / "manifest.ocdbt").write_bytes(
        envelope(MANIFEST_MAGIC, manifest("d/root", len(node)))
    )
    assert "zstd" in str(raises_satchel(tmp_path))


def test_array_larger_than_its_stored_bytes_can_hold(tmp_path: Path) -> None:
    # 1 GiB of float32 claimed from a 13-byte uncompressed chunk: refused before allocation.
    items = {b"a/.zarray": zarray([2**28]), b"a/0": b"\0" * 13}
    write_store(tmp_path, items, {"a": "jax.Array"})
    tracemalloc.start()
    try:
        raises_satchel(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "meta",
    [
        {"shape": [2**62], "chunks": [1]},  # too many chunks / bytes
        {"shape": [2**30], "chunks": [2**30]},  # 4 GiB of missing chunk fill
        {"dtype": "|O"},
        {"dtype": "<U4"},
        {"compressor": {"id": "blosc"}},
        {"filters": [{"id": "delta"}]},
        {"order": "X"},
        {"shape": [-1]},
        {"shape": [True]},
        {"chunks": [0]},
        {"zarr_format": 4},
        {"fill_value": "NaN", "dtype": "<i4"},
        {"dimension_separator": ".."},
    ],
)
def test_bad_zarr_metadata(tmp_path: Path, meta: dict[str, Any]) -> None:
    raw = json.loads(zarray([4]))
    raw.update(meta)
    write_store(tmp_path, {b"a/.zarray": json.dumps(raw).encode()}, {"a": "jax.Array"})
    assert isinstance(raises_satchel(tmp_path), FormatError)


def test_wrong_chunk_size(tmp_path: Path) -> None:
    write_store(tmp_path, {b"a/.zarray": zarray([4]), b"a/0": b"\0" * 15}, {"a": "jax.Array"})
    assert "expected 16" in str(raises_satchel(tmp_path))


@pytest.mark.parametrize(
    "text",
    [
        '{"tree_metadata": {}, "tree_metadata": {}}',  # duplicate key
        "[" * 100_000 + "]" * 100_000,  # deep nesting
        '{"tree_metadata": ' + '{"a":' * 50_000 + "1" + "}" * 50_001,
        "{not json",
        '{"tree_metadata": []}',
        '{"tree_metadata": {"x": {"key_metadata": "abc"}}}',
        '{"tree_metadata": {"x": {"key_metadata": [{"key": "a", "key_type": 3}]}}}',
        '{"tree_metadata": {"x": {"key_metadata": [{"key": 1, "key_type": 2}]}}}',
        '{"tree_metadata": {"x": {"key_metadata": [{"key": "-1", "key_type": 1}]}}}',
        '{"tree_metadata": {"x": {"key_metadata": [{"key": "a", "key_type": 2}], '
        '"value_metadata": {"value_type": "pickle"}}}}',
        '{"tree_metadata": {"x": {"key_metadata": [{"key": "a", "key_type": 2}], '
        '"value_metadata": {"value_type": "jax.Array"}}}}',  # no such array in the store
        '{"tree_metadata": {"x": {"key_metadata": [{"key": "a", "key_type": 2}], '
        '"value_metadata": {"value_type": "None"}}, "y": {"key_metadata": [{"key": "a", '
        '"key_type": 2}], "value_metadata": {"value_type": "None"}}}}',  # two leaves, one path
        "\xff",
    ],
)
def test_malformed_metadata(ckpt: Path, text: str) -> None:
    (ckpt / "_METADATA").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert isinstance(raises_satchel(ckpt), FormatError)


def test_missing_metadata_is_named(ckpt: Path) -> None:
    (ckpt / "_METADATA").unlink()
    assert "_METADATA" in str(raises_satchel(ckpt))
