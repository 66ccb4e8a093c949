"""PyTorch: the tutorial flow, every dtype, Parameters, tied weights and views that keep sharing."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

import satchel

TORCH_DTYPES = [
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
    torch.complex128,
]
NUMPY_OF = {
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.uint16: np.dtype(np.uint16),
    torch.int16: np.dtype(np.int16),
    torch.uint32: np.dtype(np.uint32),
    torch.int32: np.dtype(np.int32),
    torch.uint64: np.dtype(np.uint64),
    torch.int64: np.dtype(np.int64),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float8_e4m3fn: np.dtype(ml_dtypes.float8_e4m3fn),
    torch.float8_e5m2: np.dtype(ml_dtypes.float8_e5m2),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
SHAPES = [(), (0,), (3, 0), (1,), (5,), (2, 3), (2, 3, 4), (2, 1, 3, 2)]


def tbytes(t: torch.Tensor) -> bytes:
    """The tensor's elements in C order as raw bytes (works for every dtype, 0-d included)."""
    dense = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach())  # standard strides
    return bytes(dense.reshape(-1).view(torch.uint8).numpy().tobytes())


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Arbitrary bit patterns (NaN payloads, -0.0, subnormals) of ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool().reshape(shape)
    size = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def assert_tensor_same(got: Any, want: torch.Tensor, where: str = "") -> None:
    assert isinstance(got, torch.Tensor), f"{where}: {type(got)}"
    assert got.dtype == want.dtype, f"{where}: {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{where}: {got.shape} != {want.shape}"
    assert got.device.type == "cpu"
    assert tbytes(got) == tbytes(want), f"{where}: bytes differ"


def data_section_size(path: Path) -> int:
    raw = path.read_bytes()
    return len(raw) - 8 - int.from_bytes(raw[:8], "little")


# -- the tutorial flow --------------------------------------------------------------------------
def test_tutorial_tensor_list_dict(tmp_path: Path) -> None:
    x = torch.arange(4)
    satchel.save(x, tmp_path / "x-file")
    x2 = satchel.load(tmp_path / "x-file")
    assert type(x2) is torch.Tensor
    assert torch.equal(x2, x) and x2.dtype == torch.int64

    y = torch.zeros(4)
    satchel.save([x, y], tmp_path / "x-files")
    x2, y2 = satchel.load(tmp_path / "x-files")
    assert torch.equal(x2, x) and torch.equal(y2, y)

    mydict = {"x": x, "y": y}
    satchel.save(mydict, tmp_path / "mydict")
    mydict2 = satchel.load(tmp_path / "mydict")
    assert type(mydict2) is dict and list(mydict2) == ["x", "y"]
    assert torch.equal(mydict2["x"], x) and torch.equal(mydict2["y"], y)


def test_tutorial_mlp_state_dict_into_fresh_clone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))
    X = torch.randn(2, 20)
    Y = net(X)
    satchel.save(net.state_dict(), tmp_path / "mlp.params")

    torch.manual_seed(1)
    clone = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))
    assert not torch.equal(clone(X), Y)
    loaded = satchel.load(tmp_path / "mlp.params")
    assert type(loaded) is OrderedDict
    assert list(loaded) == list(net.state_dict())
    clone.load_state_dict(loaded)
    clone.eval()
    assert torch.equal(clone(X), Y)


def test_state_dict_ordered_dict_type_and_order_kept(tmp_path: Path) -> None:
    sd = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).state_dict()
    satchel.save(sd, tmp_path / "sd")
    got = satchel.load(tmp_path / "sd")
    assert type(got) is OrderedDict
    assert list(got) == list(sd)
    for k in sd:
        assert_tensor_same(got[k], sd[k], k)
    assert got["1.num_batches_tracked"].shape == ()


