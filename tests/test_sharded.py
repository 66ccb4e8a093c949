"""Sharded checkpoints in the Hugging Face layout (SPEC 9): written atomically as a whole,
read lazily and verified, with every bad index refused by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

import satchel
from satchel._cli import main as cli_main

INDEX = "model.safetensors.index.json"


def _state(scale: float = 1.0) -> dict[str, Any]:
    w = torch.arange(2000.0).reshape(20, 100) * scale
    return {
        "wte": w,
        "lm_head": w,  # tied: stored once
        "view": w[3:],  # a view of the same allocation
        "blocks": [
            {"w": torch.full((300,), float(i) * scale), "b": torch.ones(10)} for i in range(4)
        ],
        "step": 7,
        "name": "run",
    }


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))


def test_spec_9_1_shards_and_index_as_transformers_names_them(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    satchel.save(_state(), folder, max_shard_size="3KB")
    names = _shards(folder)
    n = len(names)
    assert n >= 3 and names == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((folder / INDEX).read_text())
    assert set(index) >= {"metadata", "weight_map"}
    assert set(index["weight_map"].values()) == set(names)
    # Stored tensors only: the tied lm_head and the view live inside wte's stored tensor.
    assert "lm_head" not in index["weight_map"] and "wte" in index["weight_map"]
    total = 0
    for name in names:
        with safe_open(str(folder / name), framework="pt") as f:  # each shard stands alone
            assert f.metadata()["format"] == "pt"
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                assert index["weight_map"][key] == name
                total += f.get_tensor(key).numel() * 4
    assert index["metadata"]["total_size"] == total
    assert (folder / "config.json").read_text() == "{}"  # files that are not ours stay


def test_spec_9_1_a_tensor_is_never_split(tmp_path: Path) -> None:
    big = torch.zeros(5000)  # 20 kB: more than the limit, so it gets a shard of its own
    satchel.save(
        {"a": torch.ones(10), "big": big, "c": torch.ones(10)}, tmp_path / "f", max_shard_size=1000
    )
    index = json.loads((tmp_path / "f" / INDEX).read_text())["weight_map"]
    assert len(set(index.values())) == 3
    assert index["a"] != index["big"] != index["c"]
    assert torch.equal(satchel.load(tmp_path / "f")["big"], big)


def test_spec_9_1_max_shard_size_spellings(tmp_path: Path) -> None:
    for spelling in (2048, "2KB", "2kB", "0.002MB", "2KiB"):
        satchel.save({"x": torch.ones(3000)}, tmp_path / "s", max_shard_size=spelling)
    for bad in (0, -1, "5 parsecs", True, 1.5):
        with pytest.raises(satchel.UsageError, match="max_shard_size"):
            satchel.save({"x": torch.ones(3)}, tmp_path / "t", max_shard_size=bad)  # type: ignore[arg-type]
    with pytest.raises(satchel.UsageError, match="prefix"):
        satchel.save({"x": torch.ones(3)}, tmp_path / "t", max_shard_size=100, prefix="../evil")


def test_spec_9_2_structure_ties_views_and_metadata_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    satchel.save(_state(), folder, max_shard_size="3KB", metadata={"epoch": "3"})
    out = satchel.load(folder)
    want = _state()
    assert out["step"] == 7 and out["name"] == "run"
    assert out["lm_head"] is out["wte"]
    assert out["view"].untyped_storage().data_ptr() == out["wte"].untyped_storage().data_ptr()
    assert torch.equal(out["view"], want["view"])
    for got, exp in zip(out["blocks"], want["blocks"], strict=True):
        assert torch.equal(got["w"], exp["w"]) and torch.equal(got["b"], exp["b"])
    with satchel.open(folder) as ck:
        assert ck.format == "sharded" and ck.metadata == {"epoch": "3"} and ck.checksummed
        assert ck.keys()[:3] == ["wte", "lm_head", "view"]
    assert satchel.load(folder / INDEX)["step"] == 7  # the index file names the same thing


def test_spec_9_3_conventional_names_kept_where_safe(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    satchel.save(_state(1), folder, max_shard_size="3KB")
    first = _shards(folder)
    satchel.save(_state(2), folder, max_shard_size="3KB")  # same names are taken: tagged
    second = _shards(folder)
    assert not set(first) & set(second) and all("-g" in n for n in second)
    satchel.save(_state(3), folder, max_shard_size="3KB")  # free again: conventional
    assert _shards(folder) == first
    assert torch.equal(satchel.load(folder)["wte"], _state(3)["wte"])


_WRITER = textwrap.dedent(
    """
    import sys, torch, satchel
    folder = sys.argv[1]
    k = 0
    while True:
        k += 1
        v = float(k % 2)
        state = {f"t{i}": torch.full((20000,), v) for i in range(12)}
        state["marker"] = torch.tensor([v])
        satchel.save(state, folder, max_shard_size=100_000)
        print("saved", flush=True)
    """
)


def test_spec_9_3_sigkill_at_any_moment_leaves_old_or_new_never_a_mix(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = np.random.default_rng(0)
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "saved"  # one whole checkpoint exists
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out = satchel.load(folder)
        v = float(out["marker"][0])
        for i in range(12):
            assert torch.equal(out[f"t{i}"], torch.full((20000,), v)), "a mix of two saves"
        assert satchel.verify(folder).ok
    # The next save cleans what a killed writer left: only the new shards and the index stay.
    satchel.save({"x": torch.ones(3)}, folder, max_shard_size=100_000)
    left = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert left == ["model-00001-of-00001.safetensors", INDEX]


def test_spec_9_3_failed_save_keeps_the_old_checkpoint_and_leaves_no_litter(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    satchel.save({"a": torch.ones(1000)}, folder, max_shard_size=5000)
    before = sorted(os.listdir(folder))
    # A real write failure: the file-size limit makes the second shard's write fail (EFBIG).
    code = textwrap.dedent(
        f"""
        import resource, signal, torch, satchel
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
        state = {{"a": torch.zeros(1000), "b": torch.zeros(1000), "c": torch.zeros(4000)}}
        try:
            satchel.save(state, {str(folder)!r}, max_shard_size=5000)
        except OSError as e:
            print("failed", e.errno)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("failed"), r.stdout + r.stderr
    assert sorted(os.listdir(folder)) == before
    assert torch.equal(satchel.load(folder)["a"], torch.ones(1000))


