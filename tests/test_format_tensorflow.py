"""TensorFlow bundles (docs/formats.md#tensorflow): genuine fixtures, hand-built bundles, hostiles.

The ground truth is ``tests/fixtures/tensorflow/<fixture>.expected.{json,npz}``, written by
``tf.train.load_checkpoint``. Bundles for the other cases come from ``write_bundle`` below, a
small writer of the same layout that reproduces the genuine ``tf1_ckpt`` index and data files
byte for byte (``test_writer_reproduces_the_genuine_bundle``), so what it builds is what TF writes.
"""

from __future__ import annotations

import base64
import json
import math
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fixture_truth
import satchel
from satchel.errors import (
    FormatError,
    IntegrityError,
    SatchelError,
    SatchelFileNotFoundError,
)
from satchel.formats import tensorflow as tf_reader
from satchel.formats._codecs.crc32c import _raw_loop, crc32c, mask, unmask
from satchel.formats._codecs.sstable import (
    _ordered_bytes,
    _ordered_int,
    _ordered_uint,
    read_table,
    slice_key,
)

FIXTURES = fixture_truth.FIXTURES / "tensorflow"
assert FIXTURES.is_dir(), f"{FIXTURES}: the TensorFlow fixtures are missing from tests/fixtures"
MAGIC = 0xDB4775248B80FB57
ZEROS16_CRC = mask(crc32c(b"\0" * 16))


# -- a minimal bundle writer (test-only): BundleWriter + TableBuilder ---------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num: int, wt: int, payload: bytes | int) -> bytes:
    key = varint(num << 3 | wt)
    if wt == 0:
        assert isinstance(payload, int)
        return key + varint(payload if payload >= 0 else payload + (1 << 64))
    if wt == 5:
        assert isinstance(payload, int)
        return key + struct.pack("<I", payload)
    assert isinstance(payload, bytes)
    return key + varint(len(payload)) + payload


def entry_proto(
    dtype: int,
    shape: tuple[int, ...],
    *,
    shard: int = 0,
    offset: int = 0,
    size: int = 0,
    crc: int = 0,
    slices: tuple[tuple[tuple[int, int], ...], ...] = (),
) -> bytes:
    dims = b"".join(field(2, 2, field(1, 0, d) if d else b"") for d in shape)
    out = field(1, 0, dtype) + field(2, 2, dims)
    for num, value in ((3, shard), (4, offset), (5, size)):
        if value:
            out += field(num, 0, value)
    out += field(6, 5, crc)
    for ext in slices:
        body = b""
        for start, length in ext:
            e = field(1, 0, start) if start else b""
            if length != -1:
                e += field(2, 0, length)
            body += field(1, 2, e)
        out += field(7, 2, body)
    return out


def header_proto(num_shards: int = 1, endianness: int = 0) -> bytes:
    out = field(1, 0, num_shards)
    if endianness:
        out += field(2, 0, endianness)
    return out + field(3, 2, field(1, 0, 1))


def block(entries: list[tuple[bytes, bytes]], interval: int) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value))
        out += key[shared:] + value
        prev = key
    restarts = restarts or [0]
    return (
        bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    )


def sealed(contents: bytes, kind: int = 0) -> bytes:
    return contents + bytes([kind]) + struct.pack("<I", mask(crc32c(contents + bytes([kind]))))


def short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def table(
    entries: list[tuple[bytes, bytes]], *, kind: int = 0, per_block: int | None = None
) -> bytes:
    """TableBuilder's layout; ``per_block`` splits the entries over several data blocks."""
    per_block = per_block or len(entries)
    out, index = b"", []
    for i in range(0, len(entries), per_block):
        rows = entries[i : i + per_block]
        data = block(rows, 16)
        last = i + per_block >= len(entries)
        sep = short_successor(rows[-1][0]) if last else rows[-1][0]  # a valid separator
        index.append((sep, varint(len(out)) + varint(len(data))))
        out += sealed(data, kind)
    meta_at = len(out)
    out += sealed(block([], 1))
    index_at = len(out)
    out += sealed(block(index, 1))
    handles = varint(meta_at) + varint(8) + varint(index_at) + varint(len(out) - index_at - 5)
    return out + handles.ljust(40, b"\0") + struct.pack("<Q", MAGIC)