# -- dtypes and shapes ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_dtype_and_shape(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = {str(shape): random_tensor(dtype, shape, seed=i) for i, shape in enumerate(SHAPES)}
    path = tmp_path / "t"
    # Non-empty tensors keep the data section non-empty (an all-empty file is its own test).
    satchel.save({"t": tensors, "n": [t.clone() for t in tensors.values()]}, path)
    for mmap in (True, False):
        for verify in (True, False):
            got = satchel.load(path, mmap=mmap, verify=verify)
            assert list(got["t"]) == list(tensors)
            for i, (name, t) in enumerate(tensors.items()):
                assert_tensor_same(got["t"][name], t, name)
                assert_tensor_same(got["n"][i], t, f"n.{i}")


def test_file_of_only_empty_tensors(tmp_path: Path) -> None:
    """A file whose data section is empty (every tensor has zero elements) loads back."""
    failures = {}
    for dtype in TORCH_DTYPES:
        for shape in [(0,), (3, 0)]:
            t = torch.zeros(shape, dtype=dtype)
            satchel.save(t, tmp_path / "empty")
            try:
                assert_tensor_same(satchel.load(tmp_path / "empty"), t)
            except Exception as e:  # collect every dtype that fails, not just the first
                failures[f"{dtype}{list(shape)}"] = f"{type(e).__name__}: {e}"
    assert not failures, failures


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_lone_zero_d_tensor(tmp_path: Path, dtype: torch.dtype) -> None:
    t = random_tensor(dtype, (), seed=3)
    satchel.save(t, tmp_path / "s")
    assert_tensor_same(satchel.load(tmp_path / "s"), t)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_non_contiguous_tensors(tmp_path: Path, dtype: torch.dtype) -> None:
    base = random_tensor(dtype, (6, 8), seed=5)
    cases = {
        "T": base.T,
        "step": base[:, ::2],
        "both": base[1:, 1::3],
        "col": base[:, 3],
        "expand": base[0:1].expand(4, 8),
        "perm": random_tensor(dtype, (2, 3, 4), seed=6).permute(2, 0, 1),
    }
    for name, t in cases.items():
        if name != "expand":
            assert not t.is_contiguous(), name
        satchel.save(t, tmp_path / name)
        got = satchel.load(tmp_path / name)
        assert_tensor_same(got, t, name)
        # A lone non-contiguous tensor is stored as a contiguous copy of itself only (SPEC 5.3).
        assert data_section_size(tmp_path / name) == t.numel() * t.element_size(), name


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_framework_numpy_gives_same_bytes(tmp_path: Path, dtype: torch.dtype) -> None:
    t = random_tensor(dtype, (3, 4), seed=9)
    p = nn.Parameter(random_tensor(dtype, (2,), seed=10), requires_grad=False)
    satchel.save({"t": t, "view": t.T, "p": p, "s": t[1, 2]}, tmp_path / "np")
    got = satchel.load(tmp_path / "np", framework="numpy")
    for name, want in (("t", t), ("view", t.T), ("p", p), ("s", t[1, 2])):
        arr = got[name]
        assert type(arr) is np.ndarray, name
        assert arr.dtype == NUMPY_OF[dtype], name
        assert arr.shape == tuple(want.shape), name
        assert arr.tobytes() == tbytes(want), name


# -- Parameters, tying, views --------------------------------------------------------------------
@pytest.mark.parametrize("requires_grad", [True, False])
def test_parameter_comes_back_as_parameter(tmp_path: Path, requires_grad: bool) -> None:
    p = nn.Parameter(torch.randn(3, 2), requires_grad=requires_grad)
    plain = torch.randn(2, requires_grad=True)
    satchel.save(
        {"p": p, "plain": plain, "int_p": nn.Parameter(torch.arange(3), False)}, tmp_path / "p"
    )
    got = satchel.load(tmp_path / "p")
    assert type(got["p"]) is nn.Parameter
    assert got["p"].requires_grad is requires_grad
    assert_tensor_same(got["p"], p)
    assert type(got["int_p"]) is nn.Parameter and not got["int_p"].requires_grad
    assert type(got["plain"]) is torch.Tensor
    assert_tensor_same(got["plain"], plain)


