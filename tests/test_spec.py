"""One test (or a few) per clause of SPEC.md, named ``test_spec_<clause>``.

Reader clauses are tested on files built here by hand, byte by byte, so a writer bug cannot
hide a reader bug: each bad file starts from a valid one and breaks exactly one rule. Writer
clauses are tested by parsing what ``satchel.save`` wrote with the same hand-rolled code.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch
import xxhash

import satchel

# SPEC 2.3 and 6, written out here rather than taken from satchel so that the tests do not
# trust the table they are checking. ``None``: safetensors cannot name it (SPEC 2.4).
WIRE: dict[str, str | None] = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "uint16": "U16",
    "int16": "I16",
    "uint32": "U32",
    "int32": "I32",
    "uint64": "U64",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
    "complex128": None,
}
_FROM_ML_DTYPES = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}  # NumPy itself lacks these
NUMPY: dict[str, np.dtype[Any]] = {
    name: np.dtype(getattr(ml_dtypes, name) if name in _FROM_ML_DTYPES else name) for name in WIRE
}
TORCH: dict[str, torch.dtype] = {name: getattr(torch, name) for name in WIRE}
ITEMSIZE = {name: dt.itemsize for name, dt in NUMPY.items()}


# -- building files by hand ------------------------------------------------------------------


def xxh3(data: bytes | str) -> str:
    return xxhash.xxh3_64_hexdigest(data.encode() if isinstance(data, str) else data)


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def pack(header: Any, data: bytes = b"", *, pad: bool = True) -> bytes:
    """A whole file: 8-byte little-endian N, N header bytes, then the data section (SPEC 1.1).

    ``header`` is a JSON value or the raw header bytes; ``pad`` aligns data to 64 as writers do.
    """
    raw = header if isinstance(header, bytes) else compact(header).encode()
    if pad:
        raw += b" " * (-(8 + len(raw)) % 64)
    return struct.pack("<Q", len(raw)) + raw + data


def put(tmp_path: Path, content: bytes, name: str = "f.satchel") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def entry(dtype: Any, shape: Any, start: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


@dataclass
class Doc:
    """A satchel file taken apart; tests edit one part, then ``write`` re-assembles it."""

    entries: dict[str, Any]  # header tensor entries, in header order
    meta: dict[str, str]  # the header's __metadata__ without the manifest keys
    manifest: dict[str, Any]  # the manifest as JSON values
    data: bytes

    def header(self, *, text: str | None = None, digest: str | None = None) -> dict[str, Any]:
        """The header with the manifest text and, unless given, its correct checksum."""
        text = compact(self.manifest) if text is None else text
        digest = xxh3(text) if digest is None else digest
        meta = {**self.meta, "satchel": text, "satchel.xxh3": digest}
        return {"__metadata__": meta, **self.entries}

    def write(self, tmp_path: Path, *, text: str | None = None, digest: str | None = None) -> Path:
        return put(tmp_path, pack(self.header(text=text, digest=digest), self.data))


def doc_of(arrays: dict[str, np.ndarray], *, meta: dict[str, str] | None = None) -> Doc:
    """A valid satchel file: a dict root with one whole-tensor NumPy leaf per array.

    Arrays are stored in the order given; callers list larger item sizes first (SPEC 2.2).
    """
    entries: dict[str, Any] = {}
    stored: dict[str, Any] = {}
    leaves: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    pos = 0
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        wire = WIRE[a.dtype.name]
        wire_shape = list(a.shape) if wire else [len(raw)]
        entries[name] = entry(wire or "U8", wire_shape, pos, pos + len(raw))
        stored[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "xxh3": xxh3(raw)}
        leaves.append(leaf(name, a.dtype.name, list(a.shape)))
        chunks.append(raw)
        pos += len(raw)
    root = {"$dict": [[name, {"$t": i}] for i, name in enumerate(arrays)]}
    manifest = {
        "version": 1,
        "root": root,
        "leaves": leaves,
        "stored": stored,
        "metadata": dict(meta or {}),
    }
    return Doc(entries, dict(meta or {}), manifest, b"".join(chunks))


def leaf(data: str, dtype: str, shape: list[int], **extra: Any) -> dict[str, Any]:
    rec = {"framework": "numpy", "kind": "tensor", "dtype": dtype, "shape": shape, "data": data}
    return {**rec, **extra}


W = np.arange(6, dtype=np.float32).reshape(2, 3)
N = np.array([1, -2, 3], dtype=np.int16)


def sample() -> Doc:
    """The valid file every bad file starts from: {"w": W, "n": N, "lr": 0.125}, some metadata."""
    doc = doc_of({"w": W, "n": N}, meta={"epoch": "3"})
    doc.manifest["root"]["$dict"].append(["lr", 0.125])
    return doc


def with_root(root: Any) -> Doc:
    doc = sample()
    doc.manifest["root"] = root
    return doc


def rejects(path: Path, *fields: str, error: type[Exception] = satchel.FormatError) -> None:
    """Both readers refuse ``path`` with ``error``; the message names the file and each field."""
    for read in (satchel.load, satchel.open):
        with pytest.raises(error) as info:
            read(path)
        if error is satchel.FormatError:
            # IntegrityError is reserved for checksum mismatches (SPEC 3.2, 3.7).
            assert not isinstance(info.value, satchel.IntegrityError)
        msg = str(info.value)
        assert str(path) in msg, msg
        for field in fields:
            assert field in msg, f"{field!r} not in {msg!r}"


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8 : 8 + n])


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads(read_header(path)[1]["__metadata__"]["satchel"])


def tensors_of(header: dict[str, Any]) -> dict[str, Any]:
    """Header tensor entries in data order."""
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    return dict(sorted(items, key=lambda kv: tuple(kv[1]["data_offsets"])))


def saved(tmp_path: Path, obj: Any, name: str = "s.satchel", **kw: Any) -> Path:
    path = tmp_path / name
    satchel.save(obj, path, **kw)
    return path


def test_hand_built_sample_is_valid(tmp_path: Path) -> None:
    # Every rejection below breaks one rule of this file, so the file itself must be accepted
    # by satchel and by the reference safetensors implementation.
    path = sample().write(tmp_path)
    out = satchel.load(path)
    assert list(out) == ["w", "n", "lr"]
    np.testing.assert_array_equal(out["w"], W)
    np.testing.assert_array_equal(out["n"], N)
    assert out["lr"] == 0.125
    ref = safetensors.numpy.load_file(str(path))
    np.testing.assert_array_equal(ref["w"], W)


# -- 1. Envelope ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(8))
def test_spec_1_1_shorter_than_8_bytes(tmp_path: Path, size: int) -> None:
    path = put(tmp_path, b"\x02\x00\x00\x00\x00\x00\x00"[:size])
    rejects(path, "8-byte header length")


def test_spec_1_1_length_is_little_endian_u64(tmp_path: Path) -> None:
    # A big-endian length would read as a huge number and fail 1.2.
    good = pack({})
    assert satchel.load(put(tmp_path, good)) == {}
    swapped = good[:8][::-1] + good[8:]
    rejects(put(tmp_path, swapped, "swapped"), "header length")


@pytest.mark.parametrize("n", [0, 1])
def test_spec_1_2_length_at_least_2(tmp_path: Path, n: int) -> None:
    path = put(tmp_path, struct.pack("<Q", n) + b"{}"[:n] + b"    ")
    rejects(path, f"header length {n}")


def test_spec_1_2_length_cap(tmp_path: Path) -> None:
    # A sparse file large enough that only the cap is broken, not "8 + N <= file size".
    n = 100_000_001
    path = tmp_path / "f.satchel"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", n) + b"{}")
        f.truncate(8 + n + 64)
    rejects(path, f"header length {n}", "100000000")


def test_spec_1_2_length_at_cap_accepted(tmp_path: Path) -> None:
    n = 100_000_000
    path = tmp_path / "f.satchel"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", n) + b"{}")
        spaces = b" " * 1_000_000
        for _ in range(n // len(spaces) - 1):
            f.write(spaces)
        f.write(spaces[:-2])
    try:
        assert satchel.load(path) == {}
    finally:
        path.unlink()  # 100 MB; do not keep it in pytest's retained temp folders


def test_spec_1_2_header_past_end_of_file(tmp_path: Path) -> None:
    good = pack({})
    rejects(put(tmp_path, good[:-1]), "header length", "end of the file")


def test_spec_1_2_header_exactly_fills_file(tmp_path: Path) -> None:
    assert satchel.load(put(tmp_path, pack({}, pad=False))) == {}


@pytest.mark.parametrize(
    "obj",
    [
        {},
        np.float32(1.0),
        {"a": np.arange(3, dtype=np.int8), "b": [1, "x", None]},
        [torch.ones(5, dtype=torch.bfloat16), b"\x00" * 7],
    ],
    ids=["empty", "scalar", "nested", "torch"],
)
def test_spec_1_3_writer_pads_header_to_64(tmp_path: Path, obj: Any) -> None:
    path = saved(tmp_path, obj)
    n = int.from_bytes(path.read_bytes()[:8], "little")
    header = path.read_bytes()[8 : 8 + n]
    assert (8 + n) % 64 == 0
    body = header.rstrip(b" ")
    assert body.endswith(b"}")
    assert set(header[len(body) :]) <= {0x20}
    json.loads(body)


@pytest.mark.parametrize("pad", [b"", b" ", b"   "])
def test_spec_1_3_reader_accepts_any_length(tmp_path: Path, pad: bytes) -> None:
    doc = sample()
    raw = compact(doc.header()).encode() + pad
    out = satchel.load(put(tmp_path, pack(raw, doc.data, pad=False)))
    np.testing.assert_array_equal(out["n"], N)


def test_spec_1_4_not_utf8(tmp_path: Path) -> None:
    path = put(tmp_path, pack(b'{"__metadata__":{"a":"\xff"}}'))
    rejects(path, "header", "UTF-8")


@pytest.mark.parametrize("lead", [b" ", b"\n", b"\xef\xbb\xbf"], ids=["space", "newline", "bom"])
def test_spec_1_4_leading_whitespace(tmp_path: Path, lead: bytes) -> None:
    rejects(put(tmp_path, pack(lead + b"{}")), "header", "'{'")


def test_spec_1_4_not_an_object(tmp_path: Path) -> None:
    rejects(put(tmp_path, pack(b"[]")), "header", "'{'")


def test_spec_1_4_trailing_whitespace_allowed(tmp_path: Path) -> None:
    doc = sample()
    raw = compact(doc.header()).encode() + b" \t\r\n "
    out = satchel.load(put(tmp_path, pack(raw, doc.data)))
    assert out["lr"] == 0.125


def test_spec_1_4_trailing_garbage(tmp_path: Path) -> None:
    rejects(put(tmp_path, pack(b"{} x")), "header", "JSON")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_spec_1_4_nan_literals(tmp_path: Path, literal: str) -> None:
    raw = b'{"a":{"dtype":"U8","shape":[' + literal.encode() + b'],"data_offsets":[0,0]}}'
    rejects(put(tmp_path, pack(raw)), "header", literal)


def test_spec_1_5_duplicate_tensor_name(tmp_path: Path) -> None:
    one = compact(entry("U8", [0], 0, 0))
    raw = f'{{"dup":{one},"dup":{one}}}'.encode()
    rejects(put(tmp_path, pack(raw)), "header", "'dup'")


def test_spec_1_5_duplicate_field_in_entry(tmp_path: Path) -> None:
    raw = b'{"a":{"dtype":"U8","dtype":"U8","shape":[0],"data_offsets":[0,0]}}'
    rejects(put(tmp_path, pack(raw)), "header", "'dtype'")


def test_spec_1_5_duplicate_metadata_key(tmp_path: Path) -> None:
    raw = b'{"__metadata__":{"k":"1","k":"1"}}'
    rejects(put(tmp_path, pack(raw)), "header", "'k'")


def test_spec_1_5_duplicate_key_in_manifest(tmp_path: Path) -> None:
    doc = sample()
    text = compact(doc.manifest)
    assert text.startswith('{"version":1,')
    text = '{"version":1,' + text[1:]
    rejects(doc.write(tmp_path, text=text), "manifest", "'version'")


def test_spec_1_5_duplicate_key_deep_in_manifest(tmp_path: Path) -> None:
    doc = sample()
    text = compact(doc.manifest).replace('"kind":"tensor"', '"kind":"tensor","kind":"tensor"', 1)
    rejects(doc.write(tmp_path, text=text), "manifest", "'kind'")


def test_spec_1_6_entry_cap(tmp_path: Path) -> None:
    # Entries are minimal ("k":0, not tensors) so the 10 MB header parses in a second or two:
    # the count must be refused before any entry is examined, which is also what bounds a
    # hostile header's cost. Only load is called, as this parse is the suite's slowest step.
    n = 1_000_001
    body = b"{" + b",".join(b'"%x":0' % i for i in range(n)) + b"}"
    path = put(tmp_path, pack(body))
    with pytest.raises(satchel.FormatError, match=f"{n} entries, cap is 1000000") as info:
        satchel.load(path)
    assert str(path) in str(info.value)
    path.unlink()


# -- 2. Tensors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        [0, [0], [0, 0]],
        "U8",
        {"dtype": "U8", "shape": [0]},
        {"dtype": "U8", "data_offsets": [0, 0]},
        {**entry("U8", [0], 0, 0), "extra": 1},
    ],
    ids=["list", "string", "no-offsets", "no-shape", "extra-field"],
)
def test_spec_2_1_entry_fields(tmp_path: Path, spec: Any) -> None:
    path = put(tmp_path, pack({"t": spec}))
    rejects(path, "tensor 't'", "dtype, shape, data_offsets")


def test_spec_2_1_metadata_is_not_a_tensor(tmp_path: Path) -> None:
    path = put(tmp_path, pack({"__metadata__": {"a": "b"}, "t": entry("U8", [1], 0, 1)}, b"\x07"))
    out = satchel.load(path)
    assert list(out) == ["t"]


def _mixed_numpy() -> dict[str, Any]:
    # Odd element counts: any wrong order would leave a later tensor misaligned.
    return {
        "flag": np.array([True, False, True]),
        "c128": np.arange(3, dtype=np.complex128) * (1 + 2j),
        "u8": np.arange(5, dtype=np.uint8),
        "f64": np.linspace(0, 1, 3),
        "bf16": np.arange(3).astype(ml_dtypes.bfloat16),
        "i16": np.arange(5, dtype=np.int16),
        "f32": np.arange(7, dtype=np.float32),
        "c64": np.ones(3, dtype=np.complex64),
        "f8": np.arange(3).astype(ml_dtypes.float8_e5m2),
    }


def _mixed_torch() -> dict[str, Any]:
    return {
        "flag": torch.tensor([True, False, True]),
        "c128": torch.arange(3.0, dtype=torch.float64).to(torch.complex128),
        "u8": torch.arange(5, dtype=torch.uint8),
        "f64": torch.linspace(0, 1, 3, dtype=torch.float64),
        "bf16": torch.arange(3, dtype=torch.bfloat16),
        "i32": torch.arange(5, dtype=torch.int32),
        "f8": torch.zeros(3, dtype=torch.float8_e4m3fn),
    }


@pytest.mark.parametrize("make", [_mixed_numpy, _mixed_torch], ids=["numpy", "torch"])
def test_spec_2_2_tensors_aligned_by_item_size(tmp_path: Path, make: Any) -> None:
    path = saved(tmp_path, make())
    n, header = read_header(path)
    stored = read_manifest(path)["stored"]
    sizes = []
    for name, e in tensors_of(header).items():
        itemsize = ITEMSIZE[stored[name]["dtype"]]
        sizes.append(itemsize)
        assert (8 + n + e["data_offsets"][0]) % itemsize == 0, (name, e)
    assert sizes == sorted(sizes, reverse=True)
    assert 16 in sizes  # complex128 is ordered by its true item size, not U8's


@pytest.mark.parametrize(("name", "wire"), [(n, w) for n, w in WIRE.items() if w])
def test_spec_2_3_every_dtype_loads(tmp_path: Path, name: str, wire: str) -> None:
    dt = NUMPY[name]
    values = np.array([0, 1, 1], dtype=bool).astype(dt)
    raw = values.astype(dt.newbyteorder("<")).tobytes()
    out = satchel.load(put(tmp_path, pack({"t": entry(wire, [3], 0, len(raw))}, raw)))
    assert out["t"].dtype == dt
    assert out["t"].tolist() == values.tolist()


def test_spec_2_3_data_is_little_endian(tmp_path: Path) -> None:
    raw = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    header = {
        "a": entry("U16", [1], 0, 2),
        "b": entry("U16", [1], 2, 4),
        "c": entry("I32", [1], 4, 8),
    }
    out = satchel.load(put(tmp_path, pack(header, raw)))
    assert [int(out[k][0]) for k in "abc"] == [0x0201, 0x0403, 0x08070605]


@pytest.mark.parametrize("wire", ["F128", "f32", "C128", "complex128", "float32", "", 4, None])
def test_spec_2_3_unknown_dtype(tmp_path: Path, wire: Any) -> None:
    rejects(put(tmp_path, pack({"t": entry(wire, [0], 0, 0)})), "tensor 't'", "dtype")


def test_spec_2_4_complex128_stored_as_u8(tmp_path: Path) -> None:
    c = np.array([[1 + 2j, -3.5j], [0, 7]], dtype=np.complex128)
    path = saved(tmp_path, {"c": c})
    _, header = read_header(path)
    assert header["c"]["dtype"] == "U8"
    assert header["c"]["shape"] == [c.nbytes]
    assert read_manifest(path)["stored"]["c"]["dtype"] == "complex128"
    assert read_manifest(path)["stored"]["c"]["shape"] == [2, 2]
    assert safetensors.numpy.load_file(str(path))["c"].tobytes() == c.tobytes()
    out = satchel.load(path)["c"]
    assert out.dtype == np.complex128
    np.testing.assert_array_equal(out, c)


def test_spec_2_4_complex128_header_must_be_flat_u8(tmp_path: Path) -> None:
    doc = doc_of({"c": np.ones(2, dtype=np.complex128)})
    doc.entries["c"]["shape"] = [2, 16]  # U8 and the right byte count, but not [nbytes]
    rejects(doc.write(tmp_path), "tensor 'c'", "U8[32]")


@pytest.mark.parametrize(
    "shape",
    [[-1], [1.0], [True], [2**63], ["1"], [None], 1, None, "[1]"],
    ids=["negative", "float", "bool", "2^63", "string", "null", "int", "none", "text"],
)
def test_spec_2_5_bad_shape(tmp_path: Path, shape: Any) -> None:
    rejects(put(tmp_path, pack({"t": entry("U8", shape, 0, 1)}, b"\x00")), "tensor 't'", "shape")


def test_spec_2_5_at_most_64_dims(tmp_path: Path) -> None:
    ok = put(tmp_path, pack({"t": entry("U8", [1] * 64, 0, 1)}, b"\x05"), "ok")
    assert satchel.load(ok)["t"].shape == (1,) * 64
    bad = put(tmp_path, pack({"t": entry("U8", [1] * 65, 0, 1)}, b"\x05"))
    rejects(bad, "tensor 't'", "shape")


@pytest.mark.parametrize(
    "offsets",
    [[0], [0, 1, 1], [-1, 0], [0.0, 1], [False, True], [0, 2**63], "0,1", None],
    ids=["short", "long", "negative", "float", "bool", "2^63", "string", "null"],
)
def test_spec_2_5_bad_data_offsets(tmp_path: Path, offsets: Any) -> None:
    header = {"t": {"dtype": "U8", "shape": [1], "data_offsets": offsets}}
    rejects(put(tmp_path, pack(header, b"\x00")), "tensor 't'", "data_offsets")


def test_spec_2_5_start_after_end(tmp_path: Path) -> None:
    header = {"a": entry("U8", [0], 4, 0), "b": entry("U8", [4], 0, 4)}
    rejects(put(tmp_path, pack(header, b"\x00" * 4)), "tensor 'a'", "data_offsets")


def test_spec_2_5_span_must_match_shape(tmp_path: Path) -> None:
    header = {"t": entry("F32", [2], 0, 4)}
    rejects(put(tmp_path, pack(header, b"\x00" * 4)), "tensor 't'", "data_offsets")


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("U8", [2**32, 2**32]), ("F32", [2**31, 2**31]), ("F64", [2**61])],
)
def test_spec_2_5_size_computed_without_overflow(tmp_path: Path, dtype: str, shape: Any) -> None:
    # Each product is 2^64 bytes: 0 in wrapping u64 arithmetic, which would "match" [0, 0].
    rejects(put(tmp_path, pack({"t": entry(dtype, shape, 0, 0)})), "tensor 't'", "data_offsets")


def test_spec_2_6_first_must_start_at_0(tmp_path: Path) -> None:
    path = put(tmp_path, pack({"a": entry("U8", [4], 4, 8)}, b"\x00" * 8))
    rejects(path, "tensor 'a'", "data_offsets", "hole")


def test_spec_2_6_no_holes(tmp_path: Path) -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 8, 12)}
    rejects(put(tmp_path, pack(header, b"\x00" * 12)), "tensor 'b'", "data_offsets", "hole")


def test_spec_2_6_no_overlaps(tmp_path: Path) -> None:
    header = {"a": entry("U8", [8], 0, 8), "b": entry("U8", [8], 4, 12)}
    rejects(put(tmp_path, pack(header, b"\x00" * 12)), "tensor 'b'", "data_offsets", "overlap")


def test_spec_2_6_no_bytes_after_last_tensor(tmp_path: Path) -> None:
    path = put(tmp_path, pack({"a": entry("U8", [4], 0, 4)}, b"\x00" * 5))
    rejects(path, "data bytes", "unaccounted")


def test_spec_2_6_no_bytes_without_tensors(tmp_path: Path) -> None:
    rejects(put(tmp_path, pack({}, b"\x00")), "data bytes")


def test_spec_2_6_last_ends_at_end_of_file(tmp_path: Path) -> None:
    path = put(tmp_path, pack({"a": entry("U8", [4], 0, 4)}, b"\x00" * 3))
    rejects(path, "data bytes", "truncated")


def test_spec_2_6_zero_size_inside_a_tensor(tmp_path: Path) -> None:
    header = {"a": entry("U8", [4], 0, 4), "z": entry("U8", [0], 2, 2)}
    rejects(put(tmp_path, pack(header, b"\x00" * 4)), "tensor 'z'", "data_offsets")


def test_spec_2_6_zero_size_may_share_offsets(tmp_path: Path) -> None:
    # Listed out of data order on purpose: the rule is about offsets, not header order.
    header = {
        "b": entry("U8", [4], 4, 8),
        "z1": entry("F32", [0, 3], 4, 4),
        "a": entry("U8", [4], 0, 4),
        "z0": entry("U8", [0], 0, 0),
        "z2": entry("I64", [2, 0], 8, 8),
    }
    out = satchel.load(put(tmp_path, pack(header, bytes(range(8)))))
    assert out["b"].tolist() == [4, 5, 6, 7]
    assert out["z1"].shape == (0, 3)
    assert out["z2"].shape == (2, 0)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_2_6_only_zero_size_tensors(tmp_path: Path, framework: str) -> None:
    # An empty data section: every tensor is zero-size and starts at 0.
    doc = doc_of({"e": np.zeros((0, 3), dtype=np.int32), "f": np.zeros(0, dtype=np.float64)})
    out = satchel.load(doc.write(tmp_path), framework=framework)
    assert tuple(out["e"].shape) == (0, 3)
    assert tuple(out["f"].shape) == (0,)


@pytest.mark.parametrize(
    "meta",
    [{"a": 1}, {"a": None}, {"a": {"b": "c"}}, {"a": ["b"]}, ["a", "b"], "a=b", None],
    ids=["int", "null", "object", "list", "array", "string", "none"],
)
def test_spec_2_7_metadata_maps_str_to_str(tmp_path: Path, meta: Any) -> None:
    rejects(put(tmp_path, pack({"__metadata__": meta})), "'__metadata__'")


def test_spec_2_7_metadata_absent_or_empty(tmp_path: Path) -> None:
    assert satchel.load(put(tmp_path, pack({"__metadata__": {}}))) == {}
    with satchel.open(put(tmp_path, pack({}), "b")) as f:
        assert f.metadata == {}


# -- 3. The manifest --------------------------------------------------------------------------


def test_spec_3_1_plain_safetensors_flat_in_data_order(tmp_path: Path) -> None:
    # Data order (z, a, m) differs from both header order and name order.
    header = {
        "__metadata__": {"format": "np"},
        "a": entry("I16", [2], 4, 8),
        "z": entry("F32", [1], 0, 4),
        "m": entry("U8", [3], 8, 11),
    }
    data = struct.pack("<f2h3B", 1.5, -1, 2, 7, 8, 9)
    path = put(tmp_path, pack(header, data))
    out = satchel.load(path)
    assert type(out) is dict
    assert list(out) == ["z", "a", "m"]
    assert all(type(v) is np.ndarray for v in out.values())
    assert out["a"].tolist() == [-1, 2]
    with satchel.open(path) as f:
        assert not f.checksummed
        assert f.metadata == {"format": "np"}


def test_spec_3_1_safetensors_library_file(tmp_path: Path) -> None:
    arrays = {"x": np.arange(4, dtype=np.float64), "y": np.array([[1, 2]], dtype=np.uint8)}
    path = tmp_path / "ref.safetensors"
    safetensors.numpy.save_file(arrays, str(path))
    out = satchel.load(path)
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == v.dtype


@pytest.mark.parametrize("drop", ["satchel", "satchel.xxh3"])
def test_spec_3_1_needs_both_manifest_keys(tmp_path: Path, drop: str) -> None:
    doc = sample()
    header = doc.header()
    del header["__metadata__"][drop]
    rejects(put(tmp_path, pack(header, doc.data)), "'satchel'", "'satchel.xxh3'")


@pytest.mark.parametrize("key", ["satchel", "satchel.xxh3", "satchel.note", "satchelish"])
def test_spec_3_1_writer_refuses_reserved_metadata_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(satchel.UnsupportedObjectError, match=re.escape(repr(key))):
        satchel.save({"a": np.zeros(1)}, tmp_path / "f", metadata={key: "x"})
    assert list(tmp_path.iterdir()) == []


def test_spec_3_2_writer_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path, {"a": np.arange(3)}, metadata={"k": "v"})
    meta = read_header(path)[1]["__metadata__"]
    assert re.fullmatch("[0-9a-f]{16}", meta["satchel.xxh3"])
    assert meta["satchel.xxh3"] == xxh3(meta["satchel"])


def test_spec_3_2_changed_manifest_text(tmp_path: Path) -> None:
    doc = sample()
    text = compact(doc.manifest)
    bad = text.replace("0.125", "0.126")  # still valid JSON, still agrees with the header
    assert bad != text
    path = doc.write(tmp_path, text=bad, digest=xxh3(text))
    rejects(path, "manifest", "checksum", error=satchel.IntegrityError)


@pytest.mark.parametrize("old", [b"0.125", b'\\"12345\\"'], ids=["root-float", "user-metadata"])
def test_spec_3_2_flipped_digit_in_written_file(tmp_path: Path, old: bytes) -> None:
    # Edits the file satchel wrote in place: one digit inside the manifest string.
    path = saved(tmp_path, {"w": np.ones(2), "lr": 0.125}, metadata={"run": "12345"})
    raw = path.read_bytes()
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, old.replace(b"2", b"7")))
    rejects(path, "manifest", "checksum", error=satchel.IntegrityError)


@pytest.mark.parametrize("digest", ["upper", "0" * 16, "", "short"])
def test_spec_3_2_checksum_must_match(tmp_path: Path, digest: str) -> None:
    doc = sample()
    if digest == "upper":
        digest = xxh3(compact(doc.manifest)).upper()
        assert digest != digest.lower()  # the hex has a letter for this manifest
    path = doc.write(tmp_path, digest=digest)
    rejects(path, "manifest", "checksum", error=satchel.IntegrityError)


def test_spec_3_3_writer_manifest_fields(tmp_path: Path) -> None:
    m = read_manifest(saved(tmp_path, {"a": np.zeros(2)}))
    assert set(m) == {"version", "root", "leaves", "stored", "metadata"}
    assert m["version"] == 1
    assert type(m["version"]) is int


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_spec_3_3_exact_fields(tmp_path: Path, change: str) -> None:
    doc = sample()
    if change == "missing":
        del doc.manifest["metadata"]
    else:
        doc.manifest["extra"] = 1
    rejects(doc.write(tmp_path), "manifest fields")


def test_spec_3_3_module_field_written_for_a_module(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "m.satchel"
    satchel.save(torch.nn.Linear(2, 2), path)
    m = read_manifest(path)
    assert set(m) == {"version", "root", "leaves", "stored", "metadata", "module"}
    assert m["module"] == "torch.nn.modules.linear.Linear"
    with satchel.open(path) as ck:
        assert ck.module_class == "torch.nn.modules.linear.Linear"


@pytest.mark.parametrize("module", ["", 1, None, ["x"], "x" * 1001], ids=repr)
def test_spec_3_3_module_field_must_be_a_short_string(tmp_path: Path, module: Any) -> None:
    doc = sample()
    doc.manifest["module"] = module
    rejects(doc.write(tmp_path), "module")


def test_spec_3_3_module_field_accepted(tmp_path: Path) -> None:
    doc = sample()
    doc.manifest["module"] = "pkg.Net"
    with satchel.open(doc.write(tmp_path)) as ck:
        assert ck.module_class == "pkg.Net"


# True and 1.0 compare equal to 1 in Python, but neither is "the integer 1".
@pytest.mark.parametrize("version", [2, 0, -1, "1", None, [1], True, 1.0], ids=repr)
def test_spec_3_3_unknown_version(tmp_path: Path, version: Any) -> None:
    doc = sample()
    doc.manifest["version"] = version
    rejects(doc.write(tmp_path), "version")


@pytest.mark.parametrize("text", ["[]", '"x"', "{", " {}", "null"])
def test_spec_3_3_manifest_must_be_an_object(tmp_path: Path, text: str) -> None:
    rejects(sample().write(tmp_path, text=text), "manifest")


def test_spec_3_4_writer_stored_matches_header(tmp_path: Path) -> None:
    path = saved(tmp_path, _mixed_numpy())
    _, header = read_header(path)
    stored = read_manifest(path)["stored"]
    tensors = tensors_of(header)
    assert set(stored) == set(tensors)
    for name, rec in stored.items():
        wire = WIRE[rec["dtype"]]
        nbytes = math.prod(rec["shape"]) * ITEMSIZE[rec["dtype"]]
        assert tensors[name]["dtype"] == (wire or "U8")
        assert tensors[name]["shape"] == (rec["shape"] if wire else [nbytes])


def test_spec_3_4_header_tensor_missing_from_stored(tmp_path: Path) -> None:
    doc = sample()
    doc.entries["extra"] = entry("U8", [0], 0, 0)
    rejects(doc.write(tmp_path), "'extra'")


def test_spec_3_4_stored_tensor_missing_from_header(tmp_path: Path) -> None:
    doc = sample()
    doc.manifest["stored"]["ghost"] = {"dtype": "uint8", "shape": [0], "xxh3": xxh3(b"")}
    rejects(doc.write(tmp_path), "'ghost'")


@pytest.mark.parametrize(
    ("field", "value"),
    [("dtype", "int32"), ("dtype", "uint8"), ("shape", [3, 2]), ("shape", [6])],
)
def test_spec_3_4_header_must_agree(tmp_path: Path, field: str, value: Any) -> None:
    doc = sample()
    doc.manifest["stored"]["w"][field] = value
    # Keep the leaf consistent with its stored tensor so that only 3.4 is broken.
    doc.manifest["leaves"][0][field] = value
    rejects(doc.write(tmp_path), "tensor 'w'")


@pytest.mark.parametrize(
    "rec",
    [
        {"dtype": "float32", "shape": [2, 3]},
        {"dtype": "float32", "shape": [2, 3], "xxh3": "0" * 16, "extra": 1},
        {"dtype": "F32", "shape": [2, 3], "xxh3": "0" * 16},
        {"dtype": "float32", "shape": [2, -3], "xxh3": "0" * 16},
        {"dtype": "float32", "shape": [2, 3], "xxh3": "ABCDEF0123456789"},
        {"dtype": "float32", "shape": [2, 3], "xxh3": "0" * 15},
        {"dtype": "float32", "shape": [2, 3], "xxh3": 0},
        [],
    ],
    ids=["no-xxh3", "extra", "wire-name", "neg-shape", "upper-hex", "15-digits", "int", "list"],
)
def test_spec_3_4_stored_record(tmp_path: Path, rec: Any) -> None:
    doc = sample()
    doc.manifest["stored"]["w"] = rec
    rejects(doc.write(tmp_path), "stored['w']")


def test_spec_3_5_metadata_round_trip(tmp_path: Path) -> None:
    meta = {"epoch": "3", "note": "ünïcode", "": "empty key"}
    path = saved(tmp_path, {"a": np.zeros(1)}, metadata=meta)
    with satchel.open(path) as f:
        assert f.metadata == meta
    assert read_manifest(path)["metadata"] == meta
    with safetensors.safe_open(str(path), "np") as f:  # visible to any safetensors reader
        assert {k: v for k, v in f.metadata().items() if not k.startswith("satchel")} == meta


@pytest.mark.parametrize(
    ("header_meta", "manifest_meta"),
    [
        ({"epoch": "3"}, {"epoch": "4"}),
        ({"epoch": "3", "x": "1"}, {"epoch": "3"}),
        ({}, {"a": "b"}),
    ],
    ids=["value", "extra-in-header", "extra-in-manifest"],
)
def test_spec_3_5_metadata_must_agree(
    tmp_path: Path, header_meta: dict[str, str], manifest_meta: dict[str, str]
) -> None:
    doc = sample()
    doc.meta = header_meta
    doc.manifest["metadata"] = manifest_meta
    rejects(doc.write(tmp_path), "metadata")


def test_spec_3_5_metadata_values_are_strings(tmp_path: Path) -> None:
    doc = sample()
    doc.manifest["metadata"] = {"epoch": 3}
    rejects(doc.write(tmp_path), "metadata")


def test_spec_3_5_reserved_header_keys_are_not_user_metadata(tmp_path: Path) -> None:
    # A future writer may add "satchel.<something>" keys; the comparison leaves them out.
    doc = sample()
    doc.meta["satchel.future"] = "1"
    with satchel.open(doc.write(tmp_path)) as f:
        assert f.metadata == {"epoch": "3"}


def test_spec_3_5_manifest_metadata_without_reserved_keys(tmp_path: Path) -> None:
    # The header minus reserved keys is {"epoch": "3"}; a manifest claiming more disagrees.
    doc = sample()
    doc.meta["satchel.note"] = "x"
    doc.manifest["metadata"]["satchel.note"] = "x"
    rejects(doc.write(tmp_path), "metadata")


def _leaf_doc(**fields: Any) -> Doc:
    doc = sample()
    doc.manifest["leaves"][0].update(fields)
    return doc


@pytest.mark.parametrize(
    "fields",
    [
        {"framework": "jax"},
        {"kind": "module"},
        {"data": "nope"},
        {"data": 0},
        {"dtype": "float64"},
        {"dtype": "F32"},
        {"shape": [3, 2]},
        {"shape": [2, 3.0]},
        {"requires_grad": "yes"},
        {"requires_grad": 1},
        {"extra": True},
        {"offset": 0},
        {"strides": [3, 1]},
        {"offset": 2, "strides": [3, 1]},
        {"offset": -4, "strides": [3, 1]},
        {"offset": 0, "strides": [3]},
        {"offset": 0, "strides": [3, True]},
        {"offset": 4, "strides": [3, 1]},
        {"offset": 0, "strides": [4, 1]},
        {"offset": 0, "strides": [-3, 1]},
        {"offset": 4, "strides": [3, -1]},
        {"offset": 28, "strides": [1], "shape": [0]},
    ],
    ids=[
        "framework",
        "kind",
        "data-unknown",
        "data-int",
        "dtype-differs",
        "dtype-wire-name",
        "shape-differs",
        "shape-float",
        "grad-string",
        "grad-int",
        "extra-field",
        "offset-only",
        "strides-only",
        "offset-unaligned",
        "offset-negative",
        "strides-short",
        "strides-bool",
        "past-end",
        "stride-past-end",
        "before-start",
        "negative-past-start",
        "empty-past-end",
    ],
)
def test_spec_3_6_bad_leaf(tmp_path: Path, fields: dict[str, Any]) -> None:
    rejects(_leaf_doc(**fields).write(tmp_path), "leaves[0]")


def test_spec_3_6_leaf_needs_its_fields(tmp_path: Path) -> None:
    doc = sample()
    del doc.manifest["leaves"][1]["kind"]
    rejects(doc.write(tmp_path), "leaves[1]")


def _views_doc() -> Doc:
    """One stored float32 [8] and four leaves over it: whole, transposed, empty, other dtype."""
    base = np.arange(8, dtype=np.float32)
    doc = doc_of({"base": base})
    doc.manifest["leaves"] += [
        leaf("base", "float32", [4, 2], offset=0, strides=[1, 4]),  # a transpose
        leaf("base", "float32", [0], offset=32, strides=[1]),  # empty, at the very end
        leaf("base", "int32", [2], offset=8, strides=[1]),  # another dtype over the same bytes
    ]
    doc.manifest["root"] = [{"$t": i} for i in range(4)]
    return doc


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_3_6_views_share_memory(tmp_path: Path, framework: str) -> None:
    doc = _views_doc()
    for rec in doc.manifest["leaves"]:
        rec["framework"] = framework
    whole, tr, empty, ints = satchel.load(doc.write(tmp_path))
    assert all(type(x) is type(whole) for x in (tr, empty, ints))
    # np.asarray views torch CPU tensors without copying, so mutations show through.
    np.testing.assert_array_equal(np.asarray(tr), np.arange(8, dtype=np.float32).reshape(2, 4).T)
    assert tuple(empty.shape) == (0,)
    assert np.asarray(ints).view(np.float32).tolist() == [2, 3]
    whole[7] = 70
    whole[2] = 20
    assert np.asarray(tr)[3, 1] == 70
    assert np.asarray(ints).view(np.float32).tolist() == [20, 3]


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_3_6_negative_strides(tmp_path: Path, framework: str) -> None:
    # A valid file (strides "may be negative"); torch cannot express them, so forcing
    # framework="torch" must still give the right values, or at least a satchel error.
    a = np.arange(4.0)
    path = saved(tmp_path, {"a": a, "r": a[::-1]})
    assert read_manifest(path)["leaves"][1]["strides"] == [-1]
    out = satchel.load(path, framework=framework)
    assert np.asarray(out["r"]).tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("name", list(WIRE))
def test_spec_3_6_numpy_scalar_kind(tmp_path: Path, name: str) -> None:
    scalar = np.ones(1, dtype=NUMPY[name])[0]
    path = saved(tmp_path, {"s": scalar})
    (rec,) = read_manifest(path)["leaves"]
    assert (rec["kind"], rec["dtype"], rec["shape"]) == ("scalar", name, [])
    out = satchel.load(path)["s"]
    assert type(out) is type(scalar)
    assert out == scalar


def test_spec_3_6_writer_view_offsets_are_item_aligned(tmp_path: Path) -> None:
    # A float64 view starting one byte into a uint8 buffer: the writer must not record an
    # offset the reader is required to refuse.
    raw = np.arange(9, dtype=np.uint8)
    view = raw[1:].view(np.float64)
    path = saved(tmp_path, {"f": view, "raw": raw})
    for rec in read_manifest(path)["leaves"]:
        assert rec.get("offset", 0) % ITEMSIZE[rec["dtype"]] == 0, rec
    out = satchel.load(path)
    assert out["f"].tobytes() == view.tobytes()


def test_spec_3_7_writer_checksums(tmp_path: Path) -> None:
    path = saved(tmp_path, _mixed_numpy())
    n, header = read_header(path)
    raw = path.read_bytes()
    stored = read_manifest(path)["stored"]
    for name, e in tensors_of(header).items():
        start, end = e["data_offsets"]
        assert stored[name]["xxh3"] == xxh3(raw[8 + n + start : 8 + n + end])


def _damaged(tmp_path: Path) -> Path:
    """The sample file with one byte of tensor 'n' (stored after 'w') flipped."""
    doc = sample()
    data = bytearray(doc.data)
    data[W.nbytes + 3] ^= 0x10  # the high byte of n[1]
    doc.data = bytes(data)
    return doc.write(tmp_path)


def test_spec_3_7_load_verifies(tmp_path: Path) -> None:
    path = _damaged(tmp_path)
    with pytest.raises(satchel.IntegrityError) as info:
        satchel.load(path)
    assert str(path) in str(info.value)
    assert "tensor 'n'" in str(info.value)


def test_spec_3_7_open_verifies_on_access(tmp_path: Path) -> None:
    path = _damaged(tmp_path)
    with satchel.open(path) as f:
        np.testing.assert_array_equal(f["w"], W)  # undamaged tensors stay readable
        with pytest.raises(satchel.IntegrityError, match="tensor 'n'"):
            f["n"]
        with pytest.raises(satchel.IntegrityError, match="tensor 'n'"):
            f.load()


def test_spec_3_7_verify_false(tmp_path: Path) -> None:
    path = _damaged(tmp_path)
    out = satchel.load(path, verify=False)
    assert out["n"].tolist() == [1, -2 ^ 0x1000, 3]
    with satchel.open(path, verify=False) as f:
        assert f["n"][1] == -2 ^ 0x1000


def test_spec_3_7_torch_leaf_verified(tmp_path: Path) -> None:
    path = saved(tmp_path, {"t": torch.arange(4.0)})
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(satchel.IntegrityError, match="tensor 't'"):
        satchel.load(path)
    assert satchel.load(path, verify=False)["t"].shape == (4,)


# -- 4. Structure -----------------------------------------------------------------------------


def test_spec_4_1_plain_json_values(tmp_path: Path) -> None:
    root = [None, True, False, 3, -7, "s", 1.5, 1.0, 1e2, 2e-1, 10**30, [1, [2.5]], []]
    text = compact({**sample().manifest, "root": root}).replace("100.0", "1E2")
    out = satchel.load(sample().write(tmp_path, text=text))
    assert out == [None, True, False, 3, -7, "s", 1.5, 1.0, 100.0, 0.2, 10**30, [1, [2.5]], []]
    assert [type(x) for x in out[:10]] == [type(None), bool, bool, int, int, str] + [float] * 4


def test_spec_4_1_writer_keeps_number_types(tmp_path: Path) -> None:
    obj = [2, 2.0, True, -0.0, 1e300, 5e-324, 2**70, "2"]
    out = satchel.load(saved(tmp_path, obj))
    assert out == obj
    assert [type(x) for x in out] == [type(x) for x in obj]
    assert math.copysign(1, out[3]) == -1


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_spec_4_1_non_finite_literal_in_root(tmp_path: Path, literal: str) -> None:
    text = compact(sample().manifest).replace("0.125", literal)
    rejects(sample().write(tmp_path, text=text), "manifest", literal)


def test_spec_4_2_tags_round_trip(tmp_path: Path) -> None:
    obj = {
        "t": (1, (2,), ()),
        "d": {1: "int key", "1": "str key", -5: None},
        "o": collections.OrderedDict([("b", 1), ("a", 2)]),
        "f": [float("inf"), float("-inf")],
        "a": np.arange(2),
    }
    out = satchel.load(saved(tmp_path, [obj, float("nan")]))
    got, nan = out
    assert math.isnan(nan)
    assert got["t"] == (1, (2,), ())
    assert type(got["t"][1]) is tuple
    assert got["d"] == {1: "int key", "1": "str key", -5: None}
    assert type(got["o"]) is collections.OrderedDict
    assert list(got["o"]) == ["b", "a"]
    assert type(got["d"]) is dict
    assert got["f"] == [math.inf, -math.inf]


def test_spec_4_2_reader_builds_tags(tmp_path: Path) -> None:
    root = {
        "$odict": [
            [2, {"$tuple": [{"$float": "nan"}, {"$float": "-inf"}]}],
            ["2", {"$dict": [["w", {"$t": 0}]]}],
        ]
    }
    out = satchel.load(with_root(root).write(tmp_path))
    assert type(out) is collections.OrderedDict
    assert list(out) == [2, "2"]
    assert math.isnan(out[2][0])
    assert out[2][1] == -math.inf
    np.testing.assert_array_equal(out["2"]["w"], W)


@pytest.mark.parametrize(
    "node",
    [
        {},
        {"a": 1},
        {"$x": 1},
        {"$t": 0, "$tuple": []},
        {"$tuple": {}},
        {"$tuple": None},
        {"$dict": {"a": 1}},
        {"$dict": [["a"]]},
        {"$dict": [["a", 1, 2]]},
        {"$dict": [[1.5, 1]]},
        {"$dict": [[True, 1]]},
        {"$dict": [[None, 1]]},
        {"$dict": [["a", 1], ["a", 2]]},
        {"$odict": [[1, 1], [1, 2]]},
        {"$float": "NaN"},
        {"$float": "1e999"},
        {"$float": 1.0},
    ],
    ids=repr,
)
def test_spec_4_2_other_objects_rejected(tmp_path: Path, node: Any) -> None:
    # Nested inside a list so the check must reach below the top level.
    rejects(with_root([{"$t": 0}, [node]]).write(tmp_path), "root")


@pytest.mark.parametrize("index", [2, -1, True, "0", 0.0, None, 10**30], ids=repr)
def test_spec_4_3_index_in_range(tmp_path: Path, index: Any) -> None:
    rejects(with_root([{"$t": 0}, {"$t": index}]).write(tmp_path), "root")


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_4_3_index_used_twice_is_one_object(tmp_path: Path, framework: str) -> None:
    doc = with_root({"$dict": [["a", {"$t": 0}], ["b", [{"$t": 0}]], ["n", {"$t": 1}]]})
    out = satchel.load(doc.write(tmp_path), framework=framework)
    assert out["a"] is out["b"][0]
    assert out["a"] is not out["n"]


def _header_names(path: Path) -> list[str]:
    return sorted(k for k in read_header(path)[1] if k != "__metadata__")


def test_spec_4_4_names_are_first_paths(tmp_path: Path) -> None:
    a, b = np.zeros(2), np.ones(3)
    path = saved(tmp_path, {"layers": [{"weight": a}, {"weight": b, "tied": a}]})
    assert _header_names(path) == ["layers.0.weight", "layers.1.weight"]


def test_spec_4_4_lone_tensor_is_named_tensor(tmp_path: Path) -> None:
    assert _header_names(saved(tmp_path, np.zeros(2))) == ["tensor"]
    assert _header_names(saved(tmp_path, torch.zeros(2), "t")) == ["tensor"]


def test_spec_4_4_clashes_numbered(tmp_path: Path) -> None:
    # Three different paths that all spell "0.0" once dotted.
    obj = {"0": {"0": np.zeros(1)}, 0: [np.ones(1)], "0.0": np.full(1, 2.0)}
    path = saved(tmp_path, obj)
    names = [k for k in read_header(path)[1] if k != "__metadata__"]
    assert sorted(names) == ["0.0", "0.0#1", "0.0#2"]
    out = satchel.load(path)
    assert (out["0"]["0"][0], out[0][0][0], out["0.0"][0]) == (0, 1, 2)


def test_spec_4_4_metadata_key_as_a_path(tmp_path: Path) -> None:
    # "__metadata__" cannot name a tensor in a safetensors header, so it counts as a clash.
    path = saved(tmp_path, {"__metadata__": np.arange(2), "x": np.zeros(1)})
    assert _header_names(path) == ["__metadata__#1", "x"]
    assert satchel.load(path)["__metadata__"].tolist() == [0, 1]


def test_spec_4_4_view_span_name(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = saved(tmp_path, {"a": w[0:3], "b": w[1:4]})
    assert _header_names(path) == ["a.__base__"]


def test_spec_4_4_readers_ignore_names(tmp_path: Path) -> None:
    # Names that look like paths, spans or clashes but point elsewhere.
    doc = doc_of({"b.__base__": W, "tensor#1": N})
    doc.manifest["root"] = {"$dict": [["tensor#1", {"$t": 0}], ["b", {"$tuple": [{"$t": 1}]}]]}
    out = satchel.load(doc.write(tmp_path))
    np.testing.assert_array_equal(out["tensor#1"], W)
    np.testing.assert_array_equal(out["b"][0], N)


class _Opaque:
    pass


def _cyclic_list() -> list[Any]:
    x: list[Any] = [np.zeros(1)]
    x.append(x)
    return x


def _cyclic_dict() -> dict[str, Any]:
    x: dict[str, Any] = {}
    x["self"] = {"again": x}
    return x


@pytest.mark.parametrize(
    "make",
    [
        lambda: {1.5: np.zeros(1)},
        lambda: {(1, 2): 1},
        lambda: {None: 1},
        lambda: {b"k": 1},
        _cyclic_list,
        _cyclic_dict,
        lambda: {"x": _Opaque()},
        lambda: [object()],
        lambda: {"s": {1, 2}},
        lambda: collections.namedtuple("P", "x")(1),
        lambda: {"f": frozenset()},
        lambda: {"c": 1 + 2j},
        lambda: np.array([object()]),
        lambda: np.array(["text"]),
        lambda: np.array([b"bytes"]),
        lambda: np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),
        lambda: np.array(["2024-01-01"], dtype="datetime64[D]"),
        lambda: torch.zeros(3).to_sparse(),
    ],
    ids=[
        "float-key",
        "tuple-key",
        "none-key",
        "bytes-key",
        "cyclic-list",
        "cyclic-dict",
        "class",
        "object",
        "set",
        "namedtuple",
        "frozenset",
        "complex",
        "object-array",
        "str-array",
        "bytes-array",
        "structured-array",
        "datetime-array",
        "sparse-tensor",
    ],
)
def test_spec_4_5_refused_before_writing(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "f.satchel"
    satchel.save({"old": np.arange(3)}, path)
    before = path.read_bytes()
    with pytest.raises(satchel.UnsupportedObjectError):
        satchel.save(make(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.satchel"]


def _nest(levels: int, inner: Any = 0) -> Any:
    for _ in range(levels):
        inner = [inner]
    return inner


def test_spec_4_6_writer_depth(tmp_path: Path) -> None:
    assert satchel.load(saved(tmp_path, _nest(64))) == _nest(64)
    deep_dict: Any = 0
    for _ in range(64):
        deep_dict = {"k": deep_dict}
    assert satchel.load(saved(tmp_path, deep_dict, "d")) == deep_dict
    with pytest.raises(satchel.UnsupportedObjectError, match="64"):
        satchel.save(_nest(65), tmp_path / "too-deep")
    with pytest.raises(satchel.UnsupportedObjectError, match="64"):
        satchel.save({"k": deep_dict}, tmp_path / "too-deep")
    assert not (tmp_path / "too-deep").exists()


def test_spec_4_6_reader_depth(tmp_path: Path) -> None:
    assert satchel.load(with_root(_nest(64)).write(tmp_path)) == _nest(64)
    rejects(with_root(_nest(65)).write(tmp_path), "root", "64")
    deep: Any = {"$t": 0}
    for _ in range(65):
        deep = {"$tuple": [deep]}
    rejects(with_root(deep).write(tmp_path), "root", "64")


# -- 5. Sharing -------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_5_1_tied_arrays(tmp_path: Path, framework: str) -> None:
    if framework == "torch":
        w: Any = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    else:
        w = np.arange(6.0).reshape(2, 3)
    path = saved(tmp_path, {"embed": w, "blocks": [w, {"again": w}], "other": w + 1})
    assert _header_names(path) == ["embed", "other"]
    out = satchel.load(path)
    assert out["embed"] is out["blocks"][0] is out["blocks"][1]["again"]
    assert out["other"] is not out["embed"]
    assert type(out["embed"]) is type(w)
    with satchel.open(path) as f:  # lazily too
        assert f["embed"] is f["blocks.0"]


def _views(framework: str) -> dict[str, Any]:
    w: Any = np.arange(12, dtype=np.float32).reshape(4, 3)
    if framework == "torch":
        w = torch.from_numpy(w.copy())
    return {"w": w, "head": w[:2], "wt": w.T}


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_5_2_views_stored_once_under_owner(tmp_path: Path, framework: str) -> None:
    path = saved(tmp_path, _views(framework))
    _, header = read_header(path)
    assert _header_names(path) == ["w"]
    assert header["w"]["dtype"] == "F32"
    assert header["w"]["shape"] == [4, 3]
    np.testing.assert_array_equal(
        safetensors.numpy.load_file(str(path))["w"], np.arange(12, dtype=np.float32).reshape(4, 3)
    )


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_5_2_views_share_memory_after_load(tmp_path: Path, framework: str) -> None:
    out = satchel.load(saved(tmp_path, _views(framework)))
    np.testing.assert_array_equal(np.asarray(out["wt"]), np.arange(12).reshape(4, 3).T)
    out["w"][1, 2] = 100
    assert out["head"][1, 2] == 100
    assert out["wt"][2, 1] == 100
    out["head"][0, 0] = -1
    assert out["w"][0, 0] == -1
    if framework == "torch":
        assert out["head"].untyped_storage().data_ptr() == out["w"].untyped_storage().data_ptr()
    else:
        assert np.shares_memory(out["wt"], out["w"])


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_5_2_span_without_owner(tmp_path: Path, framework: str) -> None:
    views = _views(framework)
    w = views["w"]
    path = saved(tmp_path, {"a": w[0:3], "b": w[1:4]})
    assert len(_header_names(path)) == 1
    out = satchel.load(path)
    out["a"][2, 0] = 42
    assert out["b"][1, 0] == 42


def test_spec_5_2_smallest_covering_span(tmp_path: Path) -> None:
    # The views cover bytes [12, 48) of w; storing [0, 48) would not be the smallest span.
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = saved(tmp_path, {"a": w[1:2], "b": w[3:]})
    (span,) = tensors_of(read_header(path)[1]).values()
    assert span["data_offsets"][1] - span["data_offsets"][0] == 36
    out = satchel.load(path)
    np.testing.assert_array_equal(out["b"], w[3:])


def test_spec_5_2_fortran_order_base(tmp_path: Path) -> None:
    # A Fortran-ordered array and its (C-contiguous) transpose are one allocation too.
    f = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    path = saved(tmp_path, {"f": f, "ft": f.T})
    assert len(_header_names(path)) == 1
    out = satchel.load(path)
    out["f"][0, 1] = 9
    assert out["ft"][1, 0] == 9


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_5_3_lone_non_contiguous(tmp_path: Path, framework: str) -> None:
    w = _views(framework)["w"]
    for name, lone in [("t", w.T), ("col", w[:, 1]), ("step", w[::2])]:
        path = saved(tmp_path, lone, name)
        _, header = read_header(path)
        assert list(tensors_of(header)) == ["tensor"]
        assert header["tensor"]["shape"] == list(lone.shape)
        expected = np.ascontiguousarray(np.asarray(lone))
        np.testing.assert_array_equal(safetensors.numpy.load_file(str(path))["tensor"], expected)
        out = satchel.load(path)
        assert tuple(out.shape) == tuple(lone.shape)
        np.testing.assert_array_equal(np.asarray(out), expected)


# -- 6. Dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WIRE))
def test_spec_6_dtype_names_numpy(tmp_path: Path, name: str) -> None:
    a = np.array([0, 1, 0, 1], dtype=bool).astype(NUMPY[name]).reshape(2, 2)
    path = saved(tmp_path, a)
    assert read_manifest(path)["leaves"][0]["dtype"] == name
    out = satchel.load(path)
    assert out.dtype == NUMPY[name]
    assert out.tobytes() == a.tobytes()


@pytest.mark.parametrize("name", list(WIRE))
def test_spec_6_dtype_names_torch(tmp_path: Path, name: str) -> None:
    t = torch.tensor([0, 1, 1]).to(TORCH[name])
    path = saved(tmp_path, t)
    assert read_manifest(path)["leaves"][0]["dtype"] == name
    out = satchel.load(path)
    assert out.dtype == TORCH[name]
    assert out.view(torch.uint8).tolist() == t.view(torch.uint8).tolist()


# -- 7. Writing -------------------------------------------------------------------------------


def test_spec_7_1_temp_file_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[Any, ...]] = []
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def spy_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *args, **kw)
        events.append(("open", Path(path), flags, fd))
        return fd

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", fd))
        real_fsync(fd)

    def spy_replace(src: Any, dst: Any) -> None:
        events.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    target = tmp_path / "model.satchel"
    satchel.save({"a": np.arange(3)}, target)
    monkeypatch.undo()

    (replace,) = [e for e in events if e[0] == "replace"]
    tmp = replace[1]
    assert replace[2] == target
    assert tmp.parent == tmp_path
    assert re.fullmatch(rf"\.satchel-tmp-{os.getpid()}-[0-9a-f]{{8}}", tmp.name)
    i_replace = events.index(replace)
    (create,) = [e for e in events if e[0] == "open" and e[1] == tmp]
    assert create[2] & os.O_CREAT
    assert create[2] & os.O_EXCL
    assert ("fsync", create[3]) in events[events.index(create) : i_replace]
    after = events[i_replace:]
    dir_opens = [e for e in after if e[0] == "open" and e[1] == tmp_path]
    assert dir_opens
    assert ("fsync", dir_opens[0][3]) in after[after.index(dir_opens[0]) :]
    assert [p.name for p in tmp_path.iterdir()] == ["model.satchel"]


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
@pytest.mark.parametrize("existing", [True, False], ids=["replace-old", "new-file"])
def test_spec_7_1_failure_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, existing: bool
) -> None:
    target = tmp_path / "f.satchel"
    if existing:
        satchel.save({"old": np.arange(4)}, target)
    before = target.read_bytes() if existing else None
    real_write = os.write

    def fail(*args: Any) -> Any:
        if step == "write" and len(memoryview(args[1])) > 16:
            real_write(args[0], memoryview(args[1])[:16])  # a partial write, then the disk fills
        raise OSError(28, f"injected failure in os.{step}")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError, match="injected"):
        satchel.save({"new": np.ones(1000)}, target)
    monkeypatch.undo()
    if existing:
        assert target.read_bytes() == before
        assert satchel.load(target)["old"].tolist() == [0, 1, 2, 3]
        assert [p.name for p in tmp_path.iterdir()] == ["f.satchel"]
    else:
        assert list(tmp_path.iterdir()) == []


def test_spec_7_1_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(satchel.SatchelFileNotFoundError, match="does not exist"):
        satchel.save({"a": np.zeros(1)}, tmp_path / "nope" / "f.satchel")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spec_7_2_large_tensors_written_from_their_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, framework: str
) -> None:
    big: Any = np.arange(1 << 19, dtype=np.float32)  # 2 MiB: above any batching threshold
    address = big.ctypes.data
    if framework == "torch":
        big = torch.from_numpy(big)
        address = big.data_ptr()
    writes: list[tuple[int, int]] = []
    real_write = os.write

    def spy_write(fd: int, buf: Any) -> int:
        view = np.frombuffer(buf, dtype=np.uint8)
        writes.append((view.ctypes.data if view.size else 0, view.size))
        return real_write(fd, buf)

    monkeypatch.setattr(os, "write", spy_write)
    satchel.save({"big": big, "small": np.zeros(3)}, tmp_path / "f")
    monkeypatch.undo()
    assert (address, 1 << 21) in writes
    np.testing.assert_array_equal(np.asarray(satchel.load(tmp_path / "f")["big"]), np.asarray(big))


def test_every_spec_clause_has_its_test() -> None:
    """SPEC.md's numbered clauses, parsed from the document, each have a ``test_spec_<a>_<b>_*``
    test somewhere in tests/, in order, and no test names a clause that does not exist."""
    import re

    root = Path(__file__).resolve().parent
    spec = (root.parent / "SPEC.md").read_text(encoding="utf-8")
    clauses = re.findall(r"^- \*\*(\d+)\.(\d+)\*\*", spec, flags=re.M)
    assert clauses, "SPEC.md has no numbered clauses"
    numbers = [(int(a), int(b)) for a, b in clauses]
    assert numbers == sorted(numbers), "SPEC.md clauses are out of order"
    tested: set[tuple[int, int]] = set()
    for p in root.glob("test_*.py"):
        for a, b in re.findall(r"^def test_spec_(\d+)_(\d+)_", p.read_text(), flags=re.M):
            tested.add((int(a), int(b)))
    missing = [f"{a}.{b}" for a, b in numbers if (a, b) not in tested]
    assert not missing, f"SPEC clauses without a test_spec_* test: {missing}"
    unknown = sorted(f"{a}.{b}" for a, b in tested - set(numbers))
    assert not unknown, f"test_spec_* tests for clauses SPEC.md lacks: {unknown}"