def string_payload(items: list[bytes]) -> tuple[bytes, int]:
    lengths = b"".join(varint(len(s)) for s in items)
    packed = b"".join(struct.pack("<I", len(s)) for s in items)
    length_crc = struct.pack("<I", mask(crc32c(packed)))
    body = b"".join(items)
    crc = crc32c(body, crc32c(length_crc, crc32c(packed)))
    return lengths + length_crc + body, mask(crc)


TF_CODES = {
    "float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6, "complex64": 8,
    "int64": 9, "bool": 10, "bfloat16": 14, "uint16": 17, "complex128": 18, "float16": 19,
    "uint32": 22, "uint64": 23, "float8_e5m2": 24, "float8_e4m3fn": 25,
}  # fmt: skip


def write_bundle(
    prefix: Path,
    tensors: list[tuple[str, Any]],
    *,
    num_shards: int = 1,
    shard_of: Callable[[str], int] = lambda name: 0,
    big_endian: bool = False,
    extra: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
    """Write tensors (arrays, or lists of bytes for strings) in insertion order, like TF."""
    shards = [bytearray() for _ in range(num_shards)]
    rows: list[tuple[bytes, bytes]] = []
    for name, value in tensors:
        s = shard_of(name)
        if isinstance(value, (list, bytes)):
            flat = [value] if isinstance(value, bytes) else list(np.ravel(np.array(value, "O")))
            shape = () if isinstance(value, bytes) else np.array(value, "O").shape
            payload, crc = string_payload(flat)
            code = 7
        else:
            arr = np.array(value, order="C")  # (ascontiguousarray would make 0-d 1-d)
            shape, code = arr.shape, TF_CODES[str(arr.dtype)]
            payload = (
                arr.astype(arr.dtype.newbyteorder(">")).tobytes() if big_endian else arr.tobytes()
            )
            crc = mask(crc32c(payload))
        proto = entry_proto(code, shape, shard=s, offset=len(shards[s]), size=len(payload), crc=crc)
        rows.append((name.encode(), proto))
        shards[s] += payload
    rows += list(extra)
    rows.sort()
    prefix.with_name(prefix.name + ".index").write_bytes(
        table([(b"", header_proto(num_shards, int(big_endian))), *rows])
    )
    for i, data in enumerate(shards):
        Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}").write_bytes(bytes(data))


# -- helpers ------------------------------------------------------------------------------------
def expected(fixture: str) -> tuple[dict[str, Any], Any]:
    doc = json.loads((FIXTURES / f"{fixture}.expected.json").read_text())
    return doc, np.load(FIXTURES / f"{fixture}.expected.npz", allow_pickle=False)


def b64_tree(v: Any) -> Any:
    return base64.b64encode(v).decode() if isinstance(v, bytes) else [b64_tree(x) for x in v]


def only_satchel_errors(fn: Callable[[], Any]) -> str:
    """Run ``fn``: success or a SatchelError are fine; anything else fails the test."""
    try:
        fn()
    except SatchelError as e:
        return type(e).__name__
    except Exception as e:  # pragma: no cover - the failure being tested for
        pytest.fail(f"non-satchel error escaped: {type(e).__name__}: {e}")
    return "ok"