def test_module_parameters_keep_vars_roundtrip(tmp_path: Path) -> None:
    net = nn.Linear(4, 3)
    net.bias.requires_grad_(False)
    sd = net.state_dict(keep_vars=True)
    satchel.save(sd, tmp_path / "kv")
    got = satchel.load(tmp_path / "kv")
    assert type(got["weight"]) is nn.Parameter and got["weight"].requires_grad
    assert type(got["bias"]) is nn.Parameter and not got["bias"].requires_grad
    fresh = nn.Linear(4, 3)
    fresh.load_state_dict(got)
    assert torch.equal(fresh.weight, net.weight)


def test_tied_tensor_under_two_names_is_one_object(tmp_path: Path) -> None:
    emb = nn.Parameter(torch.randn(10, 4))
    plain = torch.randn(5)
    obj = {"emb": emb, "head": emb, "x": [plain, (plain,)]}
    satchel.save(obj, tmp_path / "tied")
    got = satchel.load(tmp_path / "tied")
    assert got["head"] is got["emb"]
    assert got["x"][0] is got["x"][1][0]
    assert type(got["emb"]) is nn.Parameter
    assert data_section_size(tmp_path / "tied") == emb.nbytes + plain.nbytes


def test_tied_module_weights_state_dict_share_and_store_once(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 50, bias=False)
            self.head.weight = self.emb.weight

    model = Tied()
    sd = model.state_dict()
    assert sd["emb.weight"] is not sd["head.weight"]  # two tensors, one storage
    satchel.save(sd, tmp_path / "tied")
    assert data_section_size(tmp_path / "tied") == model.emb.weight.nbytes
    got = satchel.load(tmp_path / "tied")
    assert_tensor_same(got["head.weight"], sd["head.weight"])
    got["emb.weight"][3, 4] = 123.0
    assert got["head.weight"][3, 4].item() == 123.0

    satchel.save(model.state_dict(keep_vars=True), tmp_path / "tied_vars")
    got = satchel.load(tmp_path / "tied_vars")
    assert got["emb.weight"] is got["head.weight"]
    fresh = Tied()
    fresh.load_state_dict(got)
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_views_keep_sharing_memory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 6)
    qkv = torch.randn(12, 4)
    q, k, v = qkv.chunk(3)
    obj = {"w": w, "w5": w[:5], "wT": w.T, "w1": w[1], "qkv": qkv, "q": q, "k": k, "v": v}
    path = tmp_path / "views"
    satchel.save(obj, path)
    # One copy of each allocation, not one per view.
    assert data_section_size(path) == w.nbytes + qkv.nbytes
    for mmap in (True, False):
        got = satchel.load(path, mmap=mmap)
        for name, want in obj.items():
            assert_tensor_same(got[name], want, name)
        got["w"][1, 2] = 100.0
        assert got["w5"][1, 2].item() == 100.0
        assert got["wT"][2, 1].item() == 100.0
        assert got["w1"][2].item() == 100.0
        got["wT"][0, 4] = -5.0
        assert got["w"][4, 0].item() == -5.0
        got["qkv"][4, 0] = 7.0
        assert got["k"][0, 0].item() == 7.0
        got["v"][3, 3] = 9.0
        assert got["qkv"][11, 3].item() == 9.0
        assert got["q"].untyped_storage().data_ptr() == got["qkv"].untyped_storage().data_ptr()


def test_views_without_their_base_keep_sharing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 6)
    qkv = torch.randn(12, 4)
    obj = {"a": w[:5], "b": w.T, "c": w[1], "chunks": list(qkv.chunk(3))}
    path = tmp_path / "views"
    satchel.save(obj, path)
    assert data_section_size(path) == w.nbytes + qkv.nbytes
    got = satchel.load(path)
    assert_tensor_same(got["a"], w[:5])
    assert_tensor_same(got["b"], w.T)
    assert_tensor_same(got["c"], w[1])
    for i, chunk in enumerate(qkv.chunk(3)):
        assert_tensor_same(got["chunks"][i], chunk)
    got["a"][1, 2] = 55.0
    assert got["b"][2, 1].item() == 55.0
    assert got["c"][2].item() == 55.0
    # chunk 0 and chunk 2 do not overlap but live in one stored span
    q, _, v = got["chunks"]
    assert q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()


