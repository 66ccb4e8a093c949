"""Differential tests against the ``safetensors`` library, both directions.

safetensors-written files must load with satchel as flat dicts of equal arrays; satchel-written
files must load with safetensors with equal values for every stored tensor and the user's
metadata visible. complex128 has no safetensors name, so safetensors sees its raw bytes as U8.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy as st_np
import safetensors.torch as st_pt
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import satchel

# What safetensors' NumPy side can read and write: no float8 (it looks them up on the numpy
# module), no complex128 (no safetensors name).
NP_DTYPES = [
    np.dtype(t)
    for t in (
        np.bool_,
        np.uint8,
        np.int8,
        np.uint16,
        np.int16,
        np.uint32,
        np.int32,
        np.uint64,
        np.int64,
        np.float16,
        ml_dtypes.bfloat16,
        np.float32,
        np.float64,
        np.complex64,
    )
]
PT_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.uint16,
    torch.int16,
    torch.uint32,
    torch.int32,
    torch.uint64,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.complex64,
]
META = {"format": "pt", "note": "ünïcode ✓", "epoch": "12"}

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def np_random(dt: np.dtype[Any], shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if dt == np.dtype(np.bool_):
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8).view(dt).reshape(shape)


def pt_random(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool().reshape(shape)
    size = torch.empty(0, dtype=dtype).element_size()
    return (
        torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
        .view(dtype)
        .reshape(shape)
    )


def tbytes(t: torch.Tensor) -> bytes:
    dense = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach())  # standard strides
    return bytes(dense.reshape(-1).view(torch.uint8).numpy().tobytes())


def abytes(a: Any) -> bytes:
    return tbytes(a) if isinstance(a, torch.Tensor) else np.ascontiguousarray(a).tobytes()


def data_order(path: Path) -> list[str]:
    """Tensor names of a safetensors file in the order their bytes appear."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: tuple(header[k]["data_offsets"]))


# -- safetensors -> satchel ----------------------------------------------------------------------
def np_tensors() -> dict[str, np.ndarray[Any, Any]]:
    out = {}
    for i, dt in enumerate(NP_DTYPES):
        out[f"{dt.name}.w"] = np_random(dt, (3, 5), seed=i)
        out[f"{dt.name}.scalar"] = np_random(dt, (), seed=100 + i)
        out[f"{dt.name}.empty"] = np_random(dt, (0, 4), seed=200 + i)
    return out


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("verify", [True, False])
def test_safetensors_numpy_file_loads_as_flat_dict(
    tmp_path: Path, mmap: bool, verify: bool
) -> None:
    tensors = np_tensors()
    path = tmp_path / "st_np.safetensors"
    st_np.save_file(tensors, str(path), metadata=META)
    got = satchel.load(path, mmap=mmap, verify=verify)
    assert type(got) is dict
    assert list(got) == data_order(path)
    assert set(got) == set(tensors)
    for name, want in tensors.items():
        assert type(got[name]) is np.ndarray, name
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        assert got[name].tobytes() == want.tobytes(), name


def test_safetensors_numpy_file_opens_lazily(tmp_path: Path) -> None:
    tensors = np_tensors()
    path = tmp_path / "st_np.safetensors"
    st_np.save_file(tensors, str(path), metadata=META)
    with satchel.open(path) as ck:
        assert ck.metadata == META
        assert ck.keys() == data_order(path)
        assert not ck.checksummed
        for name, want in tensors.items():
            info = ck.info(name)
            assert info.shape == want.shape and info.dtype == want.dtype.name, name
            assert info.nbytes == want.nbytes, name
            assert ck[name].tobytes() == want.tobytes(), name
        whole = ck.load()
    assert set(whole) == set(tensors)


def test_safetensors_torch_file_loads(tmp_path: Path) -> None:
    tensors = {}
    for i, dt in enumerate(PT_DTYPES):
        name = str(dt).removeprefix("torch.")
        tensors[f"{name}.w"] = pt_random(dt, (4, 3), seed=i)
        tensors[f"{name}.s"] = pt_random(dt, (), seed=50 + i)
        tensors[f"{name}.e"] = pt_random(dt, (2, 0), seed=90 + i)
    path = tmp_path / "st_pt.safetensors"
    st_pt.save_file(tensors, str(path), metadata=META)

    got = satchel.load(path)
    assert list(got) == data_order(path)
    for name, want in tensors.items():
        assert type(got[name]) is np.ndarray, name
        assert got[name].shape == tuple(want.shape), name
        assert got[name].tobytes() == tbytes(want), name

    as_torch = satchel.load(path, framework="torch")
    for name, want in tensors.items():
        assert type(as_torch[name]) is torch.Tensor, name
        assert as_torch[name].dtype == want.dtype, name
        assert tbytes(as_torch[name]) == tbytes(want), name

    with satchel.open(path, framework="torch") as ck:
        assert ck.metadata == META
        w = ck["bfloat16.w"]
        assert w.dtype == torch.bfloat16 and tbytes(w) == tbytes(tensors["bfloat16.w"])
        assert ck.info("float8_e5m2.w").dtype == "float8_e5m2"


