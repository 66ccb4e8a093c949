"""CheckpointManager with sharded items (SPEC 8.15, 8.16): layout, record, restore, damage.

An item larger than ``max_shard_size`` is a folder of shards and an index in the Hugging Face
layout inside its step folder; the commit record lists every one of its files. The SIGKILL and
fault-injection cases of sharded saves are in test_crash.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import huggingface_hub as hub
import numpy as np
import pytest
import torch
import xxhash
from torch import nn

import satchel
import satchel._checkpoint.items
from checkpoint_records import seal
from satchel import CheckpointManager, CheckpointRoot, CheckpointWarning
from satchel._checkpoint import workers
from satchel._cli import main as cli_main
from satchel._io.atomic import TMP_MARKER

LIMIT = 64 << 10  # bytes: the model below needs 3 shards of this size, its optimizer 5
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")


# -- helpers ------------------------------------------------------------------------------------
class Tied(nn.Module):
    """~150 KiB of parameters, the output layer tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, 128)
        self.body = nn.Linear(128, 128)
        self.norm = nn.LayerNorm(128)
        self.head = nn.Linear(128, 64, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.relu(self.body(self.emb(x)))))


def trained(seed: int, steps: int = 2) -> tuple[Tied, torch.optim.Optimizer, Any]:
    """A model, its Adam (with state) and LR scheduler after ``steps`` steps."""
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(steps):
        loss = model(torch.arange(8).reshape(2, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def arrays(seed: int, n: int = 6, size: int = 4096) -> dict[str, Any]:
    """``n`` float32 arrays of ``size`` elements (16 KiB each by default) and a plain value."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {f"a{i}": rng.standard_normal(size).astype(np.float32) for i in range(n)}
    out["seed"] = seed
    return out


def same(got: Any, want: Any) -> bool:
    """Bitwise equality of nested dicts/lists of arrays/tensors and plain values."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and set(got) == set(want)
            and all(same(got[k], want[k]) for k in want)
        )
    if isinstance(want, list | tuple):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, torch.Tensor):
        want = want.detach().numpy()
    if isinstance(got, torch.Tensor):
        got = got.detach().numpy()
    if isinstance(want, np.ndarray):
        got = np.asarray(got)
        return (
            got.dtype == want.dtype
            and got.shape == want.shape
            and np.array_equal(got, want, equal_nan=True)
        )
    return bool(got == want)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def temp_entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if TMP_MARKER in p.name)


def restore_quietly(view: CheckpointManager | CheckpointRoot, **kw: Any) -> satchel.RestoreResult:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        return view.restore(**kw)


def shards(item: Path) -> list[str]:
    return sorted(n for n in os.listdir(item) if SHARD.fullmatch(n))


def cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main([*args], stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


# -- round trips ---------------------------------------------------------------------------------
def test_sharded_round_trip_of_model_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    model, opt, sched = trained(0)
    root = tmp_path / "run"
    with CheckpointManager(root, max_shard_size=LIMIT) as mgr:
        mgr.save(5, model=model, optimizer=opt, scheduler=sched, rng=True, extra={"epoch": 2})
        after_save = torch.rand(4)
    folder = step_dir(root, 5)
    assert sorted(os.listdir(folder)) == [
        "extra.satchel",
        "manifest.json",
        "model",
        "optimizer",
        "rng.satchel",
        "scheduler.satchel",
    ]
    for item, count in (("model", 3), ("optimizer", 5)):
        names = shards(folder / item)
        assert names == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        assert sorted(os.listdir(folder / item)) == [*names, INDEX]

    fresh, fresh_opt, fresh_sched = trained(1, steps=1)
    assert not same(fresh.state_dict(), model.state_dict())
    res = restore_quietly(
        CheckpointRoot(root), model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, rng=True
    )
    assert res.step == 5 and res.extra == {"epoch": 2} and res.skipped == ()
    assert torch.equal(torch.rand(4), after_save)  # the RNG went back to the save
    assert same(fresh.state_dict(), model.state_dict())
    assert fresh.head.weight is fresh.emb.weight  # loaded in place: still tied
    assert same(fresh_opt.state_dict(), opt.state_dict())
    assert fresh_sched.state_dict() == sched.state_dict()
    # The item as loaded keeps the tie: one stored tensor, two names.
    loaded = res.items["model"]
    assert loaded["head.weight"].data_ptr() == loaded["emb.weight"].data_ptr()
    # Each item folder is an ordinary sharded checkpoint (SPEC 9): satchel reads it whole...
    assert same(satchel.load(folder / "model"), dict(model.state_dict()))
    assert same(satchel.load(folder / "optimizer"), opt.state_dict())
    # ...and huggingface_hub loads the model folder; the tied copy is stored once.
    other = trained(2, steps=0)[0]
    result = hub.load_torch_model(other, folder / "model", strict=False)
    assert list(result.missing_keys) == ["head.weight"] and not result.unexpected_keys
    assert same(other.state_dict(), model.state_dict())


def test_max_shard_size_per_save_overrides_the_managers(tmp_path: Path) -> None:
    root = tmp_path / "run"
    big = arrays(0)  # 6 x 16 KiB
    with CheckpointManager(root) as mgr:
        mgr.save(1, model=big)
        mgr.save(2, model=big, max_shard_size="40KiB")
    with CheckpointManager(root, max_shard_size=40 << 10) as mgr:
        assert mgr.max_shard_size == 40 << 10
        mgr.save(3, model=big)
        mgr.save(4, model=big, max_shard_size="1MB")  # fits in one shard: one file
        mgr.save(5, model=big, max_shard_size=16 << 10)
        for s in (1, 2, 3, 4, 5):
            assert same(restore_quietly(mgr, step=s).items["model"], big)
    assert os.listdir(step_dir(root, 1)) and (step_dir(root, 1) / "model.satchel").is_file()
    assert len(shards(step_dir(root, 2) / "model")) == 3  # two 16 KiB arrays per 40 KiB shard
    assert len(shards(step_dir(root, 3) / "model")) == 3
    assert (step_dir(root, 4) / "model.satchel").is_file()
    assert len(shards(step_dir(root, 5) / "model")) == 6


def test_only_items_larger_than_one_shard_are_sharded(tmp_path: Path) -> None:
    root = tmp_path / "run"
    items = {
        "small": arrays(1, n=2),  # 32 KiB: fits
        "one_big_tensor": {"w": np.zeros(1 << 16, np.float32)},  # 256 KiB, cannot be split
        "large": arrays(2),  # 96 KiB: 3 shards
        "scalars": {"lr": 0.1, "step": 3},  # no tensor at all
    }
    with CheckpointManager(root, max_shard_size=LIMIT // 2 + 1) as mgr:
        mgr.save(1, **items, extra=arrays(3))
        res = restore_quietly(mgr)
    assert sorted(os.listdir(step_dir(root, 1))) == [
        "extra",
        "large",
        "manifest.json",
        "one_big_tensor.satchel",
        "scalars.satchel",
        "small.satchel",
    ]
    for name, value in items.items():
        assert same(res.items[name], value), name
    assert same(res.extra, arrays(3))


@pytest.mark.parametrize("size", [0, -1, "lots", True, "5 parsecs"])
def test_a_bad_max_shard_size_is_a_usage_error(tmp_path: Path, size: Any) -> None:
    with pytest.raises(satchel.UsageError, match="max_shard_size"):
        CheckpointManager(tmp_path / "a", max_shard_size=size)
    with CheckpointManager(tmp_path / "b") as mgr:
        with pytest.raises(satchel.UsageError, match="max_shard_size"):
            mgr.save(1, model=arrays(0), max_shard_size=size)
        assert os.listdir(tmp_path / "b") == [".satchel.lock"]


@pytest.mark.parametrize("name", ["model.satchel", "manifest.json"])
def test_item_names_that_could_clash_with_a_file_of_the_step_are_refused(
    tmp_path: Path, name: str
) -> None:
    with CheckpointManager(tmp_path) as mgr, pytest.raises(satchel.UsageError, match="item name"):
        mgr.save(1, **{name: arrays(0)}, max_shard_size=LIMIT)


def test_async_sharded_saves_snapshot_the_state(tmp_path: Path) -> None:
    model, opt, _ = trained(0)
    root = tmp_path / "run"
    want = []
    with CheckpointManager(root, max_shard_size=LIMIT) as mgr:
        for step in (1, 2, 3):
            want.append((dict(model.state_dict()), opt.state_dict()))
            want[-1] = (
                {k: v.clone() for k, v in want[-1][0].items()},
                _cloned(want[-1][1]),
            )
            mgr.save(step, model=model, optimizer=opt, blocking=False)
            with torch.no_grad():  # the training loop goes on while the save is written
                for p in model.parameters():
                    p.add_(1.0)
                for s in opt.state.values():
                    s["exp_avg"].mul_(2.0)
        mgr.wait()
        for step, (m, o) in enumerate(want, start=1):
            res = restore_quietly(mgr, step=step)
            assert same(res.items["model"], m) and same(res.items["optimizer"], o)
            assert len(shards(step_dir(root, step) / "optimizer")) == 5
    assert temp_entries(root) == []


def _cloned(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _cloned(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_cloned(v) for v in x]
    return x


def test_retention_deletes_sharded_steps_whole(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with CheckpointManager(root, keep_last=2, max_shard_size=LIMIT // 2) as mgr:
        for step in range(1, 6):
            mgr.save(step, model=arrays(step), optimizer=arrays(10 + step))
        assert mgr.steps() == [4, 5]
    assert sorted(os.listdir(root)) == [".satchel.lock", "step_00000004", "step_00000005"]
    assert same(restore_quietly(CheckpointRoot(root)).items["model"], arrays(5))


def test_overwrite_replaces_a_sharded_step_whole(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with CheckpointManager(root, max_shard_size=LIMIT // 2) as mgr:
        mgr.save(1, model=arrays(1))
        assert len(shards(step_dir(root, 1) / "model")) == 3
        mgr.save(1, model=arrays(2, n=3), overwrite=True)  # 2 shards where there were 3
        assert len(shards(step_dir(root, 1) / "model")) == 2
        mgr.save(1, model=arrays(3), overwrite=True, max_shard_size="1MB")  # now one file
        assert sorted(os.listdir(step_dir(root, 1))) == ["manifest.json", "model.satchel"]
        mgr.save(1, model=arrays(4), overwrite=True)
        assert same(restore_quietly(mgr).items["model"], arrays(4))
    assert sorted(os.listdir(root)) == [".satchel.lock", "step_00000001"]
    assert sorted(os.listdir(step_dir(root, 1))) == ["manifest.json", "model"]


def test_the_same_step_is_written_whatever_the_number_of_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, opt, _ = trained(0)
    records = []
    for n in (1, 2, 3):
        monkeypatch.setattr(workers, "WRITE_WORKERS", n)
        with CheckpointManager(tmp_path / f"w{n}", max_shard_size=LIMIT) as mgr:
            mgr.save(1, model=model, optimizer=opt)
            (info,) = mgr.checkpoints()
        assert info.valid and info.record is not None
        records.append(info.record.items)
    assert records[0] == records[1] == records[2]


# -- SPEC ----------------------------------------------------------------------------------------
def test_spec_8_15_a_sharded_item_is_a_hugging_face_folder_written_inside_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run"
    model, opt, _ = trained(0)
    # Watch the writes: every file of an item folder is written inside the temp step folder.
    written: list[str] = []
    real = satchel._checkpoint.items.write_plan

    def spy(plan: Any, path: Path, **kw: Any) -> Any:
        written.append(str(path.relative_to(root)))
        return real(plan, path, **kw)

    monkeypatch.setattr(satchel._checkpoint.items, "write_plan", spy)
    with CheckpointManager(root, max_shard_size=LIMIT) as mgr:
        mgr.save(3, model=model, optimizer=opt, extra={"note": "x"})
    assert written and all(re.match(r"\.step_00000003\.satchel-tmp-", w) for w in written)
    folder = step_dir(root, 3)
    doc = json.loads((folder / "manifest.json").read_bytes())
    assert doc["version"] == 2 and (folder / "manifest.json").read_bytes() == seal(doc)
    for item in ("model", "optimizer"):
        entry = doc["items"][item]
        assert set(entry) == {"folder", "files"} and entry["folder"] == item
        listed = [f["file"] for f in entry["files"]]
        assert listed[-1] == INDEX and listed[:-1] == shards(folder / item)  # the index last
        assert sorted(listed) == sorted(os.listdir(folder / item))  # every file, nothing else
        for f in entry["files"]:
            data = (folder / item / f["file"]).read_bytes()
            assert set(f) == {"file", "size", "xxh3"}
            assert f["size"] == len(data) and f["xxh3"] == xxhash.xxh3_64_hexdigest(data)
        index = json.loads((folder / item / INDEX).read_bytes())
        assert set(index["weight_map"].values()) == set(listed[:-1])
        for shard in listed[:-1]:  # SPEC 9.1: at most LIMIT bytes of tensors per shard
            n = int.from_bytes((folder / item / shard).read_bytes()[:8], "little")
            header = json.loads((folder / item / shard).read_bytes()[8 : 8 + n])
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            assert max(ends) <= LIMIT or len(ends) == 1
    assert doc["items"]["extra"] == {
        "file": "extra.satchel",
        "size": (folder / "extra.satchel").stat().st_size,
        "xxh3": xxhash.xxh3_64_hexdigest((folder / "extra.satchel").read_bytes()),
    }


def _record_with(tmp_path: Path, entry: Any) -> Path:
    """A step folder whose record's item ``model`` is ``entry`` (written by hand)."""
    root = tmp_path / "run"
    folder = step_dir(root, 1)
    (folder / "model").mkdir(parents=True)
    doc = {
        "format": "satchel-checkpoint",
        "step": 1,
        "time": 0.0,
        "time_utc": "1970-01-01T00:00:00Z",
        "metrics": {},
        "items": {"model": entry},
        "versions": {},
        "retention": [],
    }
    (folder / "manifest.json").write_bytes(seal(doc))
    return root


def _file(name: str) -> dict[str, Any]:
    return {"file": name, "size": 0, "xxh3": xxhash.xxh3_64_hexdigest(b"")}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"folder": "../model", "files": [_file(INDEX)]}, "folder '../model'"),
        ({"folder": "a/b", "files": [_file(INDEX)]}, "folder 'a/b'"),
        ({"folder": ".model", "files": [_file(INDEX)]}, "folder '.model'"),
        ({"folder": "model.satchel", "files": [_file(INDEX)]}, "folder 'model.satchel'"),
        ({"folder": "manifest.json", "files": [_file(INDEX)]}, "folder 'manifest.json'"),
        ({"folder": "model", "files": []}, "non-empty list"),
        ({"folder": "model", "files": {INDEX: _file(INDEX)}}, "non-empty list"),
        ({"folder": "model", "files": [_file(INDEX), _file(INDEX)]}, "twice"),
        ({"folder": "model", "files": [_file(INDEX), _file("../x.safetensors")]}, "'../x"),
        ({"folder": "model", "files": [_file(INDEX), _file(".hidden")]}, "'.hidden'"),
        ({"folder": "model", "files": [_file("a/b.safetensors")]}, "'a/b.safetensors'"),
        ({"folder": "model", "files": [_file("")]}, "''"),
        ({"folder": "model", "files": [_file(".satchel-tmp-1-0a0b0c0d")]}, "satchel-tmp"),
        ({"folder": "model", "files": [{**_file(INDEX), "file": 7}]}, "7 is not"),
        ({"folder": "model", "files": [{**_file(INDEX), "size": -1}]}, "size -1"),
        ({"folder": "model", "files": [{**_file(INDEX), "xxh3": "ABC"}]}, "xxh3"),
        ({"folder": "model", "files": [{**_file(INDEX), "more": 1}]}, "exactly file, size"),
        ({"folder": "model", "files": [_file(INDEX)], "size": 0}, "exactly file, size"),
    ],
)
def test_spec_8_16_a_sharded_items_record_entry_is_checked_before_use(
    tmp_path: Path, entry: Any, message: str
) -> None:
    view = CheckpointRoot(_record_with(tmp_path, entry))
    (info,) = view.checkpoints()
    assert info.record is None and info.problem is not None
    assert info.problem.startswith("not committed") and message in info.problem, info.problem


def test_spec_8_16_a_hand_written_sharded_entry_is_read_and_every_file_checked(
    tmp_path: Path,
) -> None:
    files = [_file("model-00001-of-00002.safetensors"), _file("model-00002-of-00002.safetensors")]
    root = _record_with(tmp_path, {"folder": "model", "files": [*files, _file(INDEX)]})
    folder = step_dir(root, 1) / "model"
    for f in ("model-00001-of-00002.safetensors", INDEX):
        (folder / f).write_bytes(b"")
    (info,) = CheckpointRoot(root).checkpoints()
    assert info.record is not None
    item = info.record.items["model"]
    assert item.folder == "model" and item.file == f"model/{INDEX}"
    assert [f.file for f in item.files] == [f["file"] for f in [*files, _file(INDEX)]]
    assert info.problem == "item 'model': file model/model-00002-of-00002.safetensors is missing"
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert CheckpointRoot(root).check(1) == (
        "item 'model': model/model-00002-of-00002.safetensors is 1 bytes, record says 0"
    )


def test_spec_8_16_an_item_folder_without_a_shard_index_is_read_as_a_folder(
    tmp_path: Path,
) -> None:
    """A folder item of another kind (a distributed one, SPEC 10.2) lists its own files."""
    root = _record_with(tmp_path, {"folder": "model", "files": [_file("layout.json")]})
    (step_dir(root, 1) / "model" / "layout.json").write_bytes(b"")
    (info,) = CheckpointRoot(root).checkpoints()
    assert info.valid and info.record is not None
    assert info.record.items["model"].file == "model"


# -- damage: restore falls back ------------------------------------------------------------------
DAMAGE = [
    "flip_shard_byte",
    "truncate_shard",
    "delete_shard",
    "flip_index_byte",
    "delete_index",
    "shard_is_a_link",
    "shard_is_a_fifo",
    "folder_is_a_link",
    "folder_is_a_file",
    "delete_folder",
]


def damage(folder: Path, how: str) -> str:
    """Damage the sharded item ``model`` of step ``folder``; the name the problem must give."""
    item = folder / "model"
    shard = item / shards(item)[1]
    if how == "flip_shard_byte":
        data = bytearray(shard.read_bytes())
        data[len(data) - 100] ^= 0x01
        shard.write_bytes(bytes(data))
    elif how == "truncate_shard":
        os.truncate(shard, shard.stat().st_size // 2)
    elif how == "delete_shard":
        shard.unlink()
    elif how == "flip_index_byte":
        data = bytearray((item / INDEX).read_bytes())
        data[len(data) // 2] ^= 0x01
        (item / INDEX).write_bytes(bytes(data))
        return INDEX
    elif how == "delete_index":
        (item / INDEX).unlink()
        return INDEX
    elif how == "shard_is_a_link":
        copy = folder.parent / "elsewhere.safetensors"
        shutil.copyfile(shard, copy)
        shard.unlink()
        shard.symlink_to(copy)  # the very same bytes, but through a link
    elif how == "shard_is_a_fifo":
        shard.unlink()
        os.mkfifo(shard)
    elif how == "folder_is_a_link":
        shutil.copytree(item, folder.parent / "elsewhere")
        shutil.rmtree(item)
        item.symlink_to(folder.parent / "elsewhere")
        return "model"
    elif how == "folder_is_a_file":
        shutil.rmtree(item)
        item.write_bytes(b"not a folder")
        return "model"
    elif how == "delete_folder":
        shutil.rmtree(item)
        return "model"
    else:  # pragma: no cover
        raise AssertionError(how)
    return shard.name


@pytest.mark.parametrize("how", DAMAGE)
def test_restore_skips_a_step_whose_sharded_item_is_damaged(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run"
    with CheckpointManager(root, max_shard_size=LIMIT // 2) as mgr:
        for step in (1, 2):
            mgr.save(step, model=arrays(step), extra={"step": step})
    assert [i.valid for i in CheckpointRoot(root).checkpoints()] == [True, True]
    named = damage(step_dir(root, 2), how)
    view = CheckpointRoot(root)
    problem = view.check(2)
    assert problem is not None and "item 'model'" in problem and named in problem, problem
    with monkeypatch.context() as m:  # checked by two threads: the same verdict
        m.setattr(workers, "CHECK_WORKERS", 2)
        assert view.check(2) == problem and view.check(1) is None
    with pytest.warns(CheckpointWarning, match="skipping step 2"):
        res = view.restore()
    assert res.step == 1 and same(res.items["model"], arrays(1)) and res.extra == {"step": 1}
    assert [s for s, _ in res.skipped] == [2]
    with pytest.raises(satchel.CheckpointNotFoundError, match="step 2"):
        view.restore(step=2)
    report = satchel.verify(root)
    assert report.status == "corrupt" and [p.where for p in report.problems] == ["step 2"]
    code, out = cli("verify", str(root))
    assert code != 0 and "corrupt" in out and named in out, out
    code, out = cli("ls", str(root), "--json")
    assert code == 0
    assert [c["valid"] for c in json.loads(out)["checkpoints"]] == [True, False]
    # The next save goes on (and retention never deletes the newest valid step 1).
    with CheckpointManager(root, keep_last=1, max_shard_size=LIMIT // 2) as mgr:
        mgr.save(3, model=arrays(3))
        assert restore_quietly(mgr).step == 3


def test_verify_ls_and_inspect_show_a_sharded_step(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with CheckpointManager(root, max_shard_size=LIMIT // 2) as mgr:
        mgr.save(7, model=arrays(7), opt={"lr": 0.5})
    folder = step_dir(root, 7)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"]
    size = sum(p.stat().st_size for p in files)
    report = satchel.verify(root)
    assert report.status == "ok" and report.checked == 1
    assert satchel.verify(folder).status == "ok"
    assert cli("verify", str(root))[0] == 0
    code, out = cli("ls", str(root), "--json")
    assert code == 0
    (entry,) = json.loads(out)["checkpoints"]
    assert entry["valid"] is True and entry["size"] == size
    assert entry["items"]["model"]["file"] == f"model/{INDEX}"
    code, out = cli("inspect", str(folder), "--json")
    assert code == 0
    doc = json.loads(out)
    assert [t["name"] for t in doc["tensors"]] == [f"model.a{i}" for i in range(6)]
    assert doc["commit"]["items"]["model"] == entry["items"]["model"]


# -- parallel workers ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3])
def test_workers_keep_the_order_and_raise_the_first_error(n: int) -> None:
    assert workers.each(lambda x: x * x, list(range(20)), workers=n) == [x * x for x in range(20)]
    started: list[int] = []
    lock = threading.Lock()

    def fail_on_3(x: int) -> int:
        with lock:
            started.append(x)
        time.sleep(0.002)  # slow enough that the failure is seen while calls remain
        if x in (3, 5):
            raise ValueError(x)
        return x

    with pytest.raises(ValueError, match="3"):
        workers.each(fail_on_3, list(range(100)), workers=n)
    assert len(started) < 100  # no call starts after a failure is seen
    assert n > 1 or started == [0, 1, 2, 3]


def test_a_failing_shard_write_leaves_no_trace_and_the_earlier_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "run"
    mgr = CheckpointManager(root, max_shard_size=LIMIT // 2)
    mgr.save(1, model=arrays(1))
    real = satchel._checkpoint.items.write_plan
    calls = []

    def third_fails(plan: Any, path: Path, **kw: Any) -> Any:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device (injected)")
        return real(plan, path, **kw)

    monkeypatch.setattr(satchel._checkpoint.items, "write_plan", third_fails)
    for blocking in (True, False):
        calls.clear()
        with pytest.raises(OSError, match="injected"):
            mgr.save(2, model=arrays(2), blocking=blocking)
            mgr.wait()
        assert sorted(os.listdir(root)) == [".satchel.lock", "step_00000001"]
        assert temp_entries(root) == []
    monkeypatch.setattr(satchel._checkpoint.items, "write_plan", real)
    mgr.save(2, model=arrays(2))
    assert same(restore_quietly(mgr).items["model"], arrays(2))
    mgr.close()
