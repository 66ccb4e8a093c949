"""Round trips of every dtype, shape, layout and nesting satchel stores, and its refusals.

Values are compared bit for bit (``tobytes``), so NaN payloads and the sign of -0.0 count.
Everything is seeded (``derandomize=True``): a failure reproduces on every run.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import satchel

DTYPES = [
    np.dtype(t)
    for t in (
        np.bool_,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.float16,
        ml_dtypes.bfloat16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e5m2,
    )
]
# Plain NumPy dtypes that have a byte order (ml_dtypes types are always native).
SWAPPABLE = [d for d in DTYPES if d.itemsize > 1 and d.type.__module__ == "numpy"]
# np.float64 scalars are left out of the generated structures: np.float64 subclasses float and
# comes back as a Python float (see test_numpy_float64_scalar_keeps_its_type).
SCALAR_DTYPES = [d for d in DTYPES if d != np.dtype(np.float64)]

LOAD_MODES = [
    {},
    {"mmap": False},
    {"verify": False},
    {"mmap": False, "verify": False},
]

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


# -- comparison ----------------------------------------------------------------------------------
def native(dt: np.dtype[Any]) -> np.dtype[Any]:
    return dt.newbyteorder("=") if dt.byteorder == ">" else dt


def assert_same(got: Any, want: Any, where: str = "<root>") -> None:
    """``got`` (loaded) is ``want`` (saved): same types, same order, same bits."""
    if isinstance(want, np.ndarray):
        assert type(got) is np.ndarray, f"{where}: {type(got)}"
        assert got.dtype == native(want.dtype), f"{where}: {got.dtype} != {want.dtype}"
        assert got.dtype.byteorder in "=|", where
        assert got.shape == want.shape, f"{where}: {got.shape} != {want.shape}"
        expected = np.ascontiguousarray(want.astype(native(want.dtype)))
        assert got.tobytes() == expected.tobytes(), f"{where}: bytes differ"
    elif isinstance(want, np.generic):
        assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), f"{where}: bytes differ"
    elif isinstance(want, float):
        assert type(got) is float, f"{where}: {type(got)}"
        if math.isnan(want):
            assert math.isnan(got), f"{where}: {got!r} is not nan"
        else:
            assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got!r}"
    elif isinstance(want, dict):
        assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
        assert [(type(k), k) for k in got] == [(type(k), k) for k in want], f"{where}: keys"
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}.{i}")
    elif isinstance(want, (bytes, bytearray)):
        assert type(got) is bytes, f"{where}: {type(got)}"
        assert got == bytes(want), where
    else:
        assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
        assert got == want, f"{where}: {got!r} != {want!r}"


def roundtrip_all_modes(obj: Any, path: Path, **save_kw: Any) -> None:
    satchel.save(obj, path, **save_kw)
    for mode in LOAD_MODES:
        assert_same(satchel.load(path, **mode), obj)


# -- strategies ----------------------------------------------------------------------------------
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


def filled(draw: st.DrawFn, dt: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """A C-contiguous array of ``shape`` whose bytes are arbitrary (any NaN payload, -0.0...)."""
    n = math.prod(shape)
    if dt == np.dtype(np.bool_):
        bits = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        return np.array(bits, dtype=np.bool_).reshape(shape)
    raw = draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
    return np.frombuffer(bytearray(raw), dtype=np.uint8).view(dt).reshape(shape)


LAYOUTS = ("c", "step", "reverse", "transpose", "offset", "fortran", "bigendian")


@st.composite
def arrays(draw: st.DrawFn, dtype: np.dtype[Any] | None = None) -> np.ndarray[Any, Any]:
    """An array of any dtype and shape, C-contiguous or a strided view of a larger one."""
    dt = dtype if dtype is not None else draw(st.sampled_from(DTYPES))
    shape = draw(shapes)
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "step" and shape:
        base = filled(draw, dt, tuple(2 * n for n in shape))
        return base[tuple(slice(None, None, 2) for _ in shape)]
    if layout == "reverse" and shape:
        return filled(draw, dt, shape)[tuple(slice(None, None, -1) for _ in shape)]
    if layout == "transpose" and len(shape) >= 2:
        return filled(draw, dt, shape[::-1]).T
    if layout == "offset" and shape:
        return filled(draw, dt, (shape[0] + 2, *shape[1:]))[1:-1]
    if layout == "fortran":
        return np.asfortranarray(filled(draw, dt, shape))
    if layout == "bigendian" and dt in SWAPPABLE:
        return filled(draw, dt, shape).astype(dt.newbyteorder(">"))
    return filled(draw, dt, shape)


@st.composite
def numpy_scalars(draw: st.DrawFn) -> np.generic:
    dt = draw(st.sampled_from(SCALAR_DTYPES))
    scalar = filled(draw, dt, (1,))[0]
    assert isinstance(scalar, np.generic)
    return scalar


plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308]),
    st.text(max_size=12),
    st.binary(max_size=24),
)
keys = st.one_of(st.text(max_size=8), st.integers(min_value=-(10**20), max_value=10**20))


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(keys, children, max_size=4).map(OrderedDict),
    )


trees = st.recursive(st.one_of(plain, numpy_scalars(), arrays()), containers, max_leaves=12)


# -- round trips ---------------------------------------------------------------------------------
@settings(FUZZ, max_examples=150)
@given(tree=trees)
def test_random_structures_roundtrip_bitwise(tmp_path: Path, tree: Any) -> None:
    roundtrip_all_modes(tree, tmp_path / "tree.satchel")
    # load -> save -> load is the identity too (loaded arrays are views of one mapping)
    satchel.save(satchel.load(tmp_path / "tree.satchel"), tmp_path / "again.satchel")
    assert_same(satchel.load(tmp_path / "again.satchel"), tree)


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_every_dtype_every_layout_roundtrips(tmp_path: Path, dt: np.dtype[Any], data: Any) -> None:
    arr = data.draw(arrays(dtype=dt))
    path = tmp_path / "arr.satchel"
    roundtrip_all_modes(arr, path)
    roundtrip_all_modes({"a": arr, "n": [arr.copy(), None]}, path)


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_shapes_including_0d_and_zero_size(tmp_path: Path, dt: np.dtype[Any]) -> None:
    arrays = {}
    for shape in [(), (0,), (3, 0), (0, 2, 5), (1,), (7,), (2, 3), (2, 1, 3, 2)]:
        n = math.prod(shape)
        rng = np.random.default_rng(n)
        if dt == np.dtype(np.bool_):
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            arr = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8).view(dt)
        arrays[str(shape)] = arr.reshape(shape)
    roundtrip_all_modes({"x": arrays, "y": [a[...] for a in arrays.values()]}, tmp_path / "s")
    for lone in ("()", "(0,)", "(3, 0)"):  # alone in a file: 0-d, or an empty data section
        roundtrip_all_modes(arrays[lone], tmp_path / "lone")


def test_bits_that_matter_survive(tmp_path: Path) -> None:
    """Signalling/negative NaNs with payloads, -0.0, infinities, subnormals: bit-exact."""
    f64 = np.array(
        [0x7FF0000000000001, 0xFFF8000000000123, 0x8000000000000000, 0x7FF0000000000000, 1],
        dtype=np.uint64,
    ).view(np.float64)
    f32 = np.array([0x7F800001, 0xFFC00ABC, 0x80000000, 0xFF800000, 1], dtype=np.uint32).view(
        np.float32
    )
    f16 = np.array([0x7C01, 0xFE7F, 0x8000, 0x0001], dtype=np.uint16).view(np.float16)
    bf16 = np.array([0x7F81, 0xFFC1, 0x8000, 0x0001], dtype=np.uint16).view(ml_dtypes.bfloat16)
    e4m3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
    e5m2 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e5m2)
    c128 = f64[:4].view(np.complex128)
    obj = {"f64": f64, "f32": f32, "f16": f16, "bf16": bf16, "e4m3": e4m3, "e5m2": e5m2}
    obj["c128"] = c128
    obj["scalars"] = [f32[1], bf16[0], e5m2[255], np.complex64(complex(-0.0, math.inf))]
    roundtrip_all_modes(obj, tmp_path / "bits.satchel")


@pytest.mark.parametrize("dt", SWAPPABLE, ids=str)
def test_big_endian_comes_back_native_with_same_values(tmp_path: Path, dt: np.dtype[Any]) -> None:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 256, size=6 * dt.itemsize, dtype=np.uint8).view(dt).reshape(2, 3)
    be = arr.astype(dt.newbyteorder(">"))
    assert be.dtype.byteorder == ">"
    path = tmp_path / "be.satchel"
    satchel.save({"be": be, "view": be[:, ::-1], "zero_d": be[1, 2, ...]}, path)
    for mode in LOAD_MODES:
        got = satchel.load(path, **mode)
        for name, want in (("be", arr), ("view", arr[:, ::-1]), ("zero_d", arr[1, 2, ...])):
            assert got[name].dtype == dt and got[name].dtype.isnative
            assert got[name].tobytes() == np.ascontiguousarray(want).tobytes(), name
            assert np.array_equal(got[name], want, equal_nan=dt.kind in "fc"), name


def test_non_contiguous_views_of_one_numpy_array_roundtrip_and_share(tmp_path: Path) -> None:
    base = np.arange(120, dtype=np.float64).reshape(10, 12)
    views = {
        "base": base,
        "rows": base[2:7],
        "steps": base[1::3, ::2],
        "neg": base[::-1, ::-2],
        "T": base.T,
        "col": base[:, 5],
        "zero_d": base[3, 4, ...],
    }
    path = tmp_path / "views.satchel"
    satchel.save(views, path)
    got = satchel.load(path)
    for name, want in views.items():
        assert_same(got[name], want, name)
    got["base"][3, 4] = -1.0
    assert got["zero_d"] == -1.0
    assert got["T"][4, 3] == -1.0
    assert got["rows"][1, 4] == -1.0
    # One copy of the base is stored: the data section is the base's bytes only.
    assert data_section_size(path) == base.nbytes


@FUZZ
@given(data=st.data())
def test_random_views_of_one_base_share_after_load(tmp_path: Path, data: Any) -> None:
    dt = data.draw(st.sampled_from(DTYPES))
    base = filled(data.draw, dt, (6, 5))
    slicers = st.tuples(
        st.slices(6),
        st.slices(5),
        st.booleans(),  # transpose
    )
    views = []
    for rows, cols, transpose in data.draw(st.lists(slicers, min_size=1, max_size=4)):
        v = base[rows, cols]
        views.append(v.T if transpose else v)
    obj = {"views": views, "base": base} if data.draw(st.booleans()) else {"views": views}
    path = tmp_path / "v.satchel"
    satchel.save(obj, path)
    for mode in LOAD_MODES:
        got = satchel.load(path, **mode)
        assert_same(got, obj)
        for i, vi in enumerate(views):
            for j, vj in enumerate(views):
                want = np.shares_memory(vi, vj)
                assert np.shares_memory(got["views"][i], got["views"][j]) == want, (i, j)
    assert data_section_size(path) <= base.nbytes + 16


@st.composite
def raw_views(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], list[np.ndarray[Any, Any]]]:
    """Views of arbitrary dtype, byte offset and (negative) strides over one uint8 buffer."""
    size = draw(st.integers(16, 160))
    buf = np.frombuffer(bytearray(draw(st.binary(min_size=size, max_size=size))), np.uint8)
    views = []
    for _ in range(draw(st.integers(1, 5))):
        dt = draw(st.sampled_from([d for d in DTYPES if d != np.dtype(np.bool_)]))
        isz = dt.itemsize
        if isz > size:
            continue
        step = draw(st.integers(-3, 3).filter(bool)) * isz
        n = draw(st.integers(1, max(1, size // (abs(step)))))
        span = (n - 1) * abs(step) + isz
        if span > size:
            continue
        lo = draw(st.integers(0, size - span))
        offset = lo + (n - 1) * abs(step) if step < 0 else lo
        views.append(np.ndarray((n,), dtype=dt, buffer=buf, offset=offset, strides=(step,)))
    return buf, views


@FUZZ
@given(case=raw_views(), with_base=st.booleans())
def test_reinterpreting_views_of_one_buffer(tmp_path: Path, case: Any, with_base: bool) -> None:
    """Any dtype at any byte offset of one buffer, misaligned ones included: save, load, save."""
    buf, views = case
    obj: dict[str, Any] = {"views": views}
    if with_base:
        obj["base"] = buf
    path = tmp_path / "r.satchel"
    satchel.save(obj, path)
    for mode in LOAD_MODES:
        assert_same(satchel.load(path, **mode), obj)
    satchel.save(satchel.load(path), tmp_path / "again.satchel")
    assert_same(satchel.load(tmp_path / "again.satchel"), obj)
    as_torch = satchel.load(path, framework="torch")["views"]
    for got, want in zip(as_torch, views, strict=True):
        dense = torch.empty(got.shape, dtype=got.dtype).copy_(got)  # standard strides
        raw = dense.reshape(-1).view(torch.uint8).numpy().tobytes()
        assert raw == np.ascontiguousarray(want).tobytes()


def test_numpy_float64_scalar_keeps_its_type(tmp_path: Path) -> None:
    """Every other NumPy scalar comes back as itself; np.float64 should too (SPEC 3.6 'scalar')."""
    obj = {"f64": np.float64(1.5), "nan": np.float64("nan"), "f32": np.float32(1.5)}
    satchel.save(obj, tmp_path / "s.satchel")
    got = satchel.load(tmp_path / "s.satchel")
    assert type(got["f32"]) is np.float32
    assert type(got["f64"]) is np.float64, type(got["f64"])
    assert type(got["nan"]) is np.float64, type(got["nan"])


def test_numpy_views_reinterpreting_odd_byte_offsets_roundtrip(tmp_path: Path) -> None:
    """Two int16 views starting at odd byte offsets of one uint8 buffer (legal NumPy)."""
    raw = np.arange(20, dtype=np.uint8)
    x = raw[1:9].view(np.int16)
    y = raw[3:11].view(np.int16)
    path = tmp_path / "odd.satchel"
    satchel.save({"x": x, "y": y}, path)
    got = satchel.load(path)
    assert got["x"].tobytes() == x.tobytes()
    assert got["y"].tobytes() == y.tobytes()


@pytest.mark.parametrize("mmap", [True, False])
def test_resave_after_dropping_a_tensor_does_not_carry_its_bytes(
    tmp_path: Path, mmap: bool
) -> None:
    """Load a checkpoint, drop a tensor, save: the new file holds only what is left."""
    rng = np.random.default_rng(3)
    obj = {
        "a": rng.standard_normal(1000),
        "secret": np.full(50_000, 0x5EC2E7, dtype=np.int64),
        "b": np.arange(10, dtype=np.int32),
    }
    satchel.save(obj, tmp_path / "full.satchel")
    loaded = satchel.load(tmp_path / "full.satchel", mmap=mmap)
    del loaded["secret"]
    satchel.save(loaded, tmp_path / "trimmed.satchel")
    assert_same(satchel.load(tmp_path / "trimmed.satchel"), {"a": obj["a"], "b": obj["b"]})
    assert (
        np.full(4, 0x5EC2E7, dtype=np.int64).tobytes()
        not in (tmp_path / "trimmed.satchel").read_bytes()
    )
    assert data_section_size(tmp_path / "trimmed.satchel") == obj["a"].nbytes + obj["b"].nbytes


def test_load_save_load_of_mixed_dtype_views(tmp_path: Path) -> None:
    """Views of several dtypes over one buffer: satchel's own output must survive a re-save."""
    buf = np.arange(64, dtype=np.uint8)
    obj = {
        "odd": np.arange(3, dtype=np.uint8),
        "f": buf[8:24].view(np.float64),
        "s": buf[2:10].view(np.int16),
    }
    satchel.save(obj, tmp_path / "one.satchel")
    loaded = satchel.load(tmp_path / "one.satchel")
    assert_same(loaded, obj)
    satchel.save(loaded, tmp_path / "two.satchel")
    assert_same(satchel.load(tmp_path / "two.satchel"), obj)


