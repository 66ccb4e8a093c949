"""GGUF without ``gguf``: the gguf-py fixture, a test writer for every type, hostile headers.

tests/fixtures/gguf/mlp.gguf was written by gguf 0.19.0; its ``.expected.json`` holds what
``gguf.GGUFReader`` returned. Other files come from ``gguf_file`` below, a small writer that
follows docs/formats.md#gguf byte for byte, so each hostile case changes exactly one field.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fixture_truth
import satchel
from satchel.formats import gguf as gguf_reader

try:  # tests/ as a package or as a plain folder on sys.path
    from . import hostile_cases as hc
except ImportError:
    import hostile_cases as hc

FIXTURE = fixture_truth.FIXTURES / "gguf" / "mlp.gguf"
CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
TYPE_NAMES = {"UINT8": 0, "INT8": 1, "UINT16": 2, "INT16": 3, "UINT32": 4, "INT32": 5,
              "FLOAT32": 6, "BOOL": 7, "STRING": 8, "ARRAY": 9, "UINT64": 10, "INT64": 11,
              "FLOAT64": 12}  # fmt: skip
DENSE = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
         28: np.float64, 30: ml_dtypes.bfloat16}  # fmt: skip


# -- a test writer ------------------------------------------------------------------------------
class Raw(bytes):
    """Value bytes written verbatim (to forge one field)."""


def value_bytes(vtype: int, v: Any, order: str = "<") -> bytes:
    if isinstance(v, Raw):
        return bytes(v)
    if vtype == 8:
        raw = v if isinstance(v, bytes) else v.encode()
        return struct.pack(order + "Q", len(raw)) + raw
    if vtype == 9:
        etype, items = v
        body = b"".join(value_bytes(etype, x, order) for x in items)
        return struct.pack(order + "IQ", etype, len(items)) + body
    return struct.pack(order + CODES[vtype], v)


def gguf_file(
    kvs: list[tuple[str, int, Any]],
    tensors: list[tuple[str, int, tuple[int, ...], bytes]],
    *,
    order: str = "<",
    version: int = 3,
    alignment: int = 32,
    offsets: list[int] | None = None,
    counts: tuple[int, int] | None = None,
    tail: bytes = b"",
) -> bytes:
    """A GGUF image: ``tensors`` are (name, ggml_type, numpy shape, raw bytes)."""
    n_t, n_kv = counts or (len(tensors), len(kvs))
    out = bytearray(b"GGUF" + struct.pack(order + "IQQ", version, n_t, n_kv))
    for key, vtype, v in kvs:
        out += value_bytes(8, key, order) + struct.pack(order + "I", vtype)
        out += value_bytes(vtype, v, order)
    pos, auto = 0, []
    for _, _, _, raw in tensors:
        auto.append(pos)
        pos += len(raw) + (-len(raw) % alignment)
    for (name, gtype, shape, _), off in zip(tensors, offsets or auto, strict=True):
        out += value_bytes(8, name, order) + struct.pack(order + "I", len(shape))
        out += b"".join(struct.pack(order + "Q", n) for n in reversed(shape))
        out += struct.pack(order + "IQ", gtype, off)
    out += b"\0" * (-len(out) % alignment)
    for _, _, _, raw in tensors:
        out += raw + b"\0" * (-len(raw) % alignment)
    return bytes(out) + tail


def put(tmp_path: Path, blob: bytes, name: str = "m") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def arr_bytes(a: np.ndarray[Any, Any], order: str = "<") -> bytes:
    return a.astype(a.dtype.newbyteorder(order)).tobytes()


def small() -> bytes:
    """Two tensors whose sizes are multiples of 32: no padding after the last one."""
    w = np.arange(16, dtype="<f4").reshape(2, 8)
    return gguf_file(
        [("general.name", 8, "t"), ("n", 4, 7)],
        [("w", 0, (2, 8), w.tobytes()), ("b", 26, (8,), np.arange(8, dtype="<i4").tobytes())],
    )


# -- ground truth -------------------------------------------------------------------------------
def test_fixture_matches_gguf_reader() -> None:
    if not FIXTURE.exists():
        pytest.fail(f"fixture {FIXTURE} is not present")
    doc = json.loads(FIXTURE.with_name("mlp.gguf.expected.json").read_text())
    with np.load(FIXTURE.with_name("mlp.gguf.expected.npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    got = satchel.load(FIXTURE)
    root = doc["root"]
    assert list(got) == [item["key"] for item in root["items"]] == ["fields", "tensors"]
    fields = root["items"][0]["value"]["items"]
    assert list(got["fields"]) == [f["key"] for f in fields]  # file order, header first
    for f in fields:
        node = f["value"]
        value = got["fields"][f["key"]]
        assert value == node["value"], f["key"]
        kind = node["types"][0]
        want_type = {"STRING": str, "ARRAY": list, "FLOAT32": float, "BOOL": bool}.get(kind, int)
        assert type(value) is want_type, f["key"]
    tensors = root["items"][1]["value"]["items"]
    assert list(got["tensors"]) == [t["key"] for t in tensors]
    for t in tensors:
        node, arr = t["value"], got["tensors"][t["key"]]
        want = arrays[node["npz"]]
        assert arr.dtype.name == node["dtype"] == want.dtype.name
        assert list(arr.shape) == node["shape"] == list(reversed(node["ne"]))
        assert arr.nbytes == node["n_bytes"] and arr.tobytes() == want.tobytes(), t["key"]
    assert doc["data_offset"] % doc["alignment"] == 0


def test_fixture_tensors_are_views_of_the_file() -> None:
    if not FIXTURE.exists():
        pytest.fail(f"fixture {FIXTURE} is not present")
    doc = json.loads(FIXTURE.with_name("mlp.gguf.expected.json").read_text())
    raw = gguf_reader.read(FIXTURE)
    mapped = raw["tensors"]["fc0.weight"].storage.data
    assert mapped.base is not None  # a slice of the mapped file, not a copy
    blob = FIXTURE.read_bytes()
    for t in doc["root"]["items"][1]["value"]["items"]:
        ref = raw["tensors"][t["key"]]
        start = t["value"]["data_offset"]
        assert ref.storage.data.tobytes() == blob[start : start + t["value"]["n_bytes"]]


# -- every value type, every dense tensor type, quantised blocks, big-endian, v2 ----------------
KVS: list[tuple[str, int, Any]] = [
    ("u8", 0, 255), ("i8", 1, -128), ("u16", 2, 65535), ("i16", 3, -32768), ("u32", 4, 2**32 - 1),
    ("i32", 5, -(2**31)), ("f32", 6, 0.5), ("bool", 7, 1), ("str", 8, "héllo"),
    ("u64", 10, 2**64 - 1), ("i64", 11, -(2**63)), ("f64", 12, -1.25),
    ("arr_i32", 9, (5, [1, -2, 3])), ("arr_str", 9, (8, ["a", "", "ü"])),
    ("arr_bool", 9, (7, [1, 0])), ("arr_f64", 9, (12, [1.5])), ("empty", 9, (4, [])),
    ("nested", 9, (9, [(4, [1, 2]), (8, ["x"])])),
]  # fmt: skip
WANT_KV = {"bool": True, "arr_i32": [1, -2, 3], "arr_str": ["a", "", "ü"],
           "arr_bool": [True, False], "arr_f64": [1.5], "empty": [],
           "nested": [[1, 2], ["x"]]}  # fmt: skip


def every_type_file(order: str = "<", version: int = 3) -> tuple[bytes, dict[str, Any]]:
    rng = np.random.default_rng(0)
    tensors, want = [], {}
    for gtype, np_type in DENSE.items():
        a = rng.integers(0, 256, size=3 * 5 * np.dtype(np_type).itemsize, dtype=np.uint8)
        a = a.view(np_type).reshape(3, 5)  # arbitrary bit patterns: NaN payloads included
        tensors.append((f"t{gtype}", gtype, (3, 5), arr_bytes(a, order)))
        want[f"t{gtype}"] = a
    q8 = rng.integers(0, 256, size=2 * 34, dtype=np.uint8)
    tensors.append(("q8", 8, (2, 32), q8.tobytes()))
    tensors.append(("scalar", 0, (), arr_bytes(np.array(2.5, "<f4"), order)))
    want["scalar"] = np.array(2.5, np.float32)
    want["q8"] = q8.reshape(2, 34)
    kvs = [("general.alignment", 4, 64), *KVS]
    return gguf_file(kvs, tensors, order=order, version=version, alignment=64), want


@pytest.mark.parametrize(("order", "version"), [("<", 3), ("<", 2), (">", 3)])
def test_every_value_and_tensor_type(tmp_path: Path, order: str, version: int) -> None:
    blob, want = every_type_file(order, version)
    got = satchel.load(put(tmp_path, blob))
    fields = got["fields"]
    assert fields["GGUF.version"] == version and fields["general.alignment"] == 64
    for key, _, v in KVS:
        assert fields[key] == WANT_KV.get(key, v), key
    for name, a in want.items():
        if name == "q8":
            q = got["tensors"]["q8"]
            assert q["ggml_type"] == "Q8_0" and q["shape"] == (2, 32)
            assert q["blocks"].dtype == np.uint8 and q["blocks"].shape == (2, 34)
            assert q["blocks"].tobytes() == a.tobytes()  # raw blocks, file byte order
            continue
        g = got["tensors"][name]
        assert g.dtype == a.dtype and g.shape == a.shape, name
        assert g.tobytes() == a.tobytes(), name


def test_loads_as_torch_and_opens_lazily(tmp_path: Path) -> None:
    import torch

    path = put(tmp_path, every_type_file()[0])
    got = satchel.load(path, framework="torch")
    assert got["tensors"]["t30"].dtype == torch.bfloat16
    with satchel.open(path) as f:
        assert len(f) == len(DENSE) + 2
        name = next(k for k in f if k.endswith("t28"))
        assert f.info(name).shape == (3, 5) and f[name].dtype == np.float64


def test_detection_ignores_extensions(tmp_path: Path) -> None:
    from satchel.formats import detect

    for alias in ("model.safetensors", "x.npy", "noext"):
        assert detect(put(tmp_path, small(), alias)) == "gguf"


# -- hostile inputs (docs/formats.md#hostile-numbers, N1-N9) -------------------------------------
def refuse(tmp_path: Path, blob: bytes, match: str) -> None:
    path = put(tmp_path, blob)
    with pytest.raises(satchel.SatchelError) as info:
        gguf_reader.read(path)
    assert type(info.value) is satchel.FormatError, repr(info.value)
    assert str(path) in str(info.value)
    assert match in str(info.value), str(info.value)
    with pytest.raises(satchel.FormatError):
        satchel.load(path)


F32x8 = np.zeros(8, "<f4").tobytes()
ONE = [("w", 0, (8,), F32x8)]
CASES: dict[str, tuple[bytes, str]] = {
    "bad magic": (b"GGUG" + small()[4:], "magic"),
    "version 1": (gguf_file([], [], version=1), "version 1"),
    "version 4": (gguf_file([], [], version=4), "version 4"),
    "huge tensor count": (gguf_file([], [], counts=(2**63, 0)), "tensor_count"),
    "huge kv count": (gguf_file([], [], counts=(0, 2**40)), "kv_count"),
    "more tensors than listed": (gguf_file([], ONE, counts=(2, 0)), "truncated"),
    "huge key length": (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**64 - 1) + b"k" * 16, "of key"),
    "huge string value": (gguf_file([("s", 8, Raw(b"\xff" * 8 + b"x"))], []), "metadata 's'"),
    "huge array count": (gguf_file([("a", 9, Raw(struct.pack("<IQ", 5, 2**64 - 1)))], []), "count"),
    "huge string array": (gguf_file([("a", 9, Raw(struct.pack("<IQ", 8, 2**60)))], []), "count"),
    "deep arrays": (
        gguf_file([("a", 9, Raw(struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0)))], []),
        "deeper",
    ),
    "unknown value type": (gguf_file([("k", 13, Raw(b"\0" * 8))], []), "unknown value type 13"),
    "unknown element type": (gguf_file([("a", 9, (13, []))], []), "unknown element type 13"),
    "bool 2": (gguf_file([("b", 7, Raw(b"\x02"))], []), "bool"),
    "bool array 2": (
        gguf_file([("b", 9, Raw(struct.pack("<IQ", 7, 2) + b"\x01\x02"))], []),
        "bool",
    ),
    "bad utf-8 key": (gguf_file([(b"\xff\xfe", 4, 1)], []), "UTF-8"),  # type: ignore[list-item]
    "duplicate key": (gguf_file([("k", 4, 1), ("k", 4, 2)], []), "appears twice"),
    "duplicate tensor": (gguf_file([], [("w", 0, (8,), F32x8)] * 2), "listed twice"),
    "five dims": (gguf_file([], [("w", 0, (1, 1, 1, 1, 8), F32x8)]), "dimensions"),
    "ne overflow": (gguf_file([], [("w", 0, (2**32, 2**32), F32x8)]), "overflow"),
    "ne 2**63": (gguf_file([], [("w", 0, (2**63,), F32x8)]), "overflow"),
    "big product": (gguf_file([], [("w", 0, (2**31, 2**31), F32x8)]), "truncated"),
    "unknown ggml type": (gguf_file([], [("w", 31, (8,), F32x8)]), "unknown ggml_type 31"),
    "ggml type 2**32-1": (gguf_file([], [("w", 2**32 - 1, (8,), F32x8)]), "unknown ggml_type"),
    "block size": (gguf_file([], [("q", 8, (33,), b"\0" * 34)]), "block size 32"),
    "alignment 0": (gguf_file([("general.alignment", 4, 0)], ONE), "power of two"),
    "alignment 3": (gguf_file([("general.alignment", 4, 3)], ONE), "power of two"),
    "alignment 2**31": (gguf_file([("general.alignment", 4, 2**31)], []), "power of two"),
    "alignment u64": (gguf_file([("general.alignment", 10, 32)], ONE), "uint32"),
    "alignment str": (gguf_file([("general.alignment", 8, "32")], ONE), "uint32"),
    "offset unaligned": (gguf_file([], ONE * 1, offsets=[4]), "offset is 4, expected 0"),
    "offset gap": (gguf_file([], [ONE[0], ("v", 0, (8,), F32x8)], offsets=[0, 64]), "expected 32"),
    "offsets overlap": (
        gguf_file([], [ONE[0], ("v", 0, (8,), F32x8)], offsets=[0, 0]),
        "expected 32",
    ),
    "offset past end": (gguf_file([], ONE, offsets=[2**63]), "expected 0"),
    "data truncated": (gguf_file([], ONE)[:-1], "truncated"),
    "trailing bytes": (gguf_file([], ONE, tail=b"PK\x05\x06"), "unexplained"),
    "trailing after header": (gguf_file([], [], tail=b"\0" * 40), "unexplained"),
}


@pytest.mark.parametrize("label", sorted(CASES))
def test_hostile_headers_are_format_errors(tmp_path: Path, label: str) -> None:
    blob, match = CASES[label]
    refuse(tmp_path, blob, match)


def test_every_truncation_is_a_format_error(tmp_path: Path) -> None:
    blob = small()
    for n in range(len(blob)):
        buf = np.frombuffer(blob[:n], dtype=np.uint8)
        with pytest.raises(satchel.FormatError):
            gguf_reader.read_gguf(buf, where=f"cut{n}")
    assert gguf_reader.read_gguf(np.frombuffer(blob, dtype=np.uint8), where="whole")


def test_fixture_truncations_and_flips_raise_only_satchel_errors() -> None:
    if not FIXTURE.exists():
        pytest.fail(f"fixture {FIXTURE} is not present")
    blob = FIXTURE.read_bytes()
    # The last tensor ends at byte 27048; only its trailing padding may be cut.
    cuts = [*range(0, 1024), *range(1024, 27048, 97), 27047]
    for n in cuts:
        with pytest.raises(satchel.FormatError):
            gguf_reader.read_gguf(np.frombuffer(blob[:n], dtype=np.uint8), where=f"cut{n}")
    rng = random.Random(3)
    refused = 0
    for _ in range(2000):
        mutant = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            mutant[rng.randrange(384)] = rng.randrange(256)  # header and tensor infos
        try:
            gguf_reader.read_gguf(np.frombuffer(bytes(mutant), dtype=np.uint8), where="m")
        except satchel.SatchelError:
            refused += 1
    assert refused > 0


def test_worst_cases_allocate_nothing_large(tmp_path: Path) -> None:
    """Huge counts, lengths and shapes are refused under RLIMIT_AS = 1 GiB, quickly."""
    blobs = [
        b"GGUF" + struct.pack("<IQQ", 3, 2**64 - 1, 2**64 - 1),
        b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**62) + b"k" * 64,
        gguf_file([("a", 9, Raw(struct.pack("<IQ", 12, 2**64 - 1)))], []),
        gguf_file([], [("w", 0, (2**31, 2**31), F32x8)]),
        gguf_file([], [("w", 0, (2**62,), F32x8)]),
        gguf_file([("general.alignment", 4, 1 << 20)], ONE, alignment=32),
    ]
    jobs = [(put(tmp_path, b, f"w{i}"), {}) for i, b in enumerate(blobs)]
    report = hc.run_confined(jobs, limit=1 << 30, timeout=120)
    assert "crash" not in report, report
    for r in report["results"]:
        assert r["outcome"] == "rejected" and r["error"] == "FormatError", r
        assert r["seconds"] < 2.0, r
    assert report["max_rss"] < 300 << 20, report["max_rss"]
