"""``satchel.open``: names, header-only ``info``, per-tensor verification, closing."""

from __future__ import annotations

import gc
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import satchel
from fixture_truth import FIXTURES


def header_of(path: Path) -> tuple[int, dict[str, Any]]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n, json.loads(raw[8 : 8 + n])


def corrupt(path: Path, stored_name: str) -> None:
    """Flip one byte in the middle of a stored tensor's data."""
    data_start, header = header_of(path)
    start, end = header[stored_name]["data_offsets"]
    assert end > start
    raw = bytearray(path.read_bytes())
    raw[data_start + (start + end) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def structure() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(4)
    return {
        "model": {
            "layers": [{"w": rng.standard_normal((3, 4)), "b": np.zeros(4, dtype=np.float32)}],
            "emb": rng.integers(0, 9, size=(5, 2), dtype=np.int64),
        },
        "step": 3,
        "t": (shared, [shared, np.float16(1.5)], {7: b"raw"}),
        "last": np.arange(6, dtype=np.uint8),
    }


EXPECTED_KEYS = [
    "model.layers.0.w",
    "model.layers.0.b",
    "model.emb",
    "t.0",
    "t.1.0",
    "t.1.1",
    "t.2.7",
    "last",
]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ck.satchel"
    satchel.save(structure(), path, metadata={"epoch": "3", "who": "tests"})
    return path


def test_keys_are_dotted_paths_in_structure_order(ckpt: Path) -> None:
    with satchel.open(ckpt) as ck:
        assert ck.keys() == EXPECTED_KEYS
        assert list(ck) == EXPECTED_KEYS
        assert len(ck) == len(EXPECTED_KEYS)
        assert "model.emb" in ck and "model" not in ck and "step" not in ck
        assert ck.path == str(ckpt)
        assert str(ckpt) in repr(ck)


def test_a_lone_tensor_is_named_tensor(tmp_path: Path) -> None:
    satchel.save(np.arange(3), tmp_path / "a")
    with satchel.open(tmp_path / "a") as ck:
        assert ck.keys() == ["tensor"]
        assert ck["tensor"].tolist() == [0, 1, 2]
    satchel.save(torch.arange(3), tmp_path / "t")
    with satchel.open(tmp_path / "t") as ck:
        assert ck.keys() == ["tensor"]
        assert torch.equal(ck["tensor"], torch.arange(3))


def test_items_match_the_saved_values(ckpt: Path) -> None:
    want = structure()
    with satchel.open(ckpt) as ck:
        assert ck["model.layers.0.w"].tobytes() == want["model"]["layers"][0]["w"].tobytes()
        assert ck["model.emb"].tobytes() == want["model"]["emb"].tobytes()
        assert ck["t.2.7"] == b"raw"
        assert type(ck["t.1.1"]) is np.float16 and ck["t.1.1"] == np.float16(1.5)
        # one array saved at two places is one object
        assert ck["t.0"] is ck["t.1.0"]


def test_info_from_the_header(ckpt: Path) -> None:
    with satchel.open(ckpt) as ck:
        info = ck.info("model.layers.0.w")
        assert isinstance(info, satchel.TensorInfo)
        assert (info.dtype, info.shape, info.nbytes, info.framework) == (
            "float64",
            (3, 4),
            96,
            "numpy",
        )
        assert ck.info("model.layers.0.b").dtype == "float32"
        assert ck.info("model.emb").shape == (5, 2)
        assert ck.info("t.1.1").shape == () and ck.info("t.1.1").nbytes == 2
        assert ck.info("t.2.7").nbytes == 3


def test_info_of_torch_views_and_parameters(tmp_path: Path) -> None:
    w = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.bfloat16))
    satchel.save({"w": w, "wT": w.data.T, "row": w.data[1]}, tmp_path / "t")
    with satchel.open(tmp_path / "t") as ck:
        assert ck.info("wT") == satchel.TensorInfo("bfloat16", (6, 4), 48, "torch")
        assert ck.info("row").shape == (6,)
        assert type(ck["w"]) is torch.nn.Parameter
        ck["w"].data[1, 2] = 3.0
        assert ck["row"][2].item() == 3.0
        assert ck["wT"][2, 1].item() == 3.0