def test_nesting_kinds_and_order(tmp_path: Path) -> None:
    obj = {
        "z": 1,
        "a": [None, True, False, 0, -1, 2**64, -(2**200), 10**100],
        3: (1.5, -0.0, math.inf, -math.inf, math.nan, 1e-310),
        -7: "héllo wörld ✓ 🚀 \x00 \n",
        "": b"\x00\xffbytes",
        "empty": [[], (), {}, OrderedDict(), "", b""],
        "od": OrderedDict([("y", 1), ("x", 2), (5, 3)]),
        "tuple_in_list": [(1, [2, (3,)])],
        "np": [np.int8(-3), np.uint64(2**64 - 1), np.bool_(True), np.complex128(1 - 2j)],
        "bytearray": bytearray(b"ab"),
    }
    roundtrip_all_modes(obj, tmp_path / "n.satchel")
    got = satchel.load(tmp_path / "n.satchel")
    assert list(got) == ["z", "a", 3, -7, "", "empty", "od", "tuple_in_list", "np", "bytearray"]


def test_int_and_str_keys_that_print_alike_stay_apart(tmp_path: Path) -> None:
    arr = np.arange(3)
    obj = {1: arr, "1": arr + 1, "a.b": arr + 2, "a": {"b": arr + 3}, "__metadata__": arr + 4}
    roundtrip_all_modes(obj, tmp_path / "k.satchel")


