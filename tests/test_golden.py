"""Golden files: the exact bytes satchel writes, and what it reads back from committed files.

``tests/golden/<name>.satchel`` holds ``satchel.save(golden_objects()[name])`` as written when
the format was pinned. Each test either re-saves an object and compares bytes (catching any
unintended change to the format or its determinism), or loads a committed file and checks
values, types and sharing (catching a reader that stops understanding old files).

A deliberate format change regenerates the files, to be reviewed and committed with it::

    PYTHONPATH=src python tests/test_golden.py
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import satchel

GOLDEN = Path(__file__).parent / "golden"
SAFETENSORS_FILE = "safetensors_flat.safetensors"


def golden_objects() -> dict[str, Any]:
    """The pinned objects by file name. Values are exact in binary so no platform rounds them."""
    w = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    embed = torch.nn.Parameter(torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -3.0]]))
    return {
        "flat_numpy": {
            "weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 8,
            "bias": np.array([-1.5, 0.0, 2.25], dtype=np.float32),
            "steps": np.array([1, -2, 2**40], dtype=np.int64),
        },
        "nested": {
            "config": {
                "lr": 0.001,
                "betas": (0.9, 0.999),
                "eps": math.nan,
                "clip": math.inf,
                "floor": -math.inf,
                "name": "adam",
                "amsgrad": False,
                "warmup": None,
                "steps": 10,
                "blob": b"\x00\x01\xfe\xff",
            },
            "schedule": [1, 2.5, [True, None, "x"], ()],
            7: "int key",
            -1: ("tuple", 2),
            "ordered": collections.OrderedDict([("z", 1), ("a", np.int16(3))]),
            "arrays": [np.arange(3, dtype=np.uint8), np.float32(0.5)],
        },
        "torch_shared": {
            "w": w,
            "w_head": w[:2],
            "w_t": w.T,
            "bf16": torch.tensor([1.5, -2.0, 3.25, 0.0078125], dtype=torch.bfloat16),
            "embed": embed,
            "lm_head": embed,  # tied: one stored tensor, one object after loading
            "frozen": torch.nn.Parameter(torch.ones(2, dtype=torch.float16), requires_grad=False),
            "step": torch.tensor(7),
        },
        "lone_0d": torch.tensor(3.5, dtype=torch.float64),
        "lone_empty": torch.zeros((0, 3), dtype=torch.int32),
    }


def safetensors_arrays() -> dict[str, np.ndarray]:
    """What the committed file written by the safetensors library holds."""
    return {
        "layer.weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "layer.bias": np.array([0.5, -0.5], dtype=np.float64),
        "ids": np.array([[3, 1, 2]], dtype=np.int32),
        "mask": np.array([True, False]),
    }


def regenerate() -> None:
    """Rewrite every golden file. Only for a deliberate format change; review the diff."""
    GOLDEN.mkdir(exist_ok=True)
    for name, obj in golden_objects().items():
        satchel.save(obj, GOLDEN / f"{name}.satchel")
    safetensors.numpy.save_file(
        safetensors_arrays(), str(GOLDEN / SAFETENSORS_FILE), metadata={"format": "np"}
    )


def golden(name: str) -> Path:
    return GOLDEN / f"{name}.satchel"


def assert_same(got: Any, want: Any, where: str = "root") -> None:
    """Equal values of exactly the same types, recursively; NaN equals NaN."""
    assert type(got) is type(want), f"{where}: {type(got)} is not {type(want)}"
    if isinstance(want, torch.Tensor):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert torch.equal(got, want), where
        assert got.requires_grad == want.requires_grad, where
    elif isinstance(want, (np.ndarray, np.generic)):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, float):
        assert got == want or (math.isnan(got) and math.isnan(want)), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}.{i}")
    else:
        assert got == want, where


def test_golden_folder_matches_generator() -> None:
    expected = {f"{name}.satchel" for name in golden_objects()} | {SAFETENSORS_FILE}
    assert {p.name for p in GOLDEN.iterdir()} == expected
    assert sum(p.stat().st_size for p in GOLDEN.iterdir()) < 16 * 1024  # keep the repo small


@pytest.mark.parametrize("name", list(golden_objects()))
def test_golden_save_is_byte_identical(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.satchel"
    satchel.save(golden_objects()[name], path)
    assert path.read_bytes() == golden(name).read_bytes(), (
        f"satchel.save no longer writes {golden(name)} byte for byte; if the format changed "
        "on purpose, regenerate with `PYTHONPATH=src python tests/test_golden.py`"
    )


@pytest.mark.parametrize("name", list(golden_objects()))
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_golden_load_values_and_types(name: str, mmap: bool) -> None:
    assert_same(satchel.load(golden(name), mmap=mmap), golden_objects()[name])


def test_golden_flat_numpy_layout() -> None:
    # Pins the header a safetensors reader sees: names, wire dtypes, and data order (SPEC 2.2).
    raw = golden("flat_numpy").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert tensors == {
        "steps": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]},
        "weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [24, 72]},
        "bias": {"dtype": "F32", "shape": [3], "data_offsets": [72, 84]},
    }
    assert len(raw) == 8 + n + 84


def test_golden_nested_structure() -> None:
    out = satchel.load(golden("nested"))
    assert type(out["ordered"]) is collections.OrderedDict
    assert list(out) == ["config", "schedule", 7, -1, "ordered", "arrays"]
    assert out["config"]["blob"] == b"\x00\x01\xfe\xff"
    assert math.isnan(out["config"]["eps"])
    assert type(out["arrays"][1]) is np.float32


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_golden_torch_sharing(mmap: bool) -> None:
    out = satchel.load(golden("torch_shared"), mmap=mmap)
    assert out["embed"] is out["lm_head"]
    assert type(out["embed"]) is torch.nn.Parameter
    assert out["embed"].requires_grad
    assert type(out["frozen"]) is torch.nn.Parameter
    assert not out["frozen"].requires_grad
    storage = out["w"].untyped_storage().data_ptr()
    assert out["w_head"].untyped_storage().data_ptr() == storage
    assert out["w_t"].untyped_storage().data_ptr() == storage
    out["w"][1, 2] = -100  # views of one stored tensor: a write shows through all of them
    assert out["w_head"][1, 2] == -100
    assert out["w_t"][2, 1] == -100
    # The file is a private copy-on-write mapping: the write never reaches it.
    assert satchel.load(golden("torch_shared"))["w"][1, 2] == 5


def test_golden_torch_seen_by_safetensors() -> None:
    # Differential check: the reference reader sees each stored tensor under its own name.
    ref = safetensors.torch.load_file(str(golden("torch_shared")))
    objs = golden_objects()["torch_shared"]
    assert set(ref) == {"w", "bf16", "embed", "frozen", "step"}
    for name, t in ref.items():
        assert torch.equal(t, objs[name].detach()), name


def test_golden_flat_numpy_seen_by_safetensors() -> None:
    ref = safetensors.numpy.load_file(str(golden("flat_numpy")))
    assert_same(dict(sorted(ref.items())), dict(sorted(golden_objects()["flat_numpy"].items())))


@pytest.mark.parametrize("name", list(golden_objects()))
def test_golden_resave_of_loaded_is_byte_identical(tmp_path: Path, name: str) -> None:
    # Loading a checkpoint and saving it again must not change its layout: loaded arrays
    # live in one mapping of the file but are separate tensors, not views of one another.
    path = tmp_path / "again.satchel"
    satchel.save(satchel.load(golden(name)), path)
    assert path.read_bytes() == golden(name).read_bytes()


def test_golden_safetensors_file_loads_flat() -> None:
    path = GOLDEN / SAFETENSORS_FILE
    out = satchel.load(path)
    want = safetensors_arrays()
    assert type(out) is dict
    assert set(out) == set(want)
    for k, v in want.items():
        assert_same(out[k], v, k)
    # SPEC 3.1: data order, which the safetensors library sets by alignment, then name.
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__")
    assert list(out) == sorted(header, key=lambda k: header[k]["data_offsets"])
    with satchel.open(path) as f:
        assert not f.checksummed
        assert f.metadata == {"format": "np"}
        assert f.keys() == list(out)


if __name__ == "__main__":
    regenerate()