def copy_fixture(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


# -- genuine fixtures ---------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tf1_ckpt", "tf2_ckpt"])
@pytest.mark.parametrize("form", ["folder", "prefix", "index", "state"])
def test_fixture_matches_tf_load_checkpoint(fixture: str, form: str) -> None:
    doc, npz = expected(fixture)
    folder = FIXTURES / fixture
    path = {
        "folder": folder,
        "prefix": folder / doc["prefix"],
        "index": folder / f"{doc['prefix']}.index",
        "state": folder / "checkpoint",
    }[form]
    assert satchel.detect(path) == "tensorflow"
    got = satchel.load(path)
    items = doc["root"]["items"]
    assert list(got) == [it["key"] for it in items]  # names and TF's (sorted) order
    for it in items:
        node, value = it["value"], got[it["key"]]
        if node["dtype"] == "string":
            assert b64_tree(value) == node["values_b64"], it["key"]
            continue
        want = npz[node["npz"]]
        assert isinstance(value, np.ndarray), it["key"]
        assert str(value.dtype) == node["dtype"] and list(value.shape) == node["shape"]
        assert value.tobytes() == want.tobytes(), it["key"]  # bitwise


@pytest.mark.parametrize("fixture", ["tf1_ckpt", "tf2_ckpt"])
def test_shared_ground_truth_checker_agrees(fixture: str) -> None:
    import fixture_truth as ft

    truth = ft.load_truth(FIXTURES / fixture)
    ft.assert_matches(satchel.load(FIXTURES / fixture), truth)


def test_open_lists_arrays_and_reads_one() -> None:
    with satchel.open(FIXTURES / "tf1_ckpt") as ck:
        assert ck.keys() == ["dense/bias", "dense/kernel", "half"]  # strings are not arrays
        assert ck.info("dense/kernel").shape == (20, 4)
        assert ck["half"].tolist() == [1.0, 2.0, 3.0]


def test_torch_framework() -> None:
    import torch

    got = satchel.load(FIXTURES / "tf2_ckpt", framework="torch")
    t = got["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (20, 256)


def test_resave_with_satchel_roundtrips(tmp_path: Path) -> None:
    got = satchel.load(FIXTURES / "tf1_ckpt")
    satchel.save(got, tmp_path / "x.satchel")
    back = satchel.load(tmp_path / "x.satchel")
    assert back["names"] == [b"hello", b"", b"world!"]
    assert back["dense/kernel"].tobytes() == got["dense/kernel"].tobytes()


def test_object_paths_follow_the_object_graph() -> None:
    doc, _ = expected("tf2_ckpt")
    paths = tf_reader.object_paths(FIXTURES / "tf2_ckpt")
    keys = {k for k in doc["tensors"] if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")}
    assert set(paths) == keys
    for key, found in paths.items():
        assert found[0] == "/".join(tf_reader.split_key(key)[:-2])  # TF built the key from it
    kernel = paths["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
    assert "model/_functional/_operations/1/_kernel" in kernel
    assert paths["optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE"][1] == "optimizer/_momentums/0"
    assert tf_reader.object_paths(FIXTURES / "tf1_ckpt") == {}


def test_split_key_unescapes_local_names() -> None:
    assert tf_reader.split_key("a..b/c.Sd/.ATTRIBUTES/VARIABLE_VALUE") == [
        "a.b", "c/d", ".ATTRIBUTES", "VARIABLE_VALUE",
    ]  # fmt: skip


def test_writer_reproduces_the_genuine_bundle(tmp_path: Path) -> None:
    npz = expected("tf1_ckpt")[1]
    tensors = [(k, npz[k]) for k in ("dense/bias", "dense/kernel", "half")]
    write_bundle(tmp_path / "model-7", [*tensors, ("names", [b"hello", b"", b"world!"])])
    for suffix in (".index", ".data-00000-of-00001"):
        got = (tmp_path / f"model-7{suffix}").read_bytes()
        assert got == (FIXTURES / "tf1_ckpt" / f"model-7{suffix}").read_bytes(), suffix


# -- checksums and key encodings ----------------------------------------------------------------
def test_crc32c_known_values_and_lanes_agree() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0 and unmask(mask(0xDEADBEEF)) == 0xDEADBEEF
    rng = np.random.default_rng(1)
    for n in (1, 2047, 2048, 5000, 70001, (1 << 24) + 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        cut = n // 3
        assert crc32c(data) == crc32c(data[cut:], crc32c(data[:cut])), n
        if n < 100_000:
            assert crc32c(data) == _raw_loop(data.tobytes(), 0xFFFFFFFF) ^ 0xFFFFFFFF, n


def test_ordered_code_matches_tensorflows_test_vectors() -> None:
    # tensorflow/core/lib/strings/ordered_code_test.cc, EncodingIsExpected.*
    signed = {
        0: b"\x80", 63: b"\xbf", 64: b"\xc0@", 8192: b"\xe0 \x00", 1048576: b"\xf0\x10\x00\x00",
        -1: b"\x7f", -64: b"@", -65: b"?\xbf", -8193: b"\x1f\xdf\xff",
        -281474976710657: b"\x00\xfe" + b"\xff" * 6,
        4611686018427387904: b"\xff\xc0@" + b"\x00" * 7,
        -9223372036854775807: b"\x00?\x80" + b"\x00" * 6 + b"\x01",
    }  # fmt: skip
    for value, want in signed.items():
        assert _ordered_int(value) == want, value
    assert [_ordered_uint(v) for v in (0, 1, 0x100)] == [b"\x00", b"\x01\x01", b"\x02\x01\x00"]
    assert _ordered_bytes(b"\x00\x01\xff") == b"\x00\xff\x01\xff\x00\x00\x01"


# -- bundles built here ---------------------------------------------------------------------------
def random_array(dtype: Any, shape: tuple[int, ...], seed: int) -> np.ndarray:
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dt == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    raw = rng.integers(0, 256, math.prod(shape) * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


@pytest.mark.parametrize("big_endian", [False, True])
def test_every_numeric_dtype_roundtrips_bitwise(tmp_path: Path, big_endian: bool) -> None:
    tensors = []
    for i, name in enumerate(TF_CODES):
        dt = getattr(ml_dtypes, name, None) or np.dtype(name)
        for j, shape in enumerate([(), (0,), (3,), (2, 3, 1)]):
            tensors.append((f"{name}/{j}", random_array(dt, shape, seed=i * 10 + j)))
    write_bundle(tmp_path / "ck", tensors, big_endian=big_endian)
    got = satchel.load(tmp_path / "ck")
    for name, want in tensors:
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert got[name].tobytes() == want.tobytes(), name


def test_unaligned_offsets_are_read(tmp_path: Path) -> None:
    odd = [("a", np.arange(3, dtype=np.uint8)), ("b", np.arange(5, dtype=np.float64))]
    write_bundle(tmp_path / "ck", odd)  # "b" starts at byte 3
    assert satchel.load(tmp_path / "ck")["b"].tolist() == [0, 1, 2, 3, 4]
    import torch

    assert satchel.load(tmp_path / "ck", framework="torch")["b"].tolist() == [0, 1, 2, 3, 4]
    assert torch is not None


def test_string_tensors_nest_by_shape(tmp_path: Path) -> None:
    grid = [[b"a", b"\x00\xff"], [b"x" * 300, b""], [b"", b"z"]]  # 300: a two-byte varint
    write_bundle(tmp_path / "ck", [("grid", grid), ("one", b"scalar"), ("none", [])])
    got = satchel.load(tmp_path / "ck")
    assert got == {"grid": grid, "none": [], "one": b"scalar"}


def test_index_with_many_data_blocks(tmp_path: Path) -> None:
    arrays = {f"layer{i:03d}/w": np.full(3, i, np.int16) for i in range(100)}
    write_bundle(tmp_path / "ck", list(arrays.items()))
    index = tmp_path / "ck.index"
    entries = [(k, bytes(v)) for k, v in read_table(np.fromfile(index, np.uint8), where="x")]
    index.write_bytes(table(entries, per_block=7))  # 15 data blocks, prefix-shared keys
    got = satchel.load(tmp_path / "ck")
    assert list(got) == sorted(arrays) and all(
        got[k].tolist() == v.tolist() for k, v in arrays.items()
    )


def test_sharded_bundle(tmp_path: Path) -> None:
    tensors = [(f"v{i}", np.full((2, 2), i, np.int32)) for i in range(5)]
    write_bundle(tmp_path / "ck", tensors, num_shards=3, shard_of=lambda n: int(n[1:]) % 3)
    got = satchel.load(tmp_path / "ck")
    assert [int(got[f"v{i}"][0, 0]) for i in range(5)] == list(range(5))


def partitioned(tmp_path: Path, full: np.ndarray, cuts: list[tuple[tuple[int, int], ...]]) -> Path:
    """A partitioned variable 'w' stored as slices (what a PartitionedVariable save writes)."""
    shards = bytearray()
    rows = []
    for ext in cuts:
        box = tuple(
            slice(0, d) if ln == -1 else slice(s, s + ln)
            for (s, ln), d in zip(ext, full.shape, strict=False)
        )
        part = np.ascontiguousarray(full[box])
        rows.append(
            (
                slice_key(b"w", ext),
                entry_proto(
                    TF_CODES[str(full.dtype)], part.shape, offset=len(shards),
                    size=part.nbytes, crc=mask(crc32c(part.tobytes())),
                ),
            )
        )  # fmt: skip
        shards += part.tobytes()
    rows.append((b"w", entry_proto(TF_CODES[str(full.dtype)], full.shape, slices=tuple(cuts))))
    rows.sort()
    (tmp_path / "ck.index").write_bytes(table([(b"", header_proto()), *rows]))
    (tmp_path / "ck.data-00000-of-00001").write_bytes(bytes(shards))
    return tmp_path / "ck"


def test_partitioned_variable_is_merged(tmp_path: Path) -> None:
    full = np.arange(7 * 4, dtype=np.float32).reshape(7, 4)
    path = partitioned(tmp_path, full, [((0, 3), (0, -1)), ((3, 4), (0, -1))])
    got = satchel.load(path)
    assert list(got) == ["w"]  # the slice entries are hidden, as in TF's variable map
    assert got["w"].tobytes() == full.tobytes()


@pytest.mark.parametrize(
    "cuts",
    [
        [((0, 3), (0, -1))],  # a gap
        [((0, 4), (0, -1)), ((3, 4), (0, -1))],  # an overlap (and too many elements)
        [((0, 3), (0, -1)), ((3, 5), (0, -1))],  # past the end
        [((0, 7),)],  # wrong rank
    ],
)
def test_partitioned_variable_must_tile(tmp_path: Path, cuts: Any) -> None:
    full = np.arange(7 * 4, dtype=np.float32).reshape(7, 4)
    with pytest.raises(FormatError):
        satchel.load(partitioned(tmp_path, full, cuts))


def test_partitioned_variable_cannot_size_memory_from_the_index(tmp_path: Path) -> None:
    # A 2**40-element variable whose single slice entry claims the whole tensor in 16 bytes.
    ext = ((0, 1 << 20), (0, 1 << 20))
    rows = [
        (b"w", entry_proto(1, (1 << 20, 1 << 20), slices=(ext,))),
        (slice_key(b"w", ext), entry_proto(1, (1 << 20, 1 << 20), size=16, crc=ZEROS16_CRC)),
    ]
    (tmp_path / "ck.index").write_bytes(table([(b"", header_proto()), *sorted(rows)]))
    (tmp_path / "ck.data-00000-of-00001").write_bytes(b"\0" * 16)
    with pytest.raises(FormatError, match="needs"):
        satchel.load(tmp_path / "ck")


def test_partitioned_overlap_with_right_total_is_refused(tmp_path: Path) -> None:
    full = np.arange(8, dtype=np.int64).reshape(4, 2)
    path = partitioned(tmp_path, full, [((0, 2), (0, -1)), ((1, 2), (0, -1))])
    # 4 + 4 elements cover 8 = 4*2, but rows 1 overlaps and row 3 is missing
    with pytest.raises(FormatError, match="overlap"):
        satchel.load(path)


# -- hostile input: integrity (docs/formats.md#hostile-integrity) --------------------------------
def test_flipped_tensor_byte_names_the_tensor(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "tf1_ckpt")
    data = folder / "model-7.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01  # inside dense/kernel (bytes 16..336)
    data.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="dense/kernel"):
        satchel.load(folder)
    assert satchel.load(folder, verify=False)["dense/kernel"].size == 80


def test_every_single_bit_flip_in_the_data_is_caught(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "tf1_ckpt")
    data = folder / "model-7.data-00000-of-00001"
    clean = data.read_bytes()
    for pos in range(len(clean)):
        raw = bytearray(clean)
        raw[pos] ^= 1 << (pos % 8)
        data.write_bytes(bytes(raw))
        with pytest.raises(FormatError):  # IntegrityError, or string lengths that no longer fit
            satchel.load(folder)


def test_flipped_index_byte_fails_the_block_crc(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "tf1_ckpt")
    index = folder / "model-7.index"
    raw = bytearray(index.read_bytes())
    raw[20] ^= 0x40  # inside the data block
    index.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="data block 0"):
        satchel.load(folder)


@pytest.mark.parametrize("name", ["model-7.index", "model-7.data-00000-of-00001"])
def test_every_truncation_is_refused(tmp_path: Path, name: str) -> None:
    folder = copy_fixture(tmp_path, "tf1_ckpt")
    target = folder / name
    clean = target.read_bytes()
    for n in range(len(clean)):
        target.write_bytes(clean[:n])
        with pytest.raises(SatchelError):
            satchel.load(folder / "model-7")


def test_random_bit_flips_raise_only_satchel_errors(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "tf2_ckpt")
    rng = random.Random(7)
    files = [folder / "ckpt-1.index", folder / "ckpt-1.data-00000-of-00001"]
    cleans = [f.read_bytes() for f in files]
    for _ in range(150):
        i = rng.randrange(2)
        raw = bytearray(cleans[i])
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        files[i].write_bytes(bytes(raw))
        assert only_satchel_errors(lambda: satchel.load(folder)) != "ok"
        files[i].write_bytes(cleans[i])


def test_missing_shard(tmp_path: Path) -> None:
    write_bundle(tmp_path / "ck", [("a", np.zeros(3))], num_shards=2)
    Path(f"{tmp_path / 'ck'}.data-00000-of-00002").unlink()
    with pytest.raises(SatchelFileNotFoundError):
        satchel.load(tmp_path / "ck")


# -- hostile input: numbers in the index (docs/formats.md#hostile-numbers) -----------------------
def hostile(tmp_path: Path, value: bytes, *, key: bytes = b"t", data: bytes = b"\0" * 16) -> Path:
    (tmp_path / "ck.index").write_bytes(table([(b"", header_proto()), (key, value)]))
    (tmp_path / "ck.data-00000-of-00001").write_bytes(data)
    return tmp_path / "ck"


HOSTILE_ENTRIES = {
    "size past the shard": entry_proto(1, (4,), size=17),
    "offset past the shard": entry_proto(1, (1,), offset=16, size=4),
    "offset near 2**63": entry_proto(1, (1,), offset=(1 << 63) - 2, size=4),
    "negative size": entry_proto(1, (1,), size=-4),
    "size disagrees with shape": entry_proto(1, (3,), size=16),
    "huge shape": entry_proto(1, (1 << 40, 1 << 40), size=16),
    "negative dimension": entry_proto(1, (-1,), size=4),
    "unknown rank": field(1, 0, 1) + field(2, 2, field(3, 0, 1)),
    "variant dtype": entry_proto(21, (1,), size=4),
    "unknown dtype": entry_proto(999, (1,), size=4),
    "shard out of range": entry_proto(1, (1,), shard=5, size=4),
    "string count beyond bytes": entry_proto(7, (1 << 40,), size=16),
    "string lengths overrun": entry_proto(7, (2,), size=16),
    "empty strings in a huge shape": entry_proto(7, (1 << 40, 0), size=4),
    "eleven-byte varint": field(1, 0, 1) + b"\x28" + b"\xff" * 10 + b"\x01",
    "varint past the end": field(1, 0, 1) + b"\x28\xff\xff",
    "length past the end": field(1, 0, 1) + b"\x12\x7f\x12",
    "group wire type": field(1, 0, 1) + b"\x13",
    "field number zero": b"\x00\x01",
    "dims as fixed64": field(1, 0, 1) + field(2, 2, b"\x11" + b"\0" * 8) + b"\x29" + b"\0" * 8,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ENTRIES))
def test_hostile_entry_is_refused(tmp_path: Path, case: str) -> None:
    with pytest.raises(FormatError):
        satchel.load(hostile(tmp_path, HOSTILE_ENTRIES[case]))


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (header_proto(num_shards=0), "0 data shards"),
        (header_proto(num_shards=1 << 20), "data shards"),
        (header_proto(endianness=7), "endianness"),
        (field(1, 0, 1) + field(3, 2, field(2, 0, 9)), "bundle version"),
    ],
)
def test_hostile_header_is_refused(tmp_path: Path, header: bytes, match: str) -> None:
    (tmp_path / "ck.index").write_bytes(table([(b"", header)]))
    with pytest.raises(FormatError, match=match):
        satchel.load(tmp_path / "ck")


def test_table_structure_is_checked(tmp_path: Path) -> None:
    good = entry_proto(1, (1,), size=4, crc=mask(crc32c(b"\0" * 4)))
    path = hostile(tmp_path, good)
    assert satchel.load(path)["t"].tolist() == [0.0]
    index = tmp_path / "ck.index"
    cases = {
        "snappy": table([(b"", header_proto()), (b"t", good)], kind=1),
        "no magic": table([(b"", header_proto())])[:-1] + b"\0",
        "header not first": table([(b"a", header_proto())]),
        "too short": b"\0" * 47,
    }
    for what, raw in cases.items():
        index.write_bytes(raw)
        with pytest.raises(FormatError) as err:
            tf_reader.read(path)  # (satchel.load no longer recognises some of these as TF)
        assert what != "snappy" or "snappy" in str(err.value)
    # Keys out of order or repeated (a hand-made index; the block CRC is recomputed).
    for rows in (
        [(b"", header_proto()), (b"t", good), (b"a", good)],
        [(b"", header_proto()), (b"t", good), (b"t", good)],
    ):
        data = block(rows, 1)  # restart at each entry so nothing is prefix-shared
        index.write_bytes(rebuilt_table(data))
        with pytest.raises(FormatError, match="strictly increasing"):
            satchel.load(path)
    # A restart count larger than the block.
    data = block([(b"", header_proto())], 1)
    index.write_bytes(rebuilt_table(data[:-4] + struct.pack("<I", 1 << 30)))
    with pytest.raises(FormatError, match="restart"):
        satchel.load(path)


def rebuilt_table(data_block: bytes) -> bytes:
    out = sealed(data_block)
    meta_at = len(out)
    out += sealed(block([], 1))
    index_at = len(out)
    out += sealed(block([(b"\xff", varint(0) + varint(len(data_block)))], 1))
    handles = varint(meta_at) + varint(8) + varint(index_at) + varint(len(out) - index_at - 5)
    return out + handles.ljust(40, b"\0") + struct.pack("<Q", MAGIC)


def test_fuzzed_entries_raise_only_satchel_errors(tmp_path: Path) -> None:
    rng = random.Random(3)
    base = entry_proto(1, (2, 2), size=16, crc=mask(crc32c(b"\0" * 16)))
    seen = set()
    for _ in range(400):
        value = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(value))
            if op == 0:
                value[pos] = rng.randrange(256)
            elif op == 1:
                del value[pos]
            else:
                value.insert(pos, rng.choice([0x80, 0xFF, 0x7F, 0x00, 0x12, 0x08]))
        seen.add(only_satchel_errors(lambda v=bytes(value): satchel.load(hostile(tmp_path, v))))
    assert "FormatError" in seen