def test_safetensors_file_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    st_np.save_file({"a": np.arange(6, dtype=np.int32).reshape(2, 3)}, str(path))
    got = satchel.load(path)
    assert list(got) == ["a"] and got["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with satchel.open(path) as ck:
        assert ck.metadata == {}


def test_safetensors_file_with_half_a_manifest_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "half.safetensors"
    st_np.save_file({"a": np.arange(3)}, str(path), metadata={"satchel": "{}"})
    with pytest.raises(satchel.FormatError):
        satchel.load(path)


names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/",
    min_size=1,
    max_size=12,
).filter(lambda s: s != "__metadata__")
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@st.composite
def np_flat_dicts(draw: st.DrawFn, dtypes: list[np.dtype[Any]]) -> dict[str, Any]:
    keys = draw(st.lists(names, min_size=0, max_size=6, unique=True))
    out = {}
    for k in keys:
        dt = draw(st.sampled_from(dtypes))
        shape = draw(shapes)
        out[k] = np_random(dt, shape, seed=draw(st.integers(0, 2**32 - 1)))
    return out


@FUZZ
@given(tensors=np_flat_dicts(NP_DTYPES), meta=st.dictionaries(names, st.text(max_size=8)))
def test_differential_safetensors_writes_satchel_reads(
    tmp_path: Path, tensors: dict[str, Any], meta: dict[str, str]
) -> None:
    path = tmp_path / "d.safetensors"
    st_np.save_file(tensors, str(path), metadata=meta or None)
    got = satchel.load(path)
    assert list(got) == data_order(path)
    assert set(got) == set(tensors)
    for name, want in tensors.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert got[name].tobytes() == want.tobytes(), name
    with satchel.open(path) as ck:
        assert ck.metadata == meta


# -- satchel -> safetensors ----------------------------------------------------------------------
ALL_NP = [*NP_DTYPES, np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)]


@FUZZ
@given(tensors=np_flat_dicts([*ALL_NP, np.dtype(np.complex128)]))
def test_differential_satchel_writes_safetensors_reads(
    tmp_path: Path, tensors: dict[str, Any]
) -> None:
    path = tmp_path / "d.satchel"
    satchel.save(tensors, path, metadata=META)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        meta = f.metadata()
        for name, want in tensors.items():
            got = f.get_tensor(name)
            if want.dtype == np.complex128:
                assert got.dtype == torch.uint8 and tuple(got.shape) == (want.nbytes,), name
            else:
                assert tuple(got.shape) == want.shape, name
            assert tbytes(got) == want.tobytes(), name
    assert {k: meta[k] for k in META} == META
    readable = {k: v for k, v in tensors.items() if v.dtype in NP_DTYPES}
    if len(readable) == len(tensors):
        loaded = st_np.load_file(str(path))
        assert set(loaded) == set(tensors)
        for name, want in tensors.items():
            assert loaded[name].dtype == want.dtype, name
            assert loaded[name].tobytes() == want.tobytes(), name


def test_satchel_flat_torch_dict_reads_with_safetensors(tmp_path: Path) -> None:
    tensors = {}
    for i, dt in enumerate([*PT_DTYPES, torch.complex128]):
        name = str(dt).removeprefix("torch.")
        tensors[name] = pt_random(dt, (3, 4), seed=i)
        tensors[f"{name}_0d"] = pt_random(dt, (), seed=40 + i)
        tensors[f"{name}_empty"] = pt_random(dt, (0, 2), seed=80 + i)
    path = tmp_path / "flat.satchel"
    satchel.save(tensors, path, metadata=META)

    loaded = st_pt.load_file(str(path))
    assert set(loaded) == set(tensors)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(tensors)
        for name, want in tensors.items():
            got = f.get_tensor(name)
            if want.dtype == torch.complex128:
                assert got.dtype == torch.uint8 and got.shape == (want.numel() * 16,), name
            else:
                assert got.dtype == want.dtype and got.shape == want.shape, name
            assert tbytes(got) == tbytes(want), name
            assert tbytes(loaded[name]) == tbytes(want), name
    assert {k: meta[k] for k in META} == META
    assert "satchel" in meta and "satchel.xxh3" in meta

    np_ok = {torch.float8_e4m3fn, torch.float8_e5m2}
    with safe_open(str(path), framework="np") as f:
        for name, want in tensors.items():
            if want.dtype in np_ok:
                continue  # safetensors' NumPy side has no float8
            assert np.ascontiguousarray(f.get_tensor(name)).tobytes() == tbytes(want), name