def test_nesting_at_the_limit_roundtrips(tmp_path: Path) -> None:
    obj: Any = np.arange(2)
    for i in range(64):
        obj = [obj] if i % 2 else {"k": obj}
    roundtrip_all_modes(obj, tmp_path / "deep.satchel")


def test_huge_ints_roundtrip(tmp_path: Path) -> None:
    obj = [2**63, -(2**63) - 1, 2**64, 3**1000, -(10**1000)]
    roundtrip_all_modes(obj, tmp_path / "ints.satchel")


def test_int_too_long_for_json_is_refused_cleanly(tmp_path: Path) -> None:
    """An int Python cannot turn into JSON text (over 4300 digits) must be a clean refusal."""
    folder = tmp_path / "out"
    folder.mkdir()
    try:
        satchel.save({"big": 10**5000}, folder / "f.satchel")
    except satchel.UnsupportedObjectError:
        assert list(folder.iterdir()) == []
    else:
        assert satchel.load(folder / "f.satchel") == {"big": 10**5000}


def test_metadata_roundtrips(tmp_path: Path) -> None:
    path = tmp_path / "m.satchel"
    meta = {"epoch": "3", "note": "ünïcode ✓", "": ""}
    satchel.save({"w": np.ones(2)}, path, metadata=meta)
    with satchel.open(path) as f:
        assert f.metadata == meta


