"""NumPy ``.npy`` / ``.npz`` without ``np.load``: ground truth, differential and hostile tests.

The fixtures in tests/fixtures/numpy were written by numpy 2.4.6; their ``.expected.json`` /
``.expected.npz`` record what ``np.load`` returned. Every other file here is built in the test
(np.save / np.savez for differential checks, raw bytes for hostile headers).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fixture_truth
import satchel
from satchel.formats import detect
from satchel.formats import npz as npz_reader
from satchel.formats import numpy as npy_reader

try:  # tests/ as a package or as a plain folder on sys.path
    from . import hostile_cases as hc
except ImportError:
    import hostile_cases as hc

FIXTURES = fixture_truth.FIXTURES / "numpy"
NPY = ["w0.npy", "w0_fortran.npy", "big_endian.npy", "scalar.npy", "structured.npy"]
NPZ = ["mlp.npz", "mlp_compressed.npz"]


def fixture(name: str) -> Path:
    p = FIXTURES / name
    if not p.exists():
        pytest.fail(f"fixture {p} is not present")
    return p


def truth(name: str) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    doc = json.loads(fixture(f"{name}.expected.json").read_text())
    with np.load(fixture(f"{name}.expected.npz"), allow_pickle=False) as z:
        return doc, {k: z[k] for k in z.files}


def native(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Values in native byte order; records repacked, since padding bytes carry no value."""
    from numpy.lib import recfunctions

    out = a.astype(a.dtype.newbyteorder("="))
    return recfunctions.repack_fields(out) if out.dtype.names else out


def assert_same_array(got: Any, want: np.ndarray[Any, Any], where: str) -> None:
    """Same dtype (in native byte order), shape and bytes; bitwise, so NaN payloads count."""
    assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__}"
    assert got.dtype == want.dtype.newbyteorder("="), f"{where}: {got.dtype} != {want.dtype}"
    got, want = native(got), native(want)
    assert got.dtype == want.dtype, f"{where}: {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{where}: {got.shape} != {want.shape}"
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), where


def assert_node(got: Any, node: dict[str, Any], arrays: dict[str, Any], where: str) -> None:
    assert node["kind"] == "tensor", where
    assert_same_array(got, arrays[node["npz"]], where)
    assert got.dtype.name == node["dtype"], where
    assert list(got.shape) == node["shape"], where
    fortran = bool(got.flags.f_contiguous and not got.flags.c_contiguous)
    assert fortran == node["fortran_order"], where


# -- ground truth -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NPY)
def test_npy_fixture_matches_np_load(name: str) -> None:
    doc, arrays = truth(name)
    got = satchel.load(fixture(name))
    assert_node(got, doc["root"], arrays, name)
    if "descr" in doc["root"]:
        assert json.loads(json.dumps(got.dtype.descr)) == doc["root"]["descr"]


@pytest.mark.parametrize("name", NPZ)
def test_npz_fixture_matches_np_load(name: str) -> None:
    doc, arrays = truth(name)
    got = satchel.load(fixture(name))
    root = doc["root"]
    assert isinstance(got, dict) and root["kind"] == "dict"
    assert list(got) == [item["key"] for item in root["items"]]  # archive order
    for item in root["items"]:
        assert item["key_type"] == "str"
        assert_node(got[item["key"]], item["value"], arrays, f"{name}:{item['key']}")


def test_object_array_fixture_is_refused_without_unpickling() -> None:
    doc = json.loads(fixture("object_pickle.npy.expected.json").read_text())
    assert doc["expect"] == "reject" and doc["error_class"] == "unsafe-content"
    with pytest.raises(satchel.UnsafeContentError, match="pickle"):
        satchel.load(fixture("object_pickle.npy"))


def test_detection_uses_content_not_extension(tmp_path: Path) -> None:
    for name, fmt in (("w0.npy", "numpy"), ("mlp.npz", "npz")):
        for alias in ("weights.bin", "model.pt", "noext"):
            dest = tmp_path / f"{fmt}-{alias}"
            shutil.copy(fixture(name), dest)
            assert detect(dest) == fmt
    renamed = tmp_path / "really.npy"
    renamed.write_bytes(b"GGUF" + b"\0" * 40)
    assert detect(renamed) != "numpy"


def test_open_lists_and_reads_members() -> None:
    _, arrays = truth("mlp.npz")
    with satchel.open(fixture("mlp.npz")) as f:
        assert f.keys() == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert f.info("0.weight").shape == (20, 256)
        assert_same_array(f["2.weight"], arrays["2.weight"], "2.weight")