def nested_state() -> tuple[Any, dict[str, Any]]:
    """A nested checkpoint and, for every stored tensor, the dotted name and expected value."""
    torch.manual_seed(0)
    emb = torch.randn(10, 4)
    layers = [{"w": torch.randn(4, 4), "b": torch.zeros(4, dtype=torch.bfloat16)} for _ in range(3)]
    opt = OrderedDict(step=7, m=(torch.randn(4).double(), torch.arange(4, dtype=torch.int16)))
    obj = {
        "model": {"emb": emb, "layers": layers, "head": emb},  # head is tied: stored once
        "opt": opt,
        "np": {"mean": np.linspace(0, 1, 5, dtype=np.float32), 3: np.arange(4, dtype=np.uint8)},
        "c": np.arange(3, dtype=np.complex128) * (1 + 2j),
        "cfg": {"lr": 1e-3, "name": "run", "betas": (0.9, 0.99)},
    }
    expected: dict[str, Any] = {"model.emb": emb, "opt.m.0": opt["m"][0], "opt.m.1": opt["m"][1]}
    for i, layer in enumerate(layers):
        expected[f"model.layers.{i}.w"] = layer["w"]
        expected[f"model.layers.{i}.b"] = layer["b"]
    expected["np.mean"] = obj["np"]["mean"]
    expected["np.3"] = obj["np"][3]
    expected["c"] = obj["c"]
    return obj, expected


@pytest.mark.parametrize("framework", ["pt", "np"])
def test_satchel_nested_structure_reads_with_safetensors(tmp_path: Path, framework: str) -> None:
    obj, expected = nested_state()
    path = tmp_path / "nested.satchel"
    satchel.save(obj, path, metadata=META)
    with safe_open(str(path), framework=framework) as f:
        assert set(f.keys()) == set(expected)
        meta = f.metadata()
        for name, want in expected.items():
            got = f.get_tensor(name)
            assert abytes(got) == abytes(want), name
            if name == "c":
                assert str(got.dtype).endswith("uint8"), got.dtype
            else:
                assert tuple(got.shape) == tuple(want.shape), name
    assert {k: meta[k] for k in META} == META
    loader = st_pt.load_file if framework == "pt" else st_np.load_file
    loaded = loader(str(path))
    assert set(loaded) == set(expected)
    for name, want in expected.items():
        assert abytes(loaded[name]) == abytes(want), name
    # and satchel itself still restores the structure
    back = satchel.load(path)
    assert back["model"]["head"] is back["model"]["emb"]
    assert back["cfg"] == obj["cfg"] and type(back["opt"]) is OrderedDict


def test_satchel_views_read_with_safetensors(tmp_path: Path) -> None:
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    path = tmp_path / "views.satchel"
    satchel.save({"w": w, "wT": w.T, "row": w[1]}, path)
    loaded = st_pt.load_file(str(path))
    assert list(loaded) == ["w"]  # the C-contiguous owner is the stored tensor (SPEC 5.2)
    assert torch.equal(loaded["w"], w)

    satchel.save({"a": w[:2], "b": w.T}, path)
    loaded = st_pt.load_file(str(path))
    assert list(loaded) == ["a.__base__"]  # a view-only span (SPEC 4.4)
    assert tbytes(loaded["a.__base__"]) == tbytes(w)


def test_satchel_lone_tensor_reads_with_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "x"
    x = torch.arange(4)
    satchel.save(x, path)
    loaded = st_pt.load_file(str(path))
    assert list(loaded) == ["tensor"] and torch.equal(loaded["tensor"], x)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_resaved_checkpoint_still_shows_its_tensors_to_safetensors(
    tmp_path: Path, framework: str
) -> None:
    """load -> save of a satchel file: safetensors still sees each tensor under its name."""
    tensors = {f"t{i}": np_random(dt, (3, 2), seed=i) for i, dt in enumerate(NP_DTYPES)}
    satchel.save(tensors, tmp_path / "a.satchel")
    satchel.save(satchel.load(tmp_path / "a.satchel", framework=framework), tmp_path / "b.satchel")
    loaded = st_np.load_file(str(tmp_path / "b.satchel"))
    assert set(loaded) == set(tensors)
    for name, want in tensors.items():
        assert loaded[name].tobytes() == want.tobytes(), name


def test_roundtrip_through_both_libraries(tmp_path: Path) -> None:
    """satchel -> safetensors load_file -> safetensors save_file -> satchel: same values."""
    tensors = {f"t{i}": pt_random(dt, (2, 3), seed=i) for i, dt in enumerate(PT_DTYPES)}
    a, b = tmp_path / "a.satchel", tmp_path / "b.safetensors"
    satchel.save(tensors, a)
    st_pt.save_file(st_pt.load_file(str(a)), str(b))
    back = satchel.load(b, framework="torch")
    for name, want in tensors.items():
        assert back[name].dtype == want.dtype and tbytes(back[name]) == tbytes(want), name