def test_corrupt_tensor_only_fails_itself(ckpt: Path) -> None:
    corrupt(ckpt, "model.emb")
    with satchel.open(ckpt) as ck:  # opening reads and checks the header only
        for name in EXPECTED_KEYS:
            ck.info(name)  # the header alone: works for every name, corrupt or not
        assert ck["model.layers.0.w"].shape == (3, 4)
        assert ck["last"].tolist() == list(range(6))
        with pytest.raises(satchel.IntegrityError) as ei:
            ck["model.emb"]
        assert "model.emb" in str(ei.value)
        assert isinstance(ei.value, satchel.FormatError)
        # other tensors still fine after the failure
        assert ck["t.0"].shape == (4,)
        with pytest.raises(satchel.IntegrityError):
            ck.load()
    with pytest.raises(satchel.IntegrityError, match=r"model\.emb"):
        satchel.load(ckpt)


def test_verify_false_skips_the_checksum(ckpt: Path) -> None:
    corrupt(ckpt, "model.emb")
    want = structure()["model"]["emb"]
    with satchel.open(ckpt, verify=False) as ck:
        got = ck["model.emb"]
        assert got.shape == want.shape and got.tobytes() != want.tobytes()
        whole = ck.load()
    assert whole["model"]["emb"].tobytes() == got.tobytes()
    assert satchel.load(ckpt, verify=False)["model"]["emb"].tobytes() == got.tobytes()


def test_missing_name(ckpt: Path) -> None:
    with satchel.open(ckpt) as ck:
        with pytest.raises(satchel.MissingKeyError) as ei:
            ck["model.nope"]
        assert isinstance(ei.value, KeyError)
        msg = str(ei.value)
        assert "model.nope" in msg
        for name in EXPECTED_KEYS[:3]:
            assert name in msg
        with pytest.raises(satchel.MissingKeyError):
            ck.info("model")
        with pytest.raises(KeyError):
            ck["step"]  # a plain value, not an array


def test_missing_name_in_a_small_file_lists_every_key(tmp_path: Path) -> None:
    satchel.save({"alpha": np.ones(1), "beta": np.ones(2)}, tmp_path / "s")
    with satchel.open(tmp_path / "s") as ck, pytest.raises(satchel.MissingKeyError) as ei:
        ck["gamma"]
    assert "alpha" in str(ei.value) and "beta" in str(ei.value)


@pytest.mark.parametrize("mmap", [True, False])
def test_closing_keeps_returned_arrays_valid(ckpt: Path, mmap: bool) -> None:
    want = structure()
    ck = satchel.open(ckpt, mmap=mmap)
    w = ck["model.layers.0.w"]
    t0 = ck["t.0"]
    whole = ck.load()
    ck.close()
    del ck
    gc.collect()
    assert w.tobytes() == want["model"]["layers"][0]["w"].tobytes()
    assert t0.tobytes() == want["t"][0].tobytes()
    assert whole["last"].tolist() == list(range(6))
    w[0, 0] = 42.0  # still writable memory, private to this process
    assert w[0, 0] == 42.0
    assert satchel.load(ckpt)["model"]["layers"][0]["w"][0, 0] != 42.0


def test_closing_keeps_returned_tensors_valid(tmp_path: Path) -> None:
    w = torch.randn(64, 32)
    satchel.save({"w": w, "v": w[3:9]}, tmp_path / "t")
    with satchel.open(tmp_path / "t") as ck:
        got_w, got_v = ck["w"], ck["v"]
    gc.collect()
    assert torch.equal(got_w, w) and torch.equal(got_v, w[3:9])
    got_w[4, 0] = 1000.0
    assert got_v[1, 0].item() == 1000.0