def _corrupt(folder: Path, edit: Any) -> Path:
    index = json.loads((folder / INDEX).read_text())
    edit(index)
    (folder / INDEX).write_text(json.dumps(index))
    return folder


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """A folder as transformers writes it: shards of a flat dict, no satchel manifest."""
    folder = tmp_path / "hf"
    satchel.save(
        {f"layer{i}": torch.full((500,), float(i)) for i in range(4)}, folder, max_shard_size=2500
    )
    index = json.loads((folder / INDEX).read_text())
    for key in ("satchel", "satchel.xxh3"):
        index.pop(key)
    (folder / INDEX).write_text(json.dumps(index))
    return folder


def test_spec_9_4_a_flat_index_reads_as_a_dict(flat: Path) -> None:
    out = satchel.load(flat)
    assert list(out) == [f"layer{i}" for i in range(4)]
    assert all(torch.equal(out[f"layer{i}"], torch.full((500,), float(i))) for i in range(4))


@pytest.mark.parametrize("bad", ["../x.safetensors", "/etc/passwd", "a/b.safetensors", "..", ""])
def test_spec_9_5_weight_map_names_only_files_in_the_folder(flat: Path, bad: str) -> None:
    _corrupt(flat, lambda ix: ix["weight_map"].update(layer0=bad))
    with pytest.raises(satchel.FormatError, match="layer0") as e:
        satchel.load(flat)
    assert e.value.field == "layer0" and e.value.path == str(flat / INDEX)


def test_spec_9_5_missing_shard(flat: Path) -> None:
    os.unlink(flat / json.loads((flat / INDEX).read_text())["weight_map"]["layer3"])
    with pytest.raises(satchel.FormatError, match="does not exist"):
        satchel.load(flat)


def test_spec_9_5_shard_lacks_a_promised_tensor(flat: Path) -> None:
    _corrupt(flat, lambda ix: ix["weight_map"].update(ghost=ix["weight_map"]["layer0"]))
    with pytest.raises(satchel.FormatError, match=r"ghost.*is in no shard"):
        satchel.load(flat)


def test_spec_9_5_tensor_in_two_shards(flat: Path) -> None:
    wm = json.loads((flat / INDEX).read_text())["weight_map"]
    other = next(f for f in sorted(set(wm.values())) if f != wm["layer0"])
    satchel.save({"layer0": torch.zeros(500)}, flat / "extra.safetensors")
    os.replace(flat / "extra.safetensors", flat / other)  # now two shards hold layer0
    with pytest.raises(satchel.FormatError, match="layer0"):
        satchel.load(flat)


def test_spec_9_5_symlink_out_of_the_folder(flat: Path, tmp_path: Path) -> None:
    wm = json.loads((flat / INDEX).read_text())["weight_map"]
    outside = tmp_path / "outside.safetensors"
    os.replace(flat / wm["layer0"], outside)
    os.symlink(outside, flat / wm["layer0"])
    with pytest.raises(satchel.FormatError, match="symlink out of the folder"):
        satchel.load(flat)


