"""Live TensorFlow objects (issue 14): tf.Tensor and tf.Variable saved and given back.

The tutorials' TF column saves tensors with ``np.save(..., allow_pickle=True)``; satchel takes
the tensors themselves, nested as they come, and gives TF tensors back without pickle.
TensorFlow is imported once for the whole session (it takes seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's start-up banner, not errors

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf

import satchel
from satchel import dtypes

ROOT = Path(__file__).resolve().parents[1]


def _manifest(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["satchel"])


def _bits(x: Any) -> bytes:
    """A tensor's exact bytes (NaN payloads and -0.0 included), for bitwise comparison."""
    return np.ascontiguousarray(np.asarray(x)).tobytes()


def _sample(name: str) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(len(name))
    if name == "bool":
        return rng.integers(0, 2, (3, 4)).astype(bool)
    dt = dtypes.get(name).numpy
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, (3, 4), dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))).astype(dt)
    return rng.normal(size=(3, 4)).astype(dt)


@pytest.mark.parametrize("name", [d.name for d in dtypes.DTYPES])
def test_every_satchel_dtype_round_trips_as_a_tf_tensor_bitwise(tmp_path: Path, name: str) -> None:
    arr = _sample(name)
    t = tf.constant(arr)
    assert t.dtype.name == name  # the sample really is a tensor of that dtype
    satchel.save(t, tmp_path / "t")
    back = satchel.load(tmp_path / "t")
    assert isinstance(back, tf.Tensor)
    assert back.dtype == t.dtype and tuple(back.shape) == (3, 4)
    assert _bits(back) == _bits(t)
    # safetensors' own reader sees the same bytes (its NumPy side knows no bfloat16 or
    # float8, and complex128 is raw bytes there, SPEC 2.4).
    if name not in {"bfloat16", "float8_e4m3fn", "float8_e5m2", "complex128"}:
        flat = safetensors.numpy.load_file(tmp_path / "t")
        assert flat["tensor"].tobytes() == _bits(t)


def test_bfloat16_tensor_keeps_its_dtype_and_bits(tmp_path: Path) -> None:
    t = tf.constant([1.5, -0.0, 3.140625, float("inf")], dtype=tf.bfloat16)
    satchel.save({"w": t}, tmp_path / "bf")
    back = satchel.load(tmp_path / "bf")["w"]
    assert back.dtype == tf.bfloat16
    assert _bits(back) == _bits(t)
    assert satchel.load(tmp_path / "bf", framework="numpy")["w"].dtype == ml_dtypes.bfloat16


def test_tutorial_tensor_list_and_dict_come_back_as_tf_tensors(tmp_path: Path) -> None:
    x = tf.range(4)
    y = tf.zeros(4)
    satchel.save(x, tmp_path / "x-file")
    x2 = satchel.load(tmp_path / "x-file")
    assert isinstance(x2, tf.Tensor) and x2.numpy().tolist() == [0, 1, 2, 3]
    satchel.save([x, y], tmp_path / "x-files")
    x3, y3 = satchel.load(tmp_path / "x-files")
    assert x3.numpy().tolist() == [0, 1, 2, 3] and y3.numpy().tolist() == [0.0] * 4
    satchel.save({"x": x, "y": y}, tmp_path / "mydict")
    d = satchel.load(tmp_path / "mydict")
    assert set(d) == {"x", "y"} and all(isinstance(v, tf.Tensor) for v in d.values())
    assert d["y"].dtype == tf.float32


def test_spec_3_6_tensorflow_leaves_record_their_framework(tmp_path: Path) -> None:
    obj = {"t": tf.ones((2, 3)), "v": tf.Variable([1.0, 2.0]), "n": np.arange(3), "s": "x"}
    satchel.save(obj, tmp_path / "m")
    m = _manifest(tmp_path / "m")
    kinds = {leaf["data"]: (leaf["framework"], leaf["kind"]) for leaf in m["leaves"]}
    assert kinds == {
        "t": ("tensorflow", "tensor"),
        "v": ("tensorflow", "parameter"),
        "n": ("numpy", "tensor"),
    }
    back = satchel.load(tmp_path / "m")  # auto: each leaf in the framework it came from
    assert isinstance(back["t"], tf.Tensor) and isinstance(back["n"], np.ndarray)
    assert back["s"] == "x"


