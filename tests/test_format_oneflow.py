"""OneFlow checkpoints without OneFlow: all three generations (docs/formats.md#oneflow).

Ground truth: ``tests/fixtures/oneflow/<fixture>.expected.{json,npz}`` (``oneflow.load`` under
oneflow 0.9.0; the single file is EMULATED, see the fixture README), compared through
``fixture_truth``. The legacy snapshot's key order is ``os.listdir`` order in OneFlow, so its
keys are compared as a set (its ``notes`` say so). Beyond the fixtures: hand-made snapshot
folders for every dtype, and damaged or hostile folders (path escapes, symlinks, sizes).
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import struct
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

import satchel
from fixture_truth import FIXTURES, assert_matches, fixture_paths, flat_mismatches, load_truth

ONEFLOW_FIXTURES = fixture_paths("oneflow")
LEGACY = FIXTURES / "oneflow" / "legacy_snapshot"

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def _unordered(path: Path) -> list[str]:
    notes = " ".join(load_truth(path).notes)
    return ["<root>"] if "as a set" in notes else []


def test_every_oneflow_fixture_is_listed() -> None:
    assert {p.name for p in ONEFLOW_FIXTURES} == {
        "EMULATED_v1_single_file.of",
        "legacy_snapshot",
        "mlp_checkpoint",
        "mlp_state_dict",
    }
    assert _unordered(LEGACY) == ["<root>"]


@pytest.mark.parametrize("path", ONEFLOW_FIXTURES, ids=lambda p: p.name)
def test_fixture_loads_as_numpy_to_ground_truth(path: Path) -> None:
    truth = load_truth(path)
    assert_matches(satchel.load(path), truth, unordered=_unordered(path))


@pytest.mark.parametrize("path", ONEFLOW_FIXTURES, ids=lambda p: p.name)
def test_fixture_loads_as_torch_to_ground_truth(path: Path) -> None:
    """Values, shapes and dtypes as torch tensors; Parameters stay Parameters."""
    truth = load_truth(path)
    obj = satchel.load(path, framework="torch")
    assert_matches(obj, truth, unordered=_unordered(path), check_layout=True)


@pytest.mark.parametrize("path", ONEFLOW_FIXTURES, ids=lambda p: p.name)
def test_detect_names_oneflow(path: Path) -> None:
    assert satchel.detect(path) == "oneflow"


@pytest.mark.parametrize("path", ONEFLOW_FIXTURES, ids=lambda p: p.name)
def test_open_keys_info_and_getitem(path: Path) -> None:
    truth = load_truth(path)
    want = [k.replace("/", ".") for k in truth.tensors]
    with satchel.open(path) as ck:
        keys = ck.keys()
        if _unordered(path):
            assert sorted(keys) == sorted(want)
        else:
            assert keys == want
        flat = {k: ck[k] for k in keys}
        assert flat_mismatches(flat, truth) == []
        for key, spec in truth.tensors.items():
            info = ck.info(key.replace("/", "."))
            assert (info.dtype, tuple(info.shape)) == (spec["dtype"], tuple(spec["shape"]))
        with pytest.raises(satchel.MissingKeyError):
            ck["nope"]
    with satchel.open(path, framework="torch") as ck:
        assert all(isinstance(ck[k], torch.Tensor) for k in ck)


def test_state_dict_keeps_metadata_attribute() -> None:
    for name in ("mlp_state_dict", "EMULATED_v1_single_file.of"):
        obj = satchel.load(FIXTURES / "oneflow" / name)
        assert type(obj) is OrderedDict
        # oneflow 0.9.0 leaves the attribute empty (the ground truth records it so).
        assert isinstance(obj._metadata, OrderedDict)
        assert obj._metadata == OrderedDict()


def test_checkpoint_optimizer_state_has_int_keys() -> None:
    obj = satchel.load(FIXTURES / "oneflow" / "mlp_checkpoint")
    state = obj["optimizer"]["state"]
    assert [k for k in state if type(k) is int] == [0, 1, 2, 3]
    assert obj["optimizer"]["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert obj["optimizer"]["param_groups"][0]["_options"]["betas"] == (0.9, 0.999)


def test_oneflow_load_never_imports_torch_or_oneflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, satchel\n"
        f"satchel.load({str(FIXTURES / 'oneflow' / 'mlp_checkpoint')!r})\n"
        f"satchel.load({str(FIXTURES / 'oneflow' / 'EMULATED_v1_single_file.of')!r})\n"
        "assert 'torch' not in sys.modules and 'oneflow' not in sys.modules\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]


# -- hand-made snapshot folders -------------------------------------------------------------------
ONEFLOW_TYPES = {
    "kInt8": np.int8,
    "kChar": np.int8,
    "kFloat": np.float32,
    "kDouble": np.float64,
    "kInt32": np.int32,
    "kInt64": np.int64,
    "kUInt8": np.uint8,
    "kFloat16": np.float16,
    "kBFloat16": ml_dtypes.bfloat16,
    "kBool": np.bool_,
    "kUInt16": np.uint16,
    "kUInt32": np.uint32,
    "kUInt64": np.uint64,
    "kInt16": np.int16,
    "kComplex64": np.complex64,
    "kComplex128": np.complex128,
}


def _meta(shape: tuple[int, ...], kind: str, extra: str = "") -> bytes:
    dims = "".join(f"  dim: {n}\n" for n in shape)
    return f"shape {{\n{dims}}}\n{extra}data_type: {kind}\n".encode("ascii")


def _variable(folder: Path, name: str, arr: np.ndarray, kind: str, extra: str = "") -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "meta").write_bytes(_meta(arr.shape, kind, extra))
    (folder / name / "out").write_bytes(np.ascontiguousarray(arr).tobytes())


def _snapshot(tmp_path: Path, arrays: dict[str, tuple[np.ndarray, str]]) -> Path:
    folder = tmp_path / "snap"
    folder.mkdir()
    for name, (arr, kind) in arrays.items():
        _variable(folder, name, arr, kind)
    (folder / "snapshot_done").write_bytes(b"")
    return folder


def test_snapshot_every_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for i, (kind, dt) in enumerate(ONEFLOW_TYPES.items()):
        shape = [(2, 3), (4,), (), (0, 5), (1, 1, 3)][i % 5]
        raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dt).itemsize, dtype=np.uint8)
        arr = (
            raw.view(dt).reshape(shape)
            if dt is not np.bool_
            else (raw % 2).astype(bool).reshape(shape)
        )
        arrays[f"v.{kind}"] = (arr, kind)
    folder = _snapshot(tmp_path, arrays)
    assert satchel.detect(folder) == "oneflow"
    obj = satchel.load(folder)
    assert sorted(obj) == sorted(arrays)
    for name, (arr, _) in arrays.items():
        got = obj[name]
        assert got.dtype == arr.dtype, name
        assert got.shape == arr.shape, name
        assert got.tobytes() == arr.tobytes(), name
    as_torch = satchel.load(folder, framework="torch")
    assert as_torch["v.kBFloat16"].dtype == torch.bfloat16


def test_meta_with_unknown_fields_is_read(tmp_path: Path) -> None:
    """A later VariableMetaInfo revision adds ``stride``; text readers skip unknown fields."""
    folder = tmp_path / "snap"
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    _variable(folder, "w", arr, "kFloat", extra="stride {\n  dim: 3\n  dim: 1\n}\n# comment\n")
    (folder / "snapshot_done").touch()
    np.testing.assert_array_equal(satchel.load(folder)["w"], arr)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    dst.chmod(dst.stat().st_mode | stat.S_IWUSR)
    return dst


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        ("no_snapshot_done", satchel.FormatError),
        ("short_out", satchel.FormatError),
        ("long_out", satchel.FormatError),
        ("no_meta", satchel.FormatError),
        ("bad_dtype", satchel.FormatError),
        ("kOFRecord", satchel.FormatError),
        ("bad_dim", satchel.FormatError),
        ("unbalanced", satchel.FormatError),
        ("binary_meta", satchel.FormatError),
        ("out_symlink", satchel.FormatError),
        ("huge_meta", satchel.FormatError),
    ],
)
def test_damaged_snapshot_is_refused(tmp_path: Path, damage: str, error: type) -> None:
    folder = _copy(LEGACY, tmp_path)
    var = folder / "0.bias"
    meta = var / "meta"
    if damage == "no_snapshot_done":
        (folder / "snapshot_done").unlink()
    elif damage == "short_out":
        (var / "out").write_bytes((var / "out").read_bytes()[:-1])
    elif damage == "long_out":
        (var / "out").write_bytes((var / "out").read_bytes() + b"\0\0\0\0")
    elif damage == "no_meta":
        meta.unlink()
    elif damage == "bad_dtype":
        meta.write_bytes(_meta((256,), "kNotAType"))
    elif damage == "kOFRecord":
        meta.write_bytes(_meta((256,), "kOFRecord"))
    elif damage == "bad_dim":
        meta.write_bytes(b"shape {\n  dim: -256\n}\ndata_type: kFloat\n")
    elif damage == "unbalanced":
        meta.write_bytes(b"shape {\n  dim: 256\ndata_type: kFloat\n")
    elif damage == "binary_meta":
        meta.write_bytes(b"\xff\xfe\x00shape")
    elif damage == "out_symlink":
        target = tmp_path / "outside"
        target.write_bytes(b"\0" * 1024)
        (var / "out").unlink()
        (var / "out").symlink_to(target)
    elif damage == "huge_meta":
        meta.write_bytes(b"# " + b"x" * (70 << 10) + b"\n" + _meta((256,), "kFloat"))
    if damage == "no_snapshot_done":
        # Without the marker and without pickled_data the folder is no OneFlow checkpoint.
        with pytest.raises(satchel.FormatError):
            satchel.load(folder)
        return
    with pytest.raises(error):
        satchel.load(folder)


def test_snapshot_with_a_symlinked_variable_folder_does_not_read_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside_var"
    _variable(tmp_path, "outside_var", np.arange(3, dtype=np.float32), "kFloat")
    folder = _copy(LEGACY, tmp_path)
    (folder / "evil").symlink_to(outside, target_is_directory=True)
    obj = satchel.load(folder)
    assert "evil" not in obj
    assert set(obj) == set(load_truth(LEGACY).tensors)


def test_huge_dims_do_not_allocate(tmp_path: Path) -> None:
    folder = tmp_path / "snap"
    (folder / "w").mkdir(parents=True)
    (folder / "w" / "meta").write_bytes(_meta((2**31, 2**31, 2**31), "kDouble"))
    (folder / "w" / "out").write_bytes(b"\0" * 8)
    (folder / "snapshot_done").touch()
    with pytest.raises(satchel.FormatError, match="bytes"):
        satchel.load(folder)


# -- pickled_data folders (generation b) --------------------------------------------------------
def _text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _tensor_pickle(path_value: object) -> bytes:
    """What oneflow 0.9 writes (docs/formats.md#oneflow-folder), by hand:
    {'protocol_version': 1, 'data': {'w': STACK_GLOBAL oneflow Tensor, NEWOBJ, BUILD {'path':
    path_value}}}."""
    if isinstance(path_value, str):
        value = _text(path_value)
    elif isinstance(path_value, int):
        value = b"J" + struct.pack("<i", path_value)
    else:
        value = b"N"
    tensor = _text("oneflow") + _text("Tensor") + b"\x93)\x81}" + _text("path") + value + b"sb"
    data = b"}" + _text("w") + tensor + b"s"
    return b"\x80\x04}(" + _text("protocol_version") + b"K\x01" + _text("data") + data + b"u."


def _pickled_folder(tmp_path: Path, path_value: object, *, with_var: bool = True) -> Path:
    folder = tmp_path / "ck"
    folder.mkdir()
    if with_var:
        _variable(folder, "tensor_1", np.arange(4, dtype=np.float32), "kFloat")
    (folder / "pickled_data").write_bytes(_tensor_pickle(path_value))
    return folder


def test_pickled_folder_hand_made_reads(tmp_path: Path) -> None:
    folder = _pickled_folder(tmp_path, "tensor_1")
    assert satchel.detect(folder) == "oneflow"
    np.testing.assert_array_equal(satchel.load(folder)["w"], np.arange(4, dtype=np.float32))


@pytest.mark.parametrize(
    "evil",
    ["../tensor_1", "/etc", "tensor_1/../../x", "..", ".", "a/b", "", "x\x00y", 7, None],
)
def test_tensor_path_escapes_are_refused(tmp_path: Path, evil: object) -> None:
    folder = _pickled_folder(tmp_path, evil)
    with pytest.raises((satchel.UnsafeContentError, satchel.FormatError)):
        satchel.load(folder)


def test_tensor_path_symlink_out_is_refused(tmp_path: Path) -> None:
    folder = _pickled_folder(tmp_path, "linked")
    _variable(tmp_path, "elsewhere", np.arange(4, dtype=np.float32), "kFloat")
    (folder / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(satchel.FormatError):
        satchel.load(folder)


def test_missing_tensor_folder_is_refused(tmp_path: Path) -> None:
    folder = _pickled_folder(tmp_path, "tensor_9")
    with pytest.raises(satchel.FormatError, match="missing"):
        satchel.load(folder)


def test_pickled_data_wrapper_must_be_oneflow_payload(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "pickled_data").write_bytes(pickle.dumps({"data": 1}, protocol=4))
    with pytest.raises(satchel.FormatError, match="protocol_version"):
        satchel.load(folder)
    (folder / "pickled_data").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(satchel.FormatError):
        satchel.load(folder)


# -- single file (generation c) --------------------------------------------------------------------
def test_single_file_without_marker_is_not_oneflow(tmp_path: Path) -> None:
    path = tmp_path / "x.of"
    path.write_bytes(pickle.dumps({"protocol_version": 1, "data": {"a": 1}}, protocol=4))
    with pytest.raises(satchel.FormatError):
        satchel.detect(path)
    with pytest.raises(satchel.SatchelError):
        satchel.load(path)


def test_single_file_plain_payload(tmp_path: Path) -> None:
    path = tmp_path / "x.of"
    payload = {"protocol_version": 1, "__oneflow__": None, "data": {"a": [1, 2.5, "s", None]}}
    path.write_bytes(pickle.dumps(payload, protocol=4))
    assert satchel.detect(path) == "oneflow"
    assert satchel.load(path) == {"a": [1, 2.5, "s", None]}


def test_single_file_truncated_is_refused(tmp_path: Path) -> None:
    raw = (FIXTURES / "oneflow" / "EMULATED_v1_single_file.of").read_bytes()
    for cut in (300, len(raw) // 3, len(raw) // 2, len(raw) - 1):
        path = tmp_path / f"cut{cut}.of"
        path.write_bytes(raw[:cut])
        with pytest.raises(satchel.FormatError):
            satchel.load(path)


def test_single_file_numpy_arrays_become_torch_tensors_correctly() -> None:
    """framework="torch" must give the same values as framework="numpy", tensor by tensor."""
    path = FIXTURES / "oneflow" / "EMULATED_v1_single_file.of"
    as_np = satchel.load(path)
    as_pt = satchel.load(path, framework="torch")
    assert list(as_pt) == list(as_np)
    for k in as_np:
        assert tuple(as_pt[k].shape) == as_np[k].shape, k
        np.testing.assert_array_equal(as_pt[k].detach().numpy(), as_np[k], err_msg=k)