def test_spec_9_5_shard_changed_since_the_save(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    satchel.save({"a": torch.ones(600), "b": torch.ones(600)}, folder, max_shard_size=2500)
    wm = json.loads((folder / INDEX).read_text())["weight_map"]
    # A valid satchel file with the same tensor name, different bytes: a shard of another save.
    satchel.save({"a": torch.zeros(600)}, tmp_path / "other.safetensors")
    os.replace(tmp_path / "other.safetensors", folder / wm["a"])
    with pytest.raises(satchel.IntegrityError, match="changed since") as e:
        satchel.load(folder)
    assert e.value.field == "a"
    assert not satchel.verify(folder).ok


def test_spec_9_4_open_is_lazy_and_verifies_per_shard(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    satchel.save({"a": torch.ones(600), "b": torch.ones(600)}, folder, max_shard_size=2500)
    wm = json.loads((folder / INDEX).read_text())["weight_map"]
    raw = bytearray((folder / wm["b"]).read_bytes())
    raw[-5] ^= 0x10  # a bit of b's data
    (folder / wm["b"]).write_bytes(bytes(raw))
    with satchel.open(folder) as ck:
        assert torch.equal(ck["a"], torch.ones(600))  # the other shard is never read
        with pytest.raises(satchel.IntegrityError) as e:
            ck["b"]
        assert e.value.field == "b"
    report = satchel.verify(folder)
    assert report.status == "corrupt" and [p.where for p in report.problems] == ["b"]


def test_spec_9_4_bin_shards_read_without_unpickling(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    parts = [
        {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)},
        {"b.weight": torch.full((4,), 3.0)},
    ]
    weight_map = {}
    for i, part in enumerate(parts, 1):
        name = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 40}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    out = satchel.load(folder, framework="torch")
    assert list(out) == ["a.weight", "a.bias", "b.weight"]
    for part in parts:
        for k, v in part.items():
            assert torch.equal(out[k], v)
    # .bin shards -> safetensors shards, the safe way.
    satchel.convert(folder, tmp_path / "st", max_shard_size=30)
    back = satchel.load(tmp_path / "st")
    assert all(np.array_equal(back[k], v.numpy()) for part in parts for k, v in part.items())
    assert len(_shards(tmp_path / "st")) >= 2


def test_spec_9_4_convert_both_ways_and_load_state(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    single = tmp_path / "m.safetensors"
    satchel.save(model.state_dict(), single)
    satchel.convert(single, tmp_path / "sharded", max_shard_size=300)
    assert len(_shards(tmp_path / "sharded")) >= 2
    satchel.convert(tmp_path / "sharded", tmp_path / "again.safetensors")
    clone = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    report = satchel.load_state(clone, tmp_path / "sharded")
    assert report.clean
    x = torch.randn(3, 8)
    assert torch.equal(clone(x), model(x))
    again = satchel.load(tmp_path / "again.safetensors")
    assert all(np.array_equal(again[k], v.numpy()) for k, v in model.state_dict().items())


def test_spec_9_4_commands_accept_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    satchel.save({"w": torch.ones(600), "v": torch.zeros(600)}, a, max_shard_size=2500)
    satchel.save({"w": torch.ones(600), "v": torch.ones(600)}, b, max_shard_size=2500)
    assert cli_main(["inspect", str(a)]) == 0
    assert "sharded" in capsys.readouterr().out
    assert cli_main(["verify", str(a)]) == 0
    assert cli_main(["diff", str(a), str(b)]) == 1
    assert "v" in capsys.readouterr().out
    assert cli_main(["convert", str(a), str(tmp_path / "one.safetensors")]) == 0
    assert np.array_equal(satchel.load(tmp_path / "one.safetensors")["v"], np.zeros(600))


_STREAM = textwrap.dedent(
    """
    import resource, sys, torch, satchel
    torch.set_grad_enabled(False)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(6)])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    satchel.load_state(model, sys.argv[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - base) * 1024)
    """
)


def test_spec_9_4_load_state_streams_shard_by_shard(tmp_path: Path) -> None:
    # Six 16 MiB tensors in six shards: loading into a model that already holds its memory must
    # not map every shard at once; the peak grows by about one shard, not by the checkpoint.
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(6)])
    folder = tmp_path / "big"
    satchel.save(model.state_dict(), folder, max_shard_size=17_000_000)
    assert len(_shards(folder)) == 6
    r = subprocess.run(
        [sys.executable, "-c", _STREAM, str(folder)], capture_output=True, text=True, check=True
    )
    grew = int(r.stdout.split()[-1])
    shard = 2048 * 2048 * 4
    assert grew < 2.5 * shard, f"peak grew by {grew / shard:.1f} shards"


def test_spec_9_4_a_one_file_folder_reads_through_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    satchel.save({"w": torch.ones(3)}, folder / "model.safetensors")
    assert torch.equal(satchel.load(folder)["w"], torch.ones(3))
    # Beside an index, the single file wins, as in transformers (SPEC 9.3 removes it on save).
    satchel.save({"w": torch.zeros(3)}, tmp_path / "s", max_shard_size=100)
    for p in (tmp_path / "s").iterdir():
        os.replace(p, folder / p.name)
    assert torch.equal(satchel.load(folder)["w"], torch.ones(3))
    os.unlink(folder / "model.safetensors")
    assert torch.equal(satchel.load(folder)["w"], torch.zeros(3))