# -- the checkpoint state file never leads outside its folder (docs/formats.md rule Z7) ----------
@pytest.mark.parametrize(
    "named", ["../../etc/passwd", "/etc/passwd", "..", "/", "C:\\\\x\\\\..", "sub/../../x"]
)
def test_state_file_cannot_escape(tmp_path: Path, named: str) -> None:
    folder = copy_fixture(tmp_path, "tf1_ckpt")
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\n')
    with pytest.raises(FormatError):
        satchel.load(folder)


@pytest.mark.parametrize(
    "named", ["/somewhere/else/model-7", "C:\\\\train\\\\model-7", "./model-7"]
)
def test_state_file_is_resolved_by_basename(tmp_path: Path, named: str) -> None:
    folder = copy_fixture(tmp_path, "tf1_ckpt")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    write_bundle(elsewhere / "model-7", [("decoy", np.zeros(1))])
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\n')
    assert "dense/kernel" in satchel.load(folder)


def test_folder_without_state_file(tmp_path: Path) -> None:
    write_bundle(tmp_path / "variables", [("a", np.ones(2))])
    assert satchel.load(tmp_path)["a"].tolist() == [1.0, 1.0]  # a SavedModel variables/ folder
    write_bundle(tmp_path / "other", [("b", np.ones(2))])
    with pytest.raises(FormatError, match=r"2 TensorFlow \.index files"):
        tf_reader.read(tmp_path)