@pytest.mark.parametrize("mmap", [True, False])
def test_loaded_arrays_are_writable_and_never_write_back(tmp_path: Path, mmap: bool) -> None:
    path = tmp_path / "cow.satchel"
    satchel.save({"w": np.zeros(1000, dtype=np.float32)}, path)
    before = path.read_bytes()
    got = satchel.load(path, mmap=mmap)
    got["w"][:] = 5.0
    assert path.read_bytes() == before
    assert not satchel.load(path)["w"].any()


def test_dtype_cast_for_numpy_leaves(tmp_path: Path) -> None:
    path = tmp_path / "cast.satchel"
    f64 = np.linspace(0, 1, 7)
    satchel.save({"f": f64, "i": np.arange(3), "s": np.float32(2.5)}, path)
    got = satchel.load(path, dtype="float16")
    assert got["f"].dtype == np.float16
    assert got["f"].tobytes() == f64.astype(np.float16).tobytes()
    assert got["i"].dtype == np.arange(3).dtype
    assert type(got["s"]) is np.float16
    with pytest.raises(satchel.UsageError):
        satchel.load(path, dtype="int8")


# -- refusals ------------------------------------------------------------------------------------
class Custom:
    pass


@dataclasses.dataclass
class Point:
    x: int


Pair = namedtuple("Pair", "a b")


