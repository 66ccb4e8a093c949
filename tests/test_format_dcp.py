"""PyTorch Distributed Checkpoint folders without torch (docs/formats.md#dcp).

Every checkpoint here is written by the real ``torch.distributed.checkpoint.save``: in one
process without a process group, and by two gloo ranks saving sharded ``DTensor``s, so tensors
really arrive in several chunks. Differential: ``satchel.load(folder, framework="torch")`` must
equal ``dcp_to_torch_save`` + ``torch.load(weights_only=True)`` exactly (keys and their order,
containers, dtypes, shapes, strides, values). Then conversion, the command line, and hostile
folders: metadata edited with torch's own pickle, then read by satchel.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel._cli import main
from satchel.errors import FormatError, IntegrityError, SatchelError, UnsafeContentError
from satchel.formats import dcp
from satchel.formats._dcp_metadata import Chunk, Item
from satchel.formats._reader import probe
from satchel.formats.detect import sniffed

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
DCP = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:The given NumPy array is not writable",
    "ignore:torch.distributed is disabled",
    "ignore:Detected an existing checkpoint",
)


# -- writing real checkpoints --------------------------------------------------------------------
def _save(state: dict[str, Any], folder: Path, **writer: Any) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if writer:
            storage = DCP.FileSystemWriter(folder, **writer)
            DCP.save(state, storage_writer=storage, no_dist=True)
        else:
            DCP.save(state, checkpoint_id=folder, no_dist=True)
    return folder


def _training_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 6)).square().sum().backward()
        opt.step()
    return {
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "extra": {
            "bf16": torch.randn(7).to(torch.bfloat16),
            "fp16": torch.randn(2, 3).to(torch.float16),
            "int64": torch.arange(-5, 5),
            "scalar": torch.tensor(2.5),
            "flags": torch.tensor([True, False]),
            "transposed": torch.arange(12.0).reshape(3, 4).T,
            "big": torch.randn(64, 512),  # 128 KiB: several 100 KB shards on conversion
            "empty": torch.zeros(0, 3),
        },
        "step": 12,
        "name": "run-7",
        "schedule": [0.1, 0.01],
        "pair": (3, torch.ones(2)),  # a tuple is one bytes item, its tensor inside it
        "nothing": None,
    }


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(_training_state(), tmp_path_factory.mktemp("dcp") / "single")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": {"k": 3}, "h": torch.ones(2).half()}
    return _save(state, tmp_path_factory.mktemp("dcp") / "small")


def _rank(rank: int, world: int, store: str, folder: str) -> None:
    """One gloo rank: a nested state dict of DTensors sharded over a 1-D CPU mesh of 2."""
    from torch.distributed.tensor import (
        Replicate,
        Shard,
        distribute_tensor,
        init_device_mesh,
    )

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)  # every rank builds the same full tensors
        full = {
            "rows": torch.randn(5, 3),  # uneven: 3 + 2 rows
            "cols": torch.randn(4, 6),  # split along dim 1
            "tiny": torch.randn(1, 2),  # rank 1's chunk is empty
            "bf16": torch.randn(8, 2).to(torch.bfloat16),
            "rep": torch.randn(3),
        }
        state = {
            "model": {
                "rows": distribute_tensor(full["rows"], mesh, [Shard(0)]),
                "cols": distribute_tensor(full["cols"], mesh, [Shard(1)]),
                "tiny": distribute_tensor(full["tiny"], mesh, [Shard(0)]),
                "bf16": distribute_tensor(full["bf16"], mesh, [Shard(0)]),
                "rep": distribute_tensor(full["rep"], mesh, [Replicate()]),
            },
            "plain": torch.arange(10),
            "epoch": 3,
        }
        DCP.save(state, checkpoint_id=folder)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("dcp")
    folder = root / "sharded"
    args = (2, str(root / "store"), str(folder))
    ctx = mp.start_processes(_rank, args=args, nprocs=2, join=False, start_method="spawn")
    for _ in range(60):  # at most 2 minutes
        if ctx.join(timeout=2):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail("the 2-rank DCP save did not finish in 2 minutes")
    return folder


# -- comparing with torch ------------------------------------------------------------------------
def _reference(folder: Path, tmp: Path) -> Any:
    out = tmp / f"{folder.name}.pt"
    dcp_to_torch_save(folder, out)
    return torch.load(out, weights_only=True)


def assert_same(got: Any, want: Any, path: str = "") -> None:
    """Equal as torch sees it, plus container classes, key order, dtypes and strides."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{path}: {type(got).__name__}"
        assert (got.dtype, got.shape, got.stride()) == (want.dtype, want.shape, want.stride()), path
        assert not got.requires_grad, path
        assert torch.equal(got, want), path
        return
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), path
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def test_detected_as_dcp(single: Path, sharded: Path) -> None:
    assert satchel.detect(single) == "dcp"
    assert satchel.detect(sharded) == "dcp"
    assert not dcp.sniff(probe(single / "__0_0.distcp"))


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_loads_as_dcp_to_torch_save(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    folder = request.getfixturevalue(which)
    assert_same(satchel.load(folder, framework="torch"), _reference(folder, tmp_path))


def test_sharded_tensors_have_several_chunks(sharded: Path) -> None:
    meta = pickle.loads((sharded / ".metadata").read_bytes())  # torch's own view, for the test
    chunks = {k: len(v.chunks) for k, v in meta.state_dict_metadata.items() if hasattr(v, "chunks")}
    assert chunks["model.rows"] == chunks["model.cols"] == chunks["model.tiny"] == 2
    assert chunks["model.rep"] == 1
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def test_zstd_items(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    from torch.distributed.checkpoint._extension import ZStandard

    state = {"a": torch.zeros(1000), "b": torch.arange(12).reshape(3, 4), "n": {"x": [1, "s"]}}
    folder = _save(state, tmp_path / "z", _extensions=[ZStandard()])
    meta = pickle.loads((folder / ".metadata").read_bytes())
    assert {tuple(i.transform_descriptors) for i in meta.storage_data.values()} == {
        ("stream.zstd/1",)
    }
    assert_same(satchel.load(folder, framework="torch"), _reference(folder, tmp_path))


def test_numpy_values(single: Path, tmp_path: Path) -> None:
    got = satchel.load(single)
    want = _reference(single, tmp_path)
    w = got["model"]["0.weight"]
    assert isinstance(w, np.ndarray)
    np.testing.assert_array_equal(w, want["model"]["0.weight"].numpy())
    assert got["optim"]["state"]["0"]["step"].shape == ()
    assert got["optim"]["param_groups"][0]["lr"] == 0.01
    assert got["step"] == 12 and got["name"] == "run-7" and got["nothing"] is None


def test_single_chunks_are_views_and_multi_chunk_tensors_assemble_lazily(sharded: Path) -> None:
    tree = dcp.read(sharded)
    assert tree.format == "dcp" and tree.checksummed
    rep, rows = tree.root["model"]["rep"], tree.root["model"]["rows"]
    assert not isinstance(rep.storage, dcp._Assembled)
    assert rep.storage.origin.endswith(".distcp")
    assert isinstance(rows.storage, dcp._Assembled)
    assert rows.storage._data is None  # nothing copied until the bytes are used
    with satchel.open(sharded, framework="torch") as ck:
        assert ck.info("model.rows").shape == (5, 3)
        assert ck["model.rows"].shape == (5, 3)


def test_verify_false_reads_too(sharded: Path, tmp_path: Path) -> None:
    got = satchel.load(sharded, framework="torch", verify=False)
    assert_same(got, _reference(sharded, tmp_path))


# -- conversion and the command line -------------------------------------------------------------
def test_convert_to_one_satchel_file(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.satchel"
    satchel.convert(single, out)
    assert satchel.detect(out) == "satchel"
    assert_same(satchel.load(out, framework="torch"), _reference(single, tmp_path))


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_convert_to_hf_shards(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    folder = request.getfixturevalue(which)
    out = tmp_path / "hf"
    satchel.convert(folder, out, max_shard_size="100KB")
    if which == "single":
        assert len(list(out.glob("*.safetensors"))) > 1
    assert_same(satchel.load(out, framework="torch"), _reference(folder, tmp_path))


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_cli(command: str, single: Path, sharded: Path) -> None:
    for folder in (single, sharded):
        out, err = io.StringIO(), io.StringIO()
        assert main([command, str(folder)], stdout=out, stderr=err) == 0, err.getvalue()
        assert "dcp" in out.getvalue()


def test_verify_reports_a_flipped_tensor_byte(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    meta = pickle.loads((folder / ".metadata").read_bytes())
    info = next(i for k, i in meta.storage_data.items() if k.fqn == "w")
    data = bytearray((folder / info.relative_path).read_bytes())
    item = bytes(data[info.offset : info.offset + info.length])
    # The tensor's bytes are the 24 bytes of arange(6.0) inside the item's zip.
    at = info.offset + item.index(np.arange(6, dtype=np.float32).tobytes())
    data[at + 5] ^= 0x10
    (folder / info.relative_path).write_bytes(bytes(data))
    report = satchel.verify(folder)
    assert report.status == "corrupt", report
    with pytest.raises(IntegrityError):
        satchel.load(folder)
    assert satchel.load(folder, verify=False)["w"].shape == (2, 3)


def test_verify_reports_a_flipped_byte_in_one_chunk(sharded: Path, tmp_path: Path) -> None:
    folder = _copy(sharded, tmp_path)
    torch.manual_seed(0)  # the ranks' full tensors, as _rank builds them
    rows = torch.randn(5, 3)
    data = bytearray((folder / "__1_0.distcp").read_bytes())
    at = bytes(data).index(rows[3:].numpy().tobytes())  # rank 1's chunk of "rows"
    data[at] ^= 0x01
    (folder / "__1_0.distcp").write_bytes(bytes(data))
    assert satchel.verify(folder).status == "corrupt"
    with satchel.open(folder) as ck:
        assert ck["model.cols"].shape == (4, 6)  # the other tensors still read
        with pytest.raises(IntegrityError, match="CRC-32"):
            ck["model.rows"]


# -- hostile folders -----------------------------------------------------------------------------
def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / src.name
    shutil.copytree(src, dst)
    return dst


def _edit(folder: Path, change: Callable[[Any], object]) -> Path:
    """Rewrite ``.metadata`` with torch's pickle after ``change`` (the test's own file)."""
    meta = pickle.loads((folder / ".metadata").read_bytes())
    change(meta)
    (folder / ".metadata").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def _info(meta: Any, fqn: str) -> Any:
    return next(i for k, i in meta.storage_data.items() if k.fqn == fqn)


def test_edited_metadata_still_reads(small: Path, tmp_path: Path) -> None:
    # The editing itself changes nothing: what the hostile tests break is their edit only.
    folder = _edit(_copy(small, tmp_path), lambda m: None)
    assert satchel.load(folder)["n"] == {"k": 3}


def test_chunk_range_past_the_file_end(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    size = (folder / "__0_0.distcp").stat().st_size
    _edit(folder, lambda m: setattr(_info(m, "w"), "offset", size - 10))
    with pytest.raises(FormatError, match="truncated"):
        satchel.load(folder)


def test_truncated_distcp(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    data = (folder / "__0_0.distcp").read_bytes()
    (folder / "__0_0.distcp").write_bytes(data[: len(data) - 100])
    with pytest.raises(FormatError, match="truncated"):
        satchel.load(folder)


def test_overlapping_items(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    _edit(folder, lambda m: setattr(_info(m, "h"), "offset", _info(m, "w").offset))
    with pytest.raises(FormatError, match="overlap"):
        satchel.load(folder)


@pytest.mark.parametrize("sizes,match", [((4, 3), "overlaps"), ((2, 3), "uncovered")])
def test_chunks_must_tile(
    sizes: tuple[int, ...], match: str, sharded: Path, tmp_path: Path
) -> None:
    folder = _copy(sharded, tmp_path)

    def change(m: Any) -> None:
        m.state_dict_metadata["model.rows"].chunks[0].sizes = torch.Size(sizes)

    _edit(folder, change)
    with pytest.raises(FormatError, match=match):
        satchel.load(folder)


def test_chunk_must_hold_the_promised_tensor(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)

    def change(m: Any) -> None:
        m.state_dict_metadata["w"].properties.dtype = torch.float16

    _edit(folder, change)
    with pytest.raises(FormatError, match="promises"):
        satchel.load(folder)


@pytest.mark.parametrize("name", ["../__0_0.distcp", "/etc/passwd", "sub/x.distcp", "..", ""])
def test_relative_path_must_be_a_plain_name(name: str, small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    _edit(folder, lambda m: setattr(_info(m, "w"), "relative_path", name))
    with pytest.raises(FormatError, match="plain file name"):
        satchel.load(folder)


def test_symlink_out_of_the_folder(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    outside = tmp_path / "elsewhere.distcp"
    (folder / "__0_0.distcp").rename(outside)
    (folder / "__0_0.distcp").symlink_to(outside)
    with pytest.raises(FormatError, match="symlink"):
        satchel.load(folder)


def test_unknown_transform(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    _edit(folder, lambda m: setattr(_info(m, "w"), "transform_descriptors", ["stream.lz4/1"]))
    with pytest.raises(FormatError, match=r"stream\.lz4/1"):
        satchel.load(folder)


def test_safetensors_serialization_is_refused(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.filesystem import SerializationFormat

    fmt = SerializationFormat.SAFETENSORS
    folder = _save({"a": torch.ones(3), "n": 5}, tmp_path / "st", serialization_format=fmt)
    with pytest.raises(FormatError, match="SAFETENSORS"):
        satchel.load(folder)


class _System:
    """Pickles as a call of os.system (what a hostile checkpoint would carry)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_metadata_calling_os_system(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    marker = tmp_path / "ran"
    _edit(folder, lambda m: setattr(m, "planner_data", {"w": _System(marker)}))
    with pytest.raises(UnsafeContentError, match="system"):
        satchel.load(folder)
    assert not marker.exists()


def test_bytes_item_calling_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = _save({"w": torch.ones(2), "evil": _System(marker)}, tmp_path / "evil")
    marker.unlink(missing_ok=True)  # torch.save pickles it without calling it; to be sure
    with pytest.raises(UnsafeContentError, match="system"):
        satchel.load(folder)
    assert not marker.exists()


def test_clashing_object_paths(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    _edit(folder, lambda m: m.planner_data.update({"h": ("w",)}))
    with pytest.raises(FormatError, match="clashes"):
        satchel.load(folder)


def test_unused_storage_record(small: Path, tmp_path: Path) -> None:
    folder = _copy(small, tmp_path)
    _edit(folder, lambda m: m.state_dict_metadata.pop("h"))
    with pytest.raises(FormatError, match="belong to no entry"):
        satchel.load(folder)


def test_not_a_dcp_folder(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(b"not a pickle")
    (tmp_path / "__0_0.distcp").write_bytes(b"")
    assert sniffed(tmp_path) is None


def test_random_damage_raises_only_satchel_errors(small: Path, tmp_path: Path) -> None:
    rng = random.Random(11)
    names = [".metadata", "__0_0.distcp"]
    originals = {n: (small / n).read_bytes() for n in names}
    folder = _copy(small, tmp_path)
    for i in range(120):
        name = names[i % 2]
        data = bytearray(originals[name])
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        (folder / name).write_bytes(bytes(data))
        with contextlib.suppress(SatchelError):
            satchel.load(folder)
        (folder / name).write_bytes(originals[name])


# -- the tiling check ----------------------------------------------------------------------------
def _chunks(*boxes: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[Chunk, ...]:
    item = Item("x", 0, 0, ())
    return tuple(Chunk(o, s, item) for o, s in boxes)


@pytest.mark.parametrize(
    "size,boxes",
    [
        ((), [((), ())]),
        ((0, 3), [((0, 0), (0, 3))]),
        ((5, 3), [((0, 0), (3, 3)), ((3, 0), (2, 3))]),
        ((1, 2), [((0, 0), (1, 2)), ((1, 0), (0, 2))]),  # an empty chunk at the end
        ((4, 4), [((0, 0), (2, 2)), ((0, 2), (2, 2)), ((2, 0), (2, 2)), ((2, 2), (2, 2))]),
        (  # a pinwheel: no chunk edge runs across the whole tensor
            (3, 3),
            [
                ((0, 0), (1, 2)),
                ((0, 2), (2, 1)),
                ((2, 1), (1, 2)),
                ((1, 0), (2, 1)),
                ((1, 1), (1, 1)),
            ],
        ),
    ],
)
def test_tilings_accepted(size: tuple[int, ...], boxes: list[Any]) -> None:
    dcp.check_tiling(size, _chunks(*boxes), "t")


@pytest.mark.parametrize(
    "size,boxes,match",
    [
        ((), [((), ()), ((), ())], "overlaps"),
        ((4,), [((0,), (3,)), ((2,), (2,))], "overlaps"),
        ((4,), [((0,), (3,))], "uncovered"),
        ((4,), [((0,), (5,))], "past"),
        ((2, 2), [((0, 0), (2, 1)), ((0, 1), (1, 1))], "uncovered"),
    ],
)
def test_tilings_refused(size: tuple[int, ...], boxes: list[Any], match: str) -> None:
    with pytest.raises(FormatError, match=match):
        dcp.check_tiling(size, _chunks(*boxes), "t")


def test_tiling_grid_is_bounded() -> None:
    n = 5000  # a staircase: 5000 chunks whose edges cut a 2-D tensor into 25 million cells
    boxes = [((i, i), (1, 1)) for i in range(n)]
    with pytest.raises(FormatError, match="pieces"):
        dcp.check_tiling((n, n), _chunks(*boxes), "t")
    assert math.prod((n, n)) > dcp._MAX_GRID


def test_no_torch_needed(single: Path) -> None:
    code = (
        "import sys, satchel; sd = satchel.load(sys.argv[1]); "
        "assert 'torch' not in sys.modules; print(sorted(sd))"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run(
        [sys.executable, "-c", code, str(single)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "model" in r.stdout