def test_fortran_and_big_endian_load_as_torch_tensors() -> None:
    import torch

    for name in ("w0_fortran.npy", "big_endian.npy", "scalar.npy"):
        _, arrays = truth(name)
        got = satchel.load(fixture(name), framework="torch")
        want = torch.from_numpy(np.array(native(arrays["<root>"]), order="C"))
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, name
        assert got.shape == want.shape and torch.equal(got, want), name


def test_arrays_are_views_of_the_file_not_copies() -> None:
    raw = npy_reader.read(fixture("w0.npy"))
    assert isinstance(raw, satchel._read.refs.ArrayRef)
    assert raw.storage.data.base is not None  # a slice of the mapped file


# -- differential: whatever np.save writes, satchel reads like np.load --------------------------
DTYPES = [
    "<f4", ">f4", "<f8", ">f8", "<f2", ">f2", "|b1", "|u1", "|i1", "<i2", ">u2", "<i4", ">i4",
    "<u8", ">i8", "<c8", ">c8", ">c16", "|S5", "<U3", ">U2", "<M8[ns]", ">m8[s]", "|V6",
    "<f4,>i2", "u1,<f8,(2,3)>i4",
]  # fmt: skip


def _values(dt: np.dtype[Any], shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * dt.itemsize)
    if dt.kind == "U":  # only valid code points can be stored
        return np.array(np.random.default_rng(seed).choice(["", "a", "é€", "zz"], size=shape), dt)
    return raw.astype(np.uint8).view(dt).reshape(shape)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    descr=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 4), max_size=3).map(tuple),
    fortran=st.booleans(),
    version=st.sampled_from([None, (1, 0), (2, 0), (3, 0)]),
    seed=st.integers(0, 2**16),
)
def test_differential_against_np_load(  # noqa: PLR0917 - hypothesis passes arguments by position
    tmp_path: Path,
    descr: str,
    shape: tuple[int, ...],
    fortran: bool,
    version: tuple[int, int] | None,
    seed: int,
) -> None:
    arr = _values(np.dtype(descr), shape, seed)
    if fortran:
        arr = np.asfortranarray(arr)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    path = tmp_path / "x"
    path.write_bytes(buf.getvalue())
    want = np.load(path)
    got = satchel.load(path)
    assert_same_array(got, want, descr)
    assert got.flags.f_contiguous == want.flags.f_contiguous


def test_structured_with_padding_and_titles(tmp_path: Path) -> None:
    dt = np.dtype({"names": ["a", "b"], "formats": ["<i2", ">f8"], "offsets": [0, 8],
                   "itemsize": 24, "titles": ["first", None]})  # fmt: skip
    arr = np.frombuffer(np.random.default_rng(3).bytes(5 * dt.itemsize), dtype=dt)
    np.save(tmp_path / "s.npy", arr)
    assert_same_array(satchel.load(tmp_path / "s.npy"), np.load(tmp_path / "s.npy"), "padded")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.from_regex(r"[a-z][a-z0-9_./]{0,8}", fullmatch=True), max_size=5, unique=True
    ),
    compressed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_npz_differential(tmp_path: Path, names: list[str], compressed: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = {n: rng.standard_normal((i + 1, 2)).astype("<f4") for i, n in enumerate(names)}
    path = tmp_path / "a"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)  # type: ignore[operator]
    path = tmp_path / "a.npz"
    got = satchel.load(path)
    with np.load(path) as want:
        assert list(got) == want.files
        for k in want.files:
            assert_same_array(got[k], want[k], k)


# -- hostile inputs (docs/formats.md#hostile-input: P10, P12, N3, N10) ----------------------------
def npy(header: str, data: bytes = b"", *, version: tuple[int, int] = (1, 0)) -> bytes:
    text = header.encode("utf-8" if version[0] == 3 else "latin-1")
    size = len(text).to_bytes(2 if version[0] == 1 else 4, "little")
    return b"\x93NUMPY" + bytes(version) + size + text + data


def write(tmp_path: Path, blob: bytes, name: str = "h") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def rejects(path: Path, cls: type[Exception] = satchel.FormatError) -> str:
    """Both the reader and ``satchel.load`` refuse ``path`` with exactly ``cls``."""
    with pytest.raises(satchel.SatchelError) as info:
        npy_reader.read(path)
    assert type(info.value) is cls, repr(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(cls):
        satchel.load(path)
    return str(info.value)


GOOD = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"


def hdr(descr: str = "'<f4'", order: str = "False", shape: str = "(1,)") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}}}"