def test_nested_structure_keeps_types_and_one_object_twice_is_one_object(tmp_path: Path) -> None:
    w = tf.random.stateless_normal((4, 5), seed=(1, 2))
    obj = {"enc": [w, (w, tf.constant(3))], "meta": {"epoch": 2, "tied": w}}
    satchel.save(obj, tmp_path / "n")
    assert len(safetensors.numpy.load_file(tmp_path / "n")) == 2  # w is stored once
    back = satchel.load(tmp_path / "n")
    assert isinstance(back["enc"], list) and isinstance(back["enc"][1], tuple)
    assert back["enc"][0] is back["enc"][1][0] is back["meta"]["tied"]  # SPEC 5.1
    assert _bits(back["enc"][0]) == _bits(w)
    assert int(back["enc"][1][1]) == 3 and back["meta"]["epoch"] == 2


def test_variable_comes_back_as_variable_with_its_trainable_flag(tmp_path: Path) -> None:
    obj = {"a": tf.Variable([[1.0, 2.0]]), "b": tf.Variable([3], trainable=False)}
    satchel.save(obj, tmp_path / "v")
    back = satchel.load(tmp_path / "v")
    assert all(isinstance(v, tf.Variable) for v in back.values())
    assert back["a"].trainable and not back["b"].trainable
    assert back["a"].numpy().tolist() == [[1.0, 2.0]] and back["b"].dtype == tf.int32
    back["a"].assign([[5.0, 6.0]])  # a live variable, not a view of the file
    assert satchel.load(tmp_path / "v")["a"].numpy().tolist() == [[1.0, 2.0]]


def test_framework_tensorflow_numpy_and_torch_cross_load(tmp_path: Path) -> None:
    import torch

    satchel.save({"n": np.arange(6).reshape(2, 3), "t": torch.ones(2, dtype=torch.float16)},
                 tmp_path / "nt")  # fmt: skip
    as_tf = satchel.load(tmp_path / "nt", framework="tensorflow")
    assert isinstance(as_tf["n"], tf.Tensor) and isinstance(as_tf["t"], tf.Tensor)
    assert as_tf["n"].numpy().tolist() == [[0, 1, 2], [3, 4, 5]] and as_tf["t"].dtype == tf.float16
    satchel.save({"x": tf.constant([1.0, 2.0], dtype=tf.float64)}, tmp_path / "tf")
    assert isinstance(satchel.load(tmp_path / "tf", framework="numpy")["x"], np.ndarray)
    as_torch = satchel.load(tmp_path / "tf", framework="torch")["x"]
    assert isinstance(as_torch, torch.Tensor) and as_torch.tolist() == [1.0, 2.0]
    with satchel.open(tmp_path / "tf") as f:
        assert f.info("x").framework == "tensorflow"  # type: ignore[attr-defined]


def test_load_dtype_and_device_apply_to_tf_tensors(tmp_path: Path) -> None:
    satchel.save({"f": tf.ones(3), "i": tf.range(3), "b": tf.ones(2, tf.bfloat16)}, tmp_path / "c")
    back = satchel.load(tmp_path / "c", dtype="float16", device="cpu")
    assert back["f"].dtype == tf.float16 and back["b"].dtype == tf.float16
    assert back["i"].dtype == tf.int32  # integers are never cast
    assert "CPU" in back["f"].device


def test_load_state_assigns_into_a_mapping_of_tf_variables(tmp_path: Path) -> None:
    satchel.save({"w": tf.fill((2, 2), 7.0), "b": tf.zeros(2)}, tmp_path / "s")
    target = {"w": tf.Variable(tf.zeros((2, 2))), "b": tf.Variable(tf.ones(2))}
    w = target["w"]
    report = satchel.load_state(target, tmp_path / "s")
    assert report.clean and set(report.loaded) == {"w", "b"}
    assert target["w"] is w and w.numpy().tolist() == [[7.0, 7.0], [7.0, 7.0]]
    bad = {"w": tf.Variable(tf.zeros((3, 2))), "b": tf.Variable(tf.ones(2))}
    with pytest.raises(satchel.StateMismatchError, match=r"w: target float32\[3, 2\]"):
        satchel.load_state(bad, tmp_path / "s")
    assert bad["b"].numpy().tolist() == [1.0, 1.0]  # nothing copied on failure