def test_unrelated_text_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("model_checkpoint_paths are nice\n" * 3)
    with pytest.raises(FormatError):
        tf_reader.read(tmp_path / "notes.txt")


# -- the object graph ------------------------------------------------------------------------------
def graph_bundle(tmp_path: Path, graph: bytes) -> Path:
    write_bundle(tmp_path / "ck", [("_CHECKPOINTABLE_OBJECT_GRAPH", graph)])
    return tmp_path / "ck"


def node(children: list[tuple[int, str]] = (), attrs: list[str] = ()) -> bytes:  # type: ignore[assignment]
    out = b"".join(field(1, 2, field(1, 0, c) + field(2, 2, n.encode())) for c, n in children)
    out += b"".join(
        field(2, 2, field(1, 2, b"VARIABLE_VALUE") + field(3, 2, k.encode())) for k in attrs
    )
    return field(1, 2, out)


def test_object_graph_with_cycles_and_diamonds_terminates(tmp_path: Path) -> None:
    # 0 -> 1 -> 2 -> 1 (a cycle); a ladder of diamonds doubling the paths at every rung.
    rungs = 40
    nodes = [
        node([(1, "a")]),
        node([(2, "b")], ["a/.ATTRIBUTES/VARIABLE_VALUE"]),
        node([(1, "back"), (3, "r0")]),
    ]
    for i in range(rungs):
        base = 3 + 2 * i
        nodes.append(node([(base + 1, "l"), (base + 2, "r")]))
        nodes.append(node([(base + 2, "x")]))
    nodes.append(node([], ["leaf/.ATTRIBUTES/VARIABLE_VALUE"]))
    paths = tf_reader.object_paths(graph_bundle(tmp_path, b"".join(nodes)))
    assert paths["a/.ATTRIBUTES/VARIABLE_VALUE"] == ["a"]
    assert 1 <= len(paths["leaf/.ATTRIBUTES/VARIABLE_VALUE"]) <= 16


def test_object_graph_node_ids_are_checked(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="refers to a node"):
        tf_reader.object_paths(graph_bundle(tmp_path, node([(5, "x")])))


def test_slot_variables_get_readable_paths(tmp_path: Path) -> None:
    slot = field(3, 2, field(1, 0, 2) + field(2, 2, b"m") + field(3, 0, 3))
    nodes = [
        node([(1, "opt"), (2, "w")]),
        field(1, 2, slot),
        node([], ["w/.ATTRIBUTES/VARIABLE_VALUE"]),
        node([], ["w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE"]),
    ]
    paths = tf_reader.object_paths(graph_bundle(tmp_path, b"".join(nodes)))
    assert paths["w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE"] == [
        "w/.OPTIMIZER_SLOT/opt/m"
    ]