BIG = "4611686018427387904"  # 2**62
BAD_HEADERS = {
    "eval": hdr(descr="__import__('os').system('touch CANARY')"),
    "call": hdr(order="bool(1)"),
    "missing key": "{'descr': '<f4', 'shape': (1,)}",
    "extra key": hdr()[:-1] + ", 'x': 1}",
    "duplicate key": "{'descr': '<f4', " + hdr()[1:],
    "negative dim": hdr(shape="(-1,)"),
    "bool dim": hdr(shape="(True,)"),
    "float dim": hdr(shape="(1.5,)"),
    "list shape": hdr(shape="[1]"),
    "int order": hdr(order="0"),
    "int descr": hdr(descr="4"),
    "unknown descr": hdr(descr="'<q9'"),
    "expression": hdr(descr="[('a', '<f4', (2**62,))]"),
    "huge subarray": hdr(descr=f"[('a', '<f4', ({BIG}, 8))]"),
    "none": hdr(descr="None"),
    "not a dict": "[1, 2]",
    "text after": GOOD + " 1",
    "unclosed": hdr(descr="'<f4"),
    "bad escape": hdr(descr="'<f4\\q'"),
    "long int": hdr(shape="(" + "9" * 40 + ",)"),
    "deep": hdr(descr="[" * 200 + "]" * 200),
    "overflowing product": hdr(shape=f"({BIG}, 8)"),
    "too many dims": hdr(shape="(" + "1," * 65 + ")"),
    "zero itemsize": hdr(descr="'|V0'", shape="(3,)"),
    "empty": "",
}


@pytest.mark.parametrize("label", sorted(BAD_HEADERS))
def test_headers_outside_the_grammar_are_refused(tmp_path: Path, label: str) -> None:
    canary = tmp_path / "CANARY"
    header = BAD_HEADERS[label].replace("CANARY", str(canary))
    rejects(write(tmp_path, npy(header, b"\0" * 8)))
    assert not canary.exists()


def test_object_dtype_anywhere_is_unsafe_and_never_unpickled(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    payload = b"cposix\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR."
    for descr in ("'|O'", "[('a', '<f4'), ('b', '|O')]", "[('n', [('deep', '|O')])]"):
        header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"
        msg = rejects(write(tmp_path, npy(header, payload)), satchel.UnsafeContentError)
        assert "pickle" in msg
    assert not canary.exists()


@pytest.mark.parametrize(
    ("label", "blob"),
    [
        ("bad magic", b"\x93NUMPX\x01\x00" + b"\x10\x00" + b" " * 16),
        ("version 4.0", npy(GOOD, b"\0" * 8, version=(4, 0))),
        ("version 1.1", npy(GOOD, b"\0" * 8, version=(1, 1))),
        ("v2 header_len 4 GiB", b"\x93NUMPY\x02\x00\xff\xff\xff\xff"),
        ("v3 header_len 4 GiB", b"\x93NUMPY\x03\x00\xff\xff\xff\xff" + b"{" * 30),
        ("header past end", b"\x93NUMPY\x01\x00\x00\x01" + b"{}"),
        ("over the cap", npy("{" + " " * 10_000 + "}")),
        ("latin1 in v3", npy(GOOD, b"\0" * 8, version=(3, 0)).replace(b"<f4", b"<\xe94")),
        ("short data", npy(GOOD, b"\0" * 7)),
        ("trailing bytes", npy(GOOD, b"\0" * 9)),
        ("polyglot tail", npy(GOOD, b"\0" * 8 + b"PK\x05\x06" + b"\0" * 18)),
    ],
)
def test_bad_preambles_and_sizes(tmp_path: Path, label: str, blob: bytes) -> None:
    if label == "bad magic":  # not sniffed as .npy at all: the native reader refuses it
        with pytest.raises(satchel.FormatError):
            npy_reader.read(write(tmp_path, blob))
        with pytest.raises(satchel.SatchelError):
            satchel.load(write(tmp_path, blob))
        return
    msg = rejects(write(tmp_path, blob))
    if "cap" in label or "4 GiB" in label:
        assert "10000" in msg


def test_a_latin1_v1_header_and_a_utf8_v3_header(tmp_path: Path) -> None:
    arr = np.zeros(2, dtype=[("é", "<f4")])
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=(3, 0))
    got = satchel.load(write(tmp_path, buf.getvalue()))
    assert got.dtype.names == ("é",)
    header = "{'descr': [('\\xe9', '<i2')], 'fortran_order': False, 'shape': (1,), }"
    assert satchel.load(write(tmp_path, npy(header, b"\1\0"))).dtype.names == ("é",)