def test_symbolic_and_string_tensors_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(satchel.UnsupportedObjectError, match=r"'names'.*string"):
        satchel.save({"names": tf.constant(["a", "b"])}, tmp_path / "s")

    @tf.function
    def inside(x: tf.Tensor) -> tf.Tensor:
        with pytest.raises(satchel.UnsupportedObjectError, match="symbolic"):
            satchel.save({"x": x}, tmp_path / "g")
        return x

    inside(tf.ones(2))
    assert not list(tmp_path.iterdir())


def test_importing_satchel_and_saving_numpy_imports_no_tensorflow() -> None:
    code = (
        "import sys, tempfile, os, numpy as np, satchel\n"
        "p = os.path.join(tempfile.mkdtemp(), 'x')\n"
        "satchel.save({'a': np.ones(2)}, p); satchel.load(p)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_foreign_files_and_lazy_and_sharded_reads_give_tf_tensors(tmp_path: Path) -> None:
    from fixture_truth import FIXTURES

    h5 = FIXTURES / "keras" / "mlp.weights.h5"  # decoded NumPy arrays, not mapped storage
    as_np = satchel.load(h5)["layers"]["dense"]["vars"]["0"]
    as_tf = satchel.load(h5, framework="tensorflow")["layers"]["dense"]["vars"]["0"]
    assert isinstance(as_tf, tf.Tensor) and _bits(as_tf) == _bits(as_np)
    ckpt = satchel.load(FIXTURES / "tensorflow" / "tf2_ckpt", framework="tensorflow")
    assert int(ckpt["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 1
    obj = {"a": tf.reshape(tf.range(600, dtype=tf.float32), (20, 30)), "b": tf.ones(300)}
    satchel.save(obj, tmp_path / "s")
    with satchel.open(tmp_path / "s") as f:
        a = f["a"]
        assert isinstance(a, tf.Tensor) and _bits(a) == _bits(obj["a"])
    satchel.save(obj, tmp_path / "sharded", max_shard_size=2000)
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) == 2
    back = satchel.load(tmp_path / "sharded")
    assert all(isinstance(v, tf.Tensor) for v in back.values())
    assert [_bits(back[k]) for k in obj] == [_bits(v) for v in obj.values()]


def test_many_tf_tensors_round_trip_in_the_compact_manifest(tmp_path: Path) -> None:
    # Enough tensors that the writer uses the column manifest (SPEC 3.8) when it exists.
    obj = {f"layer{i}": tf.fill((2,), float(i)) for i in range(1200)}
    obj["v"] = tf.Variable([1, 2], dtype=tf.int16, trainable=False)
    satchel.save(obj, tmp_path / "many")
    back = satchel.load(tmp_path / "many")
    assert all(isinstance(back[f"layer{i}"], tf.Tensor) for i in range(1200))
    assert back["layer1199"].numpy().tolist() == [1199.0, 1199.0]
    assert isinstance(back["v"], tf.Variable) and not back["v"].trainable


def test_async_manager_save_of_a_variable_keeps_the_value_save_was_called_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from satchel._checkpoint import manager

    real, entered, gate = manager.plan_item, threading.Event(), threading.Event()

    def held(*a: Any, **kw: Any) -> Any:  # the background save waits before reading anything
        entered.set()
        assert gate.wait(30), "gate never opened"
        return real(*a, **kw)

    monkeypatch.setattr(manager, "plan_item", held)
    v = tf.Variable(np.arange(6, dtype=np.float32), trainable=False)
    with satchel.CheckpointManager(tmp_path) as mgr:
        mgr.save(1, state={"v": v}, blocking=False)
        assert entered.wait(30)
        v.assign_add(np.ones(6, np.float32))  # in place, while the save is still writing
        gate.set()
        mgr.wait()
        got = mgr.restore(1).items["state"]["v"]
    assert isinstance(got, tf.Variable) and not got.trainable
    assert np.array_equal(got.numpy(), np.arange(6, dtype=np.float32))
    assert np.array_equal(v.numpy(), np.arange(1, 7, dtype=np.float32))