def test_partial_views_store_only_their_span(tmp_path: Path) -> None:
    w = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    obj = {"a": w[2:4], "b": w[3:6, ::2]}
    satchel.save(obj, tmp_path / "span")
    # rows 2..5 are needed; the span may start up to 16 bytes earlier for alignment
    assert data_section_size(tmp_path / "span") <= 4 * 10 * 4 + 16
    got = satchel.load(tmp_path / "span")
    assert_tensor_same(got["a"], w[2:4])
    assert_tensor_same(got["b"], w[3:6, ::2])
    got["a"][1, 4] = -1.0
    assert got["b"][0, 2].item() == -1.0


def test_views_of_a_parameter_keep_kind_and_sharing(tmp_path: Path) -> None:
    p = nn.Parameter(torch.randn(4, 4))
    obj = {"p": p, "row": p.data[0]}
    satchel.save(obj, tmp_path / "pv")
    got = satchel.load(tmp_path / "pv")
    assert type(got["p"]) is nn.Parameter and got["p"].requires_grad
    with torch.no_grad():
        got["p"][0, 1] = 42.0
    assert got["row"][1].item() == 42.0


# -- load options --------------------------------------------------------------------------------
def test_dtype_float16_cast(tmp_path: Path) -> None:
    w = torch.randn(4, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.bfloat16)
    p = nn.Parameter(torch.randn(2))
    idx = torch.arange(5)
    c = torch.randn(2, dtype=torch.complex64)
    satchel.save({"w": w, "b": b, "p": p, "idx": idx, "c": c}, tmp_path / "c")
    got = satchel.load(tmp_path / "c", dtype=torch.float16)
    assert got["w"].dtype == torch.float16 and torch.equal(got["w"], w.to(torch.float16))
    assert got["b"].dtype == torch.float16 and torch.equal(got["b"], b.to(torch.float16))
    assert type(got["p"]) is nn.Parameter and got["p"].dtype == torch.float16
    assert got["idx"].dtype == torch.int64 and torch.equal(got["idx"], idx)
    assert got["c"].dtype == torch.complex64 and torch.equal(got["c"], c)
    same = satchel.load(tmp_path / "c", dtype="float16")
    assert same["w"].dtype == torch.float16


def test_device_cpu(tmp_path: Path) -> None:
    w = torch.randn(3, 3)
    p = nn.Parameter(torch.randn(2))
    satchel.save({"w": w, "p": p}, tmp_path / "d")
    for device in ("cpu", torch.device("cpu")):
        got = satchel.load(tmp_path / "d", device=device)
        assert got["w"].device == torch.device("cpu")
        assert torch.equal(got["w"], w)
        assert type(got["p"]) is nn.Parameter and torch.equal(got["p"], p)


def test_mixed_numpy_and_torch_leaves_keep_their_framework(tmp_path: Path) -> None:
    obj = {"t": torch.arange(3), "a": np.arange(3), "s": np.float32(1.0), "n": 3}
    satchel.save(obj, tmp_path / "mix")
    got = satchel.load(tmp_path / "mix")
    assert type(got["t"]) is torch.Tensor and type(got["a"]) is np.ndarray
    assert type(got["s"]) is np.float32 and got["n"] == 3
    as_torch = satchel.load(tmp_path / "mix", framework="torch")
    assert type(as_torch["a"]) is torch.Tensor and torch.equal(as_torch["a"], torch.arange(3))
    assert type(as_torch["s"]) is torch.Tensor and as_torch["s"].shape == ()


def test_loaded_tensors_never_write_back(tmp_path: Path) -> None:
    path = tmp_path / "cow"
    satchel.save({"w": torch.zeros(100)}, path)
    before = path.read_bytes()
    got = satchel.load(path)
    got["w"].add_(1.0)
    assert path.read_bytes() == before
    assert not satchel.load(path)["w"].any()


def test_refuses_sparse_and_quantized(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    sparse = torch.eye(3).to_sparse()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated; still must be refused
        quant = torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8)
    for obj in (sparse, {"q": quant}):
        with pytest.raises(satchel.UnsupportedObjectError):
            satchel.save(obj, folder / "x")
    assert list(folder.iterdir()) == []
