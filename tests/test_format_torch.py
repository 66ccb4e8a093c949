"""PyTorch checkpoints without torch: the genuine torch 2.13 fixtures, differential against torch.

Ground truth: ``tests/fixtures/torch/<fixture>.expected.{json,npz}`` (``torch.load(...,
weights_only=True)``), compared through ``fixture_truth``. Each fixture must also load with
``framework="torch"`` to exactly what ``torch.load(weights_only=True)`` returns: classes
(OrderedDict, Parameter), dtypes, strides, storage offsets, ``_metadata`` and storage sharing.
Beyond the fixtures: TorchScript archives are refused without running anything, the ancient tar
format is refused, and a big-endian archive (``byteorder`` = ``big``) reads correct values.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import satchel
from fixture_truth import (
    FIXTURES,
    assert_matches,
    fixture_paths,
    flat_mismatches,
    leaf_bits,
    load_truth,
    mismatches,
)

TORCH_FIXTURES = fixture_paths("torch")
SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")


def test_every_torch_fixture_is_listed() -> None:
    names = {p.name for p in TORCH_FIXTURES}
    assert names == {
        "misc_tensors.pt",
        "mlp_checkpoint.pt",
        "mlp_state_dict.pt",
        "mlp_state_dict_legacy.pt",
    }


@pytest.mark.parametrize("path", TORCH_FIXTURES, ids=lambda p: p.name)
def test_fixture_loads_as_numpy_to_ground_truth(path: Path) -> None:
    truth = load_truth(path)
    obj = satchel.load(path)
    # Layout too: NumPy views keep torch's strides, and arrays of one storage share memory.
    assert_matches(obj, truth, check_layout=True)


@pytest.mark.parametrize("path", TORCH_FIXTURES, ids=lambda p: p.name)
def test_fixture_loads_as_torch_to_ground_truth(path: Path) -> None:
    truth = load_truth(path)
    assert_matches(satchel.load(path, framework="torch"), truth, check_layout=True)


@pytest.mark.parametrize("path", TORCH_FIXTURES, ids=lambda p: p.name)
def test_fixture_equals_torch_load_weights_only(path: Path) -> None:
    ours = satchel.load(path, framework="torch")
    theirs = torch.load(path, weights_only=True)
    assert_same_as_torch(ours, theirs)


@pytest.mark.parametrize("path", TORCH_FIXTURES, ids=lambda p: p.name)
def test_detect_names_torch(path: Path) -> None:
    assert satchel.detect(path) == "torch"
    assert satchel.detect(str(path)) == "torch"


@pytest.mark.parametrize("path", TORCH_FIXTURES, ids=lambda p: p.name)
def test_open_keys_info_and_getitem(path: Path) -> None:
    truth = load_truth(path)
    with satchel.open(path) as ck:
        keys = ck.keys()
        assert keys == [k.replace("/", ".") for k in truth.tensors]
        assert len(ck) == len(keys)
        assert all(k in ck for k in keys)
        assert list(ck) == keys
        flat = {k: ck[k] for k in keys}
        assert flat_mismatches(flat, truth) == []
        for key, spec in truth.tensors.items():
            info = ck.info(key.replace("/", "."))
            assert info.dtype == spec["dtype"]
            assert tuple(info.shape) == tuple(spec["shape"])
            itemsize = (
                1
                if spec["dtype"] == "bool"
                else np.dtype({"bfloat16": "u2"}.get(spec["dtype"], spec["dtype"])).itemsize
            )
            assert info.nbytes == int(np.prod(spec["shape"], dtype=np.int64)) * itemsize
        with pytest.raises(satchel.MissingKeyError):
            ck["no.such.tensor"]
        with pytest.raises(KeyError):
            ck.info("no.such.tensor")
        assert_matches(ck.load(), truth)
    with satchel.open(path, framework="torch") as ck:
        first = ck.keys()[0]
        t = ck[first]
        assert isinstance(t, torch.Tensor)
        assert leaf_bits(t) == leaf_bits(flat[first])


def test_open_after_close_refuses_reads() -> None:
    ck = satchel.open(FIXTURES / "torch" / "mlp_state_dict.pt")
    ck.close()
    with pytest.raises(satchel.SatchelError):
        ck["0.weight"]


def test_state_dict_metadata_attribute_matches_torch() -> None:
    path = FIXTURES / "torch" / "mlp_state_dict.pt"
    theirs = torch.load(path, weights_only=True)
    for framework in ("numpy", "torch"):
        ours = satchel.load(path, framework=framework)
        assert type(ours) is OrderedDict
        assert ours._metadata == theirs._metadata
        assert type(ours._metadata) is type(theirs._metadata)


def test_shared_storage_is_shared_memory_torch() -> None:
    """misc_tensors.pt: ``view`` is param[1, 5:] ... (offset 25, stride (20, 1)) of ``param``."""
    obj = satchel.load(FIXTURES / "torch" / "misc_tensors.pt", framework="torch")
    param, view = obj["param"], obj["view"]
    assert isinstance(param, torch.nn.Parameter)
    assert type(view) is torch.Tensor
    assert param.untyped_storage().data_ptr() == view.untyped_storage().data_ptr()
    assert view.storage_offset() == 25
    assert view.stride() == (20, 1)
    others = [obj[k] for k in ("f16", "bf16", "i64", "bool", "scalar")]
    ptrs = {t.untyped_storage().data_ptr() for t in others}
    assert len(ptrs) == len(others)
    assert param.untyped_storage().data_ptr() not in ptrs
    # Mutate and observe: element 25 of the storage is param[1, 5] and view[0, 0].
    with torch.no_grad():
        param[1, 5] = 1234.5
    assert view[0, 0].item() == 1234.5


def test_shared_storage_is_shared_memory_numpy() -> None:
    obj = satchel.load(FIXTURES / "torch" / "misc_tensors.pt")
    param, view = obj["param"], obj["view"]
    assert np.shares_memory(param, view)
    assert view.strides == (80, 4)
    if param.flags.writeable:
        param[1, 5] = -7.25
        assert view[0, 0] == -7.25
    for k in ("f16", "bf16", "i64", "bool", "scalar"):
        assert not np.may_share_memory(param, obj[k])


def test_same_tensor_twice_is_one_object(tmp_path: Path) -> None:
    t = torch.arange(6, dtype=torch.float32)
    path = tmp_path / "twice.pt"
    torch.save({"a": t, "b": t, "c": [t, t[2:]]}, path)
    for framework in ("numpy", "torch"):
        obj = satchel.load(path, framework=framework)
        assert obj["a"] is obj["b"]
        assert obj["c"][0] is obj["a"]
        assert np.shares_memory(np.asarray(obj["c"][1]), np.asarray(obj["a"]))
    theirs = torch.load(path, weights_only=True)
    assert_same_as_torch(satchel.load(path, framework="torch"), theirs)


# -- differential comparison with torch.load -----------------------------------------------------
def assert_same_as_torch(ours: Any, theirs: Any) -> None:
    """Same structure, classes, dtypes, layouts, values (bitwise) and sharing as torch.load."""
    storages: dict[int, int] = {}
    objects: dict[int, int] = {}

    def walk(a: Any, b: Any, path: str) -> None:
        assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
        if id(b) in objects:
            assert objects[id(b)] == id(a), f"{path}: torch shares this object, satchel does not"
        objects[id(b)] = id(a)
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype, path
            assert a.shape == b.shape, path
            assert a.stride() == b.stride(), path
            assert a.storage_offset() == b.storage_offset(), path
            assert a.requires_grad == b.requires_grad, path
            assert leaf_bits(a) == leaf_bits(b), f"{path}: values differ"
            pa, pb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
            if pb in storages:
                assert storages[pb] == pa, f"{path}: storage sharing differs from torch"
            else:
                assert pa not in storages.values(), (
                    f"{path}: satchel shares a storage torch does not"
                )
                storages[pb] = pa
        elif isinstance(b, dict):
            assert list(a.keys()) == list(b.keys()), path
            assert [type(k) for k in a] == [type(k) for k in b], path
            for k in b:
                walk(a[k], b[k], f"{path}/{k}")
            if hasattr(b, "_metadata"):
                assert getattr(a, "_metadata", None) == b._metadata, f"{path}: _metadata"
        elif isinstance(b, list | tuple):
            assert len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}/{i}")
        elif isinstance(b, float) and math.isnan(b):
            assert isinstance(a, float) and math.isnan(a), path
        else:
            assert a == b, f"{path}: {a!r} != {b!r}"

    walk(ours, theirs, "<root>")


# -- TorchScript, tar, big-endian ------------------------------------------------------------------
class _Scripted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w + 1


def _torchscript_archive(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(_Scripted()), str(path))
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("/constants.pkl") for n in names)
    assert any("/code/" in n for n in names)
    return path


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = _torchscript_archive(tmp_path)
    assert satchel.detect(path) == "torch"
    for framework in ("numpy", "torch"):
        with pytest.raises(satchel.UnsafeContentError, match="TorchScript"):
            satchel.load(path, framework=framework)
    with pytest.raises(satchel.UnsafeContentError):
        satchel.open(path)
    with pytest.raises(satchel.UnsafeContentError):
        satchel.convert(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_torchscript_archive_without_constants_is_still_refused(tmp_path: Path) -> None:
    """Dropping constants.pkl (torch's own marker) must not turn the code archive into data."""
    src = _torchscript_archive(tmp_path)
    dst = tmp_path / "no_constants.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("constants.pkl"):
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(satchel.UnsafeContentError, match="TorchScript"):
        satchel.load(dst)


def test_torchscript_refusal_runs_nothing(tmp_path: Path) -> None:
    """In a fresh interpreter: refused, torch never imported, no code compiled or executed."""
    path = _torchscript_archive(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        import satchel
        events = []
        def hook(event, args):
            if event in ("exec", "compile", "os.system", "subprocess.Popen", "os.posix_spawn",
                         "pickle.find_class", "marshal.loads") or event.startswith("os.exec"):
                events.append(event)
        sys.addaudithook(hook)
        try:
            satchel.load({str(path)!r})
        except satchel.UnsafeContentError:
            outcome = "refused"
        else:
            outcome = "LOADED"
        assert outcome == "refused", outcome
        assert "torch" not in sys.modules, "torch was imported"
        assert events == [], events
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_tar_format_is_refused(tmp_path: Path) -> None:
    """The torch < 0.4 tar checkpoint (members sys_info, storages, tensors, pickle)."""
    path = tmp_path / "ancient.pt"
    with tarfile.open(path, "w") as tf:
        for name, data in (
            ("sys_info", b"\x80\x02}q\x00."),
            ("storages", b"\x80\x02K\x00."),
            ("tensors", b"\x80\x02K\x00."),
            ("pickle", b"\x80\x02cposix\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85R."),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert satchel.detect(path) == "torch-tar"
    with pytest.raises(satchel.FormatError, match="tar"):
        satchel.load(path)
    with pytest.raises(satchel.FormatError):
        satchel.open(path)


def _rewrite_zip(src: Path, dst: Path, change: Any) -> None:
    """Copy a torch zip member by member, letting ``change(name, data)`` replace payloads."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info)))


def _storage_itemsizes(truth_path: Path) -> dict[str, int]:
    """Record key -> item size, from the ground truth (keys follow first-encounter order)."""
    doc = load_truth(truth_path).doc
    sizes: dict[str, int] = {}

    def walk(n: Any) -> None:
        if n.get("kind") == "tensor":
            dt = {"bfloat16": "u2", "bool": "u1"}.get(n["dtype"], n["dtype"])
            sizes[str(n["storage"]["id"])] = np.dtype(dt).itemsize
        for it in n.get("items", []):
            walk(it["value"] if "value" in it and "key" in it else it)

    walk(doc["root"])
    return sizes


@pytest.mark.parametrize("name", ["misc_tensors.pt", "mlp_checkpoint.pt"])
def test_big_endian_archive_reads_correct_values(tmp_path: Path, name: str) -> None:
    src = FIXTURES / "torch" / name
    sizes = _storage_itemsizes(src)
    dst = tmp_path / f"big_{name}"

    def change(member: str, data: bytes) -> bytes:
        rest = member.split("/", 1)[1]
        if rest == "byteorder":
            assert data == b"little"
            return b"big"
        if rest.startswith("data/"):
            size = sizes[rest[5:]]
            return np.frombuffer(data, dtype=f"<u{size}").astype(f">u{size}").tobytes()
        return data

    _rewrite_zip(src, dst, change)
    assert zipfile.ZipFile(dst).read(f"{src.stem}/byteorder") == b"big"
    truth = load_truth(src)
    # torch itself reads the rewritten file to the same truth: the rewrite is faithful.
    assert_matches(torch.load(dst, weights_only=True), truth)
    assert_matches(satchel.load(dst), truth, check_layout=True)
    assert_matches(satchel.load(dst, framework="torch"), truth, check_layout=True)
    assert_same_as_torch(satchel.load(dst, framework="torch"), torch.load(dst, weights_only=True))


def test_unknown_byteorder_is_refused(tmp_path: Path) -> None:
    src = FIXTURES / "torch" / "mlp_state_dict.pt"
    dst = tmp_path / "odd.pt"
    _rewrite_zip(src, dst, lambda m, d: b"middle" if m.endswith("/byteorder") else d)
    with pytest.raises(satchel.FormatError, match="byteorder"):
        satchel.load(dst)


def test_archive_prefix_comes_from_the_first_member(tmp_path: Path) -> None:
    """docs/formats.md#torch-zip: the prefix comes from the first entry, not from the file name."""
    src = FIXTURES / "torch" / "mlp_state_dict.pt"
    dst = tmp_path / "renamed_file.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr("some_other_prefix/" + info.filename.split("/", 1)[1], zin.read(info))
    assert_matches(satchel.load(dst), load_truth(src))


def test_storage_shorter_than_declared_is_refused(tmp_path: Path) -> None:
    """CVE-2026-24747 class: the declared element count must match the record's bytes."""
    src = FIXTURES / "torch" / "mlp_state_dict.pt"
    dst = tmp_path / "short.pt"
    _rewrite_zip(src, dst, lambda m, d: d[:-4] if m.endswith("/data/0") else d)
    with pytest.raises(satchel.FormatError, match="bytes"):
        satchel.load(dst)


def test_missing_storage_record_is_refused(tmp_path: Path) -> None:
    src = FIXTURES / "torch" / "mlp_state_dict.pt"
    dst = tmp_path / "missing.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/1"):
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(satchel.FormatError, match="data/1"):
        satchel.load(dst)


def test_zip_without_data_pkl_is_refused(tmp_path: Path) -> None:
    dst = tmp_path / "nodata.pt"
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("archive/version", b"3\n")
        z.writestr("archive/data/0", b"\0" * 8)
    assert satchel.detect(dst) == "torch"
    with pytest.raises(satchel.FormatError, match=r"data\.pkl"):
        satchel.load(dst)


def test_legacy_file_with_trailing_bytes_is_refused(tmp_path: Path) -> None:
    src = FIXTURES / "torch" / "mlp_state_dict_legacy.pt"
    dst = tmp_path / "legacy_trailing.pt"
    dst.write_bytes(src.read_bytes() + b"PK\x03\x04 appended polyglot")
    with pytest.raises(satchel.FormatError, match="bytes after"):
        satchel.load(dst)


def test_legacy_file_truncated_is_refused(tmp_path: Path) -> None:
    raw = (FIXTURES / "torch" / "mlp_state_dict_legacy.pt").read_bytes()
    for cut in (20, 200, 700, 780, len(raw) // 2, len(raw) - 1):
        dst = tmp_path / f"legacy_cut_{cut}.pt"
        dst.write_bytes(raw[:cut])
        with pytest.raises(satchel.SatchelError):
            satchel.load(dst)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(12, dtype=torch.float64).reshape(3, 4).t(),  # transposed: non-C strides
        torch.arange(10, dtype=torch.int16)[::3],  # stepped view
        torch.zeros(0, 3, dtype=torch.float16),
        torch.tensor(3.5, dtype=torch.bfloat16),
        torch.tensor([1, 2, 3], dtype=torch.uint16),
        torch.tensor([2**40, 5], dtype=torch.uint64),
        torch.tensor([0.5, -2.0], dtype=torch.float8_e4m3fn),
        torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
        torch.tensor([True, False, True]),
    ],
    ids=["transposed", "stepped", "empty", "bf16-0d", "u16-v3", "u64-v3", "f8-v3", "c64", "bool"],
)
def test_torch_written_layouts_match_torch(tmp_path: Path, tensor: torch.Tensor) -> None:
    path = tmp_path / "t.pt"
    torch.save({"t": tensor, "base": tensor}, path)
    theirs = torch.load(path, weights_only=True)
    assert_same_as_torch(satchel.load(path, framework="torch"), theirs)
    ours_np = satchel.load(path)
    assert leaf_bits(ours_np["t"])[1:] == leaf_bits(theirs["t"])[1:]


# -- the comparer itself is not vacuous ------------------------------------------------------------
def test_fixture_truth_catches_differences() -> None:
    path = FIXTURES / "torch" / "misc_tensors.pt"
    truth = load_truth(path)
    good = satchel.load(path, framework="torch")
    assert mismatches(good, truth, check_layout=True) == []

    def problems(**changes: Any) -> str:
        return "\n".join(mismatches({**good, **changes}, truth, check_layout=True))

    flipped = good["f16"].clone()
    flipped.view(torch.int16)[0, 0] ^= 1
    assert "f16: values differ" in problems(f16=flipped)
    bf16 = good["bf16"].clone()
    bf16.view(torch.int16)[2] ^= 1
    assert "bf16: values differ" in problems(bf16=bf16)
    assert "i64: dtype int32 != int64" in problems(i64=good["i64"].to(torch.int32))
    assert "scalar: shape [1] != []" in problems(scalar=good["scalar"].reshape(1))
    unshared = problems(view=good["view"].clone())
    assert "tensors of storage 0 do not share memory" in unshared
    assert "param: class Tensor" in problems(param=good["param"].detach())
    assert "requires_grad" in problems(param=torch.nn.Parameter(good["param"], requires_grad=False))
    reordered = dict(reversed(list(good.items())))
    assert "keys in order" in "\n".join(mismatches(reordered, truth))
    assert "expected a plain dict" in "\n".join(mismatches(OrderedDict(good), truth))

    ck_path = FIXTURES / "torch" / "mlp_checkpoint.pt"
    ck_truth = load_truth(ck_path)
    ck = satchel.load(ck_path)
    assert mismatches(ck, ck_truth) == []
    assert "epoch: expected int 1" in "\n".join(mismatches({**ck, "epoch": 1.0}, ck_truth))
    assert "epoch: expected int 1" in "\n".join(mismatches({**ck, "epoch": True}, ck_truth))
    assert "loss: expected" in "\n".join(mismatches({**ck, "loss": ck["loss"] + 1e-9}, ck_truth))
    del ck["model"]._metadata
    assert "model: has no _metadata attribute" in "\n".join(mismatches(ck, ck_truth))
    ck = satchel.load(ck_path)
    state = ck["optimizer"]["state"]
    ck["optimizer"]["state"] = {float(k): v for k, v in state.items()}  # 0.0 == 0
    assert "not int" in "\n".join(mismatches(ck, ck_truth))


def test_torchscript_archive_with_extra_files_first_is_recognised(tmp_path: Path) -> None:
    """Issue 8.6c: torch.jit.save(_extra_files=...) writes ``extra/`` first; still torch, still
    refused as TorchScript exactly like the archive without extra files."""
    path = tmp_path / "scripted_extra.pt"
    torch.jit.save(
        torch.jit.script(_Scripted()), str(path), _extra_files={"meta.json": '{"a": 1}' * 600}
    )
    first = zipfile.ZipFile(path).namelist()[0]
    assert first.split("/", 1)[1].startswith("extra/")
    assert satchel.detect(path) == "torch"
    with pytest.raises(satchel.UnsafeContentError, match="TorchScript"):
        satchel.load(path)
    with pytest.raises(satchel.UnsafeContentError, match="TorchScript"):
        satchel.open(path)


def _rezip(src: Path, dst: Path, order: Any) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in order(zin.infolist()):
            zout.writestr(info.filename, zin.read(info))


@pytest.mark.parametrize("order", ["reversed", "storages first"])
def test_torch_zip_members_in_any_order_load_the_same(tmp_path: Path, order: str) -> None:
    src = tmp_path / "sd.pt"
    torch.save(OrderedDict(w=torch.arange(12.0).reshape(3, 4), b=torch.ones(3)), src)
    dst = tmp_path / "reordered.pt"
    if order == "reversed":
        _rezip(src, dst, lambda infos: infos[::-1])
    else:
        _rezip(src, dst, lambda infos: sorted(infos, key=lambda i: "/data/" not in i.filename))
    assert not zipfile.ZipFile(dst).namelist()[0].endswith("data.pkl")
    assert satchel.detect(dst) == "torch"
    got = satchel.load(dst, framework="torch")
    want = torch.load(dst, weights_only=True)
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k])