def _cycle_list() -> Any:
    x: list[Any] = [np.ones(1)]
    x.append(x)
    return x


def _cycle_dict() -> Any:
    d: dict[str, Any] = {"w": np.ones(1)}
    d["inner"] = {"back": [d]}
    return d


def _cycle_tuple() -> Any:
    inner: list[Any] = []
    t = (inner,)
    inner.append(t)
    return t


def _too_deep(levels: int) -> Any:
    obj: Any = 1
    for _ in range(levels):
        obj = [obj]
    return obj


REFUSED = {
    "object_array": np.array([object(), 1], dtype=object),
    "structured_array": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
    "unicode_array": np.array(["ab", "c"]),
    "bytes_array": np.array([b"ab", b"c"]),
    "void_array": np.zeros(2, dtype="V4"),
    "datetime_array": np.array(["2020-01-01"], dtype="datetime64[D]"),
    "object_scalar_in_list": [np.array(None, dtype=object)],
    "instance": Custom(),
    "dataclass": {"p": Point(1)},
    "namedtuple": Pair(1, 2),
    "set": {1, 2},
    "frozenset": [frozenset({1})],
    "float_key": {1.5: np.ones(1)},
    "tuple_key": {(1, 2): 1},
    "none_key": {None: 1},
    "bool_key": {True: 1},
    "bytes_key": {b"k": 1},
    "cycle_list": _cycle_list(),
    "cycle_dict": _cycle_dict(),
    "cycle_tuple": _cycle_tuple(),
    "too_deep": _too_deep(100),
    "just_too_deep": _too_deep(65),
    "function": [len],
    "complex_python": 1 + 2j,
    "nested_bad_after_good": {"ok": np.ones(1000), "bad": [1, 2, {3}]},
}


@pytest.mark.parametrize("obj", list(REFUSED.values()), ids=list(REFUSED))
def test_refused_objects_write_nothing(tmp_path: Path, obj: Any) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(satchel.UnsupportedObjectError):
        satchel.save(obj, folder / "x.satchel")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "metadata",
    [{"k": 1}, {1: "v"}, {"satchel": "x"}, {"satchel.extra": "x"}],
    ids=["int_value", "int_key", "reserved", "reserved_prefix"],
)
def test_bad_metadata_refused_write_nothing(tmp_path: Path, metadata: Any) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(satchel.UnsupportedObjectError):
        satchel.save({"w": np.ones(2)}, folder / "x.satchel", metadata=metadata)
    assert list(folder.iterdir()) == []


def test_refusal_leaves_previous_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "keep.satchel"
    satchel.save({"w": np.arange(10)}, path)
    before = path.read_bytes()
    for obj in REFUSED.values():
        with pytest.raises(satchel.UnsupportedObjectError):
            satchel.save(obj, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.satchel"]


# -- helpers -------------------------------------------------------------------------------------
def data_section_size(path: Path) -> int:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return len(raw) - 8 - n