@pytest.mark.parametrize("name", ["scalar.npy", "big_endian.npy", "structured.npy"])
def test_every_truncation_is_a_format_error(tmp_path: Path, name: str) -> None:
    blob = fixture(name).read_bytes()
    for n in range(len(blob)):
        with pytest.raises(satchel.FormatError):
            npy_reader.read_npy(np.frombuffer(blob[:n], dtype=np.uint8), where=f"cut{n}")
    path = write(tmp_path, blob[:40])
    with pytest.raises(satchel.FormatError):
        satchel.load(path)


def test_random_byte_flips_raise_only_satchel_errors() -> None:
    blob = bytearray(fixture("structured.npy").read_bytes())
    rng = random.Random(7)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(3000):
        mutant = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            mutant[rng.randrange(128)] = rng.randrange(256)  # the header region
        try:
            npy_reader.read_npy(np.frombuffer(bytes(mutant), dtype=np.uint8), where="m")
            outcomes["ok"] += 1
        except satchel.SatchelError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def _npz(members: dict[str, bytes], *, compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_npz_members_must_all_be_npy(tmp_path: Path) -> None:
    good = npy(GOOD, b"\0" * 8)
    path = write(tmp_path, _npz({"a.npy": good, "evil.pkl": b"\x80\x04."}), "x.npz")
    with pytest.raises(satchel.FormatError, match=r"evil\.pkl"):
        satchel.load(path)
    path = write(
        tmp_path,
        _npz(
            {
                "a.npy": good,
                "o.npy": npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", b"N."),
            }
        ),
        "o.npz",
    )
    with pytest.raises(satchel.UnsafeContentError, match=r"o\.npy"):
        satchel.load(path)


def test_npz_crc_is_checked_when_verifying(tmp_path: Path) -> None:
    blob = bytearray(_npz({"a.npy": npy(GOOD, b"\1" * 8)}))
    blob[blob.index(b"\1" * 8)] ^= 0xFF
    path = write(tmp_path, bytes(blob), "c.npz")
    with pytest.raises(satchel.FormatError, match="CRC"):
        satchel.load(path)
    assert satchel.load(path, verify=False)["a"].shape == (2,)


def test_npz_truncation_and_flips_raise_only_satchel_errors(tmp_path: Path) -> None:
    for compress in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        blob = _npz({"w.npy": npy(GOOD, b"\2" * 8), "b.npy": npy(GOOD, b"\3" * 8)},
                    compress=compress)  # fmt: skip
        for n in range(len(blob)):
            p = write(tmp_path, blob[:n])
            with pytest.raises(satchel.SatchelError):
                npz_reader.read(p)
        rng = random.Random(compress)
        for _ in range(300):
            mutant = bytearray(blob)
            mutant[rng.randrange(len(blob))] = rng.randrange(256)
            with contextlib.suppress(satchel.SatchelError):
                npz_reader.read(write(tmp_path, bytes(mutant)))


def test_worst_cases_allocate_nothing_large(tmp_path: Path) -> None:
    """Huge lengths and shapes are refused under RLIMIT_AS = 1 GiB, quickly, in a child."""
    blobs = [
        b"\x93NUMPY\x02\x00\xff\xff\xff\xff",
        npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }", b"\0" * 4),
        npy("{'descr': '<f8', 'fortran_order': True, 'shape': (4294967296, 4294967296), }"),
        npy("{'descr': '|V1099511627776', 'fortran_order': False, 'shape': (1,), }"),
        npy(hdr(descr="[('a', '<f4', (65536, 65536, 65536))]")),
        _npz({"big.npy": npy(hdr(shape="(1099511627776,)"))}),
    ]
    jobs = [(write(tmp_path, b, f"w{i}"), {}) for i, b in enumerate(blobs)]
    report = hc.run_confined(jobs, limit=1 << 30, timeout=120)
    assert "crash" not in report, report
    for r in report["results"]:
        assert r["outcome"] == "rejected" and r["error"] == "FormatError", r
        assert r["seconds"] < 2.0, r
    assert report["max_rss"] < 300 << 20, report["max_rss"]