def _flip_tensor_bit(path: Path, member_suffix: str) -> str:
    """Flip one bit in the middle of a stored member's bytes; returns the member's name."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    at = info.header_offset  # the local header: 30 bytes, then the name and the extra field
    name_len = int.from_bytes(raw[at + 26 : at + 28], "little")
    extra_len = int.from_bytes(raw[at + 28 : at + 30], "little")
    start = at + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    return info.filename


def test_flipped_bit_in_tensor_data_is_an_integrity_error(tmp_path: Path) -> None:
    """Issue 8.6a: torch.load returns changed values; satchel's verify names the member."""
    path = tmp_path / "flipped.pt"
    original = torch.arange(1000, dtype=torch.float32)
    torch.save({"w": original, "b": torch.ones(4)}, path)
    member = _flip_tensor_bit(path, "/data/0")
    assert not torch.equal(torch.load(path, weights_only=True)["w"], original)  # torch: silent
    with pytest.raises(satchel.IntegrityError, match=f"{member}.*CRC-32") as info:
        satchel.load(path)
    assert info.value.field == member
    with pytest.raises(satchel.IntegrityError):
        satchel.convert(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    # Lazily: opening reads no tensor data; the damaged tensor fails when used, the other loads.
    with satchel.open(path) as f:
        np.testing.assert_array_equal(f["b"], np.ones(4, dtype=np.float32))
        with pytest.raises(satchel.IntegrityError, match=member):
            f["w"]
    # verify=False reads what torch.load reads.
    changed = satchel.load(path, verify=False, framework="torch")["w"]
    assert torch.equal(changed, torch.load(path, weights_only=True)["w"])


def test_flipped_bit_in_data_pkl_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "flipped_pkl.pt"
    torch.save({"w": torch.ones(3)}, path)
    member = _flip_tensor_bit(path, "/data.pkl")
    with pytest.raises(satchel.IntegrityError, match=member):
        satchel.load(path)