def test_reading_after_close_raises(ckpt: Path) -> None:
    ck = satchel.open(ckpt)
    ck["last"]
    ck.close()
    for name in EXPECTED_KEYS:
        with pytest.raises(satchel.SatchelError):
            ck[name]
    with pytest.raises(satchel.SatchelError):
        ck.load()
    assert "closed" in repr(ck)
    ck.close()  # closing twice is harmless


def test_context_manager_closes(ckpt: Path) -> None:
    with satchel.open(ckpt) as ck:
        first = ck["last"]
    with pytest.raises(satchel.SatchelError):
        ck["model.emb"]
    assert first.tolist() == list(range(6))


def test_metadata(ckpt: Path, tmp_path: Path) -> None:
    with satchel.open(ckpt) as ck:
        meta = ck.metadata
        assert meta == {"epoch": "3", "who": "tests"}
        meta["epoch"] = "changed"
        assert ck.metadata["epoch"] == "3"
        assert ck.checksummed
    satchel.save(np.ones(1), tmp_path / "nometa")
    with satchel.open(tmp_path / "nometa") as ck:
        assert ck.metadata == {}


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("verify", [True, False])
def test_load_returns_the_whole_structure(ckpt: Path, mmap: bool, verify: bool) -> None:
    want = structure()
    with satchel.open(ckpt, mmap=mmap, verify=verify) as ck:
        got = ck.load()
    assert list(got) == list(want)
    assert got["step"] == 3
    assert type(got["t"]) is tuple and got["t"][0] is got["t"][1][0]
    assert list(got["t"][2]) == [7] and got["t"][2][7] == b"raw"
    assert got["model"]["layers"][0]["w"].tobytes() == want["model"]["layers"][0]["w"].tobytes()
    direct = satchel.load(ckpt)
    assert direct["model"]["emb"].tobytes() == got["model"]["emb"].tobytes()


def test_lazy_items_and_load_share_objects(ckpt: Path) -> None:
    with satchel.open(ckpt) as ck:
        first = ck["model.emb"]
        whole = ck.load()
        assert whole["model"]["emb"] is first


def test_open_options_apply_lazily(tmp_path: Path) -> None:
    sd = OrderedDict(w=torch.randn(3, 2, dtype=torch.float64), i=torch.arange(3))
    satchel.save(sd, tmp_path / "sd")
    with satchel.open(tmp_path / "sd", framework="numpy") as ck:
        assert type(ck["w"]) is np.ndarray and ck["w"].dtype == np.float64
    with satchel.open(tmp_path / "sd", dtype=torch.float16, device="cpu") as ck:
        assert ck["w"].dtype == torch.float16 and ck["i"].dtype == torch.int64
        assert type(ck.load()) is OrderedDict


def test_open_plain_values_file(tmp_path: Path) -> None:
    satchel.save({"a": 1, "b": [None, "x"]}, tmp_path / "plain")
    with satchel.open(tmp_path / "plain") as ck:
        assert ck.keys() == []
        assert ck.load() == {"a": 1, "b": [None, "x"]}


def test_structure_shows_the_nesting_with_tensor_infos_and_reads_no_data(tmp_path: Path) -> None:
    p = tmp_path / "s"
    satchel.save({"a": np.zeros((2, 3), np.float32), "b": [np.arange(4), 7, "x"]}, p)
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF  # corrupt data: structure must not need it
    p.write_bytes(bytes(raw))
    with satchel.open(p) as f:
        s = f.structure
    assert s["a"] == satchel.TensorInfo("float32", (2, 3), 24, "numpy")
    assert s["b"][0].shape == (4,) and s["b"][1:] == [7, "x"]


def test_structure_of_a_foreign_file() -> None:
    path = FIXTURES / "torch" / "mlp_checkpoint.pt"
    with satchel.open(path) as f:
        s = f.structure
    assert s["epoch"] == 1
    assert s["model"]["0.weight"].shape == (256, 20)
    assert s["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
