"""Differential tests of sharded checkpoints against the real Hugging Face tools (SPEC 9).

Folders written by transformers' ``save_pretrained``, by huggingface_hub's
``save_torch_state_dict`` and the older ``pytorch_model-0000N-of-0000M.bin`` layout (built with
huggingface_hub's own splitter and ``torch.save`` per shard: transformers 5 writes only
safetensors) must load with satchel to exactly the tensors the reference loaders return. A folder
satchel writes beside a ``config.json`` must load with ``from_pretrained`` and with
huggingface_hub's loaders to identical weights and outputs, its tied weights shared.

The models are tiny and built from a config; nothing is downloaded, and the Hugging Face
libraries are told to stay offline before they are imported.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Read by huggingface_hub and transformers when they are imported: set before importing them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import huggingface_hub as hub
import numpy as np
import pytest
import safetensors.torch as st_pt
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)

import satchel

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]])

transformers.utils.logging.disable_progress_bar()  # keeps failure output readable


@dataclass(frozen=True)
class Tiny:
    """A tiny model, the ``Auto*`` class that loads it, its tied pairs and a shard size that
    splits its ~0.1-0.5 MB state into several shards."""

    model: PreTrainedModel
    auto: Any
    tied: tuple[tuple[str, str], ...]  # (tied name, the name transformers keeps)
    shard: str


def _gpt2(dtype: torch.dtype = torch.float32) -> Tiny:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=500, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).to(dtype).eval()
    return Tiny(
        model, AutoModelForCausalLM, (("lm_head.weight", "transformer.wte.weight"),), "100KB"
    )


def _bert() -> Tiny:
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    tied = (
        ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    )
    return Tiny(BertForMaskedLM(config).eval(), AutoModelForMaskedLM, tied, "40KB")


MODELS: dict[str, Callable[[], Tiny]] = {
    "gpt2": _gpt2,
    "gpt2-bf16": lambda: _gpt2(torch.bfloat16),
    "bert": _bert,
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket the Hugging Face tools try to connect would mean they went for the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module", params=sorted(MODELS))
def tiny(request: pytest.FixtureRequest) -> Tiny:
    return MODELS[request.param]()


@pytest.fixture(scope="module")
def gpt2() -> Tiny:
    return _gpt2()


def _logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def _shards(folder: Path, suffix: str = ".safetensors") -> list[Path]:
    found = sorted(p for p in folder.iterdir() if p.name.endswith(suffix))
    assert len(found) >= 2, f"{folder}: expected several shards, got {[p.name for p in found]}"
    return found


def _reference_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """What safetensors' own loader returns, shard by shard."""
    out: dict[str, torch.Tensor] = {}
    for shard in _shards(folder):
        part = st_pt.load_file(shard)
        assert not out.keys() & part.keys()
        out.update(part)
    return out


def _assert_exact(got: dict[str, Any], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        value = got[name]
        assert isinstance(value, torch.Tensor), (name, type(value))
        assert value.dtype == tensor.dtype and value.shape == tensor.shape, name
        assert torch.equal(value, tensor), name


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and (
        a.data_ptr() == b.data_ptr()
    )


def _storage_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def _satchel_folder(tiny: Tiny, folder: Path) -> Path:
    """The model's config, as transformers writes it, and satchel's shards of its state dict."""
    tiny.model.config.save_pretrained(folder)
    satchel.save(tiny.model.state_dict(), folder, max_shard_size=tiny.shard)
    _shards(folder)
    return folder


# --- Folders written by the Hugging Face tools, read by satchel ---------------------------------


def test_save_pretrained_folder_loads_exactly(tiny: Tiny, tmp_path: Path) -> None:
    tiny.model.save_pretrained(tmp_path, max_shard_size=tiny.shard)
    want = _reference_safetensors(tmp_path)
    assert satchel.detect(tmp_path) == "sharded"
    _assert_exact(satchel.load(tmp_path, framework="torch"), want)
    _assert_exact(satchel.load(tmp_path / SAFE_INDEX, framework="torch"), want)
    # And they are the model's own weights; transformers leaves the tied copies out.
    state = tiny.model.state_dict()
    assert set(state) - set(want) == {name for name, _ in tiny.tied}
    _assert_exact(want, {name: state[name] for name in want})


def test_save_pretrained_folder_opens_lazily(gpt2: Tiny, tmp_path: Path) -> None:
    gpt2.model.save_pretrained(tmp_path, max_shard_size=gpt2.shard)
    want = _reference_safetensors(tmp_path)
    with satchel.open(tmp_path, framework="torch") as ckpt:
        assert ckpt.format == "sharded"
        assert sorted(ckpt.keys()) == sorted(want)
        name = "transformer.h.1.mlp.c_fc.weight"
        assert torch.equal(ckpt[name], want[name])


def test_save_pretrained_folder_loads_as_numpy_by_default(gpt2: Tiny, tmp_path: Path) -> None:
    # A foreign safetensors checkpoint comes back as NumPy unless a framework is asked for.
    gpt2.model.save_pretrained(tmp_path, max_shard_size=gpt2.shard)
    got = satchel.load(tmp_path)
    for name, tensor in _reference_safetensors(tmp_path).items():
        assert isinstance(got[name], np.ndarray)
        assert np.array_equal(got[name], tensor.numpy()), name


@pytest.mark.parametrize(
    "pattern", ["model{suffix}.safetensors", "diffusion_pytorch_model{suffix}.safetensors"]
)
def test_save_torch_state_dict_folder_loads_exactly(
    gpt2: Tiny, tmp_path: Path, pattern: str
) -> None:
    state = gpt2.model.state_dict()
    # A copy: huggingface_hub removes the shared names it does not keep from the dict it gets.
    hub.save_torch_state_dict(
        dict(state), tmp_path, filename_pattern=pattern, max_shard_size=gpt2.shard
    )
    want = _reference_safetensors(tmp_path)
    # huggingface_hub keeps one name of each shared group.
    assert len(want) == len(state) - 1
    _assert_exact(satchel.load(tmp_path, framework="torch"), want)
    _assert_exact(want, {name: state[name] for name in want})


def _write_bin_shards(state: dict[str, torch.Tensor], folder: Path, max_shard_size: str) -> None:
    """The layout of transformers 4's ``save_pretrained(safe_serialization=False)``."""
    split = hub.split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=max_shard_size
    )
    for filename, names in split.filename_to_tensors.items():
        torch.save({name: state[name] for name in names}, folder / filename)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (folder / BIN_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")


def test_bin_shard_folder_loads_exactly(tiny: Tiny, tmp_path: Path) -> None:
    state = tiny.model.state_dict()  # tied copies included, as transformers 4 wrote them
    _write_bin_shards(state, tmp_path, tiny.shard)
    want: dict[str, torch.Tensor] = {}
    for shard in _shards(tmp_path, ".bin"):
        want.update(torch.load(shard, weights_only=True))
    # A torch pickle does not say it was written from torch: ask for torch tensors.
    got = satchel.load(tmp_path, framework="torch")
    _assert_exact(got, want)
    _assert_exact(got, state)
    # Tied weights share memory in satchel's result as in torch.load's.
    assert _storage_groups(got) == _storage_groups(want)
    for name, kept in tiny.tied:
        assert _same_memory(got[name], got[kept])


def test_bin_shard_folder_converts_to_a_folder_transformers_loads(
    gpt2: Tiny, tmp_path: Path
) -> None:
    old, new = tmp_path / "bin", tmp_path / "safetensors"
    old.mkdir()
    new.mkdir()
    _write_bin_shards(gpt2.model.state_dict(), old, gpt2.shard)
    gpt2.model.config.save_pretrained(new)
    satchel.convert(old, new, max_shard_size=gpt2.shard)
    _shards(new)
    loaded = gpt2.auto.from_pretrained(new).eval()
    assert torch.equal(_logits(loaded), _logits(gpt2.model))


# --- Folders written by satchel, read by the Hugging Face tools ---------------------------------


def test_satchel_folder_loads_with_from_pretrained(tiny: Tiny, tmp_path: Path) -> None:
    folder = _satchel_folder(tiny, tmp_path)
    loaded, info = tiny.auto.from_pretrained(folder, output_loading_info=True)
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    loaded.eval()
    assert type(loaded) is type(tiny.model)
    _assert_exact(loaded.state_dict(), tiny.model.state_dict())
    for name, kept in tiny.tied:
        assert _same_memory(loaded.state_dict()[name], loaded.state_dict()[kept])
    assert torch.equal(_logits(loaded), _logits(tiny.model))


def test_satchel_folder_with_the_tied_name_first_loads_with_from_pretrained(
    gpt2: Tiny, tmp_path: Path
) -> None:
    # satchel keeps the first name of a tied group: here the one transformers calls the copy.
    state = gpt2.model.state_dict()
    first = {"lm_head.weight": state["lm_head.weight"]} | state
    gpt2.model.config.save_pretrained(tmp_path)
    satchel.save(first, tmp_path, max_shard_size=gpt2.shard)
    index = json.loads((tmp_path / SAFE_INDEX).read_text(encoding="utf-8"))
    assert "lm_head.weight" in index["weight_map"]
    assert "transformer.wte.weight" not in index["weight_map"]
    loaded, info = gpt2.auto.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(_logits(loaded.eval()), _logits(gpt2.model))


def test_satchel_folder_shards_load_with_safetensors(tiny: Tiny, tmp_path: Path) -> None:
    folder = _satchel_folder(tiny, tmp_path)
    index = json.loads((folder / SAFE_INDEX).read_text(encoding="utf-8"))
    state = tiny.model.state_dict()
    # Each tied group is stored once, under the name that comes first in the state dict.
    assert set(state) - set(index["weight_map"]) == {name for name, _ in tiny.tied}
    want = _reference_safetensors(folder)
    _assert_exact(want, {name: state[name] for name in want})
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in want.values())
    for shard in _shards(folder):
        assert {name for name, f in index["weight_map"].items() if f == shard.name} == set(
            st_pt.load_file(shard)
        )


def test_satchel_folder_keeps_tied_weights_shared(tiny: Tiny, tmp_path: Path) -> None:
    folder = _satchel_folder(tiny, tmp_path)
    state = tiny.model.state_dict()
    got = satchel.load(folder)
    _assert_exact(got, state)
    assert _storage_groups(got) == _storage_groups(state)
    for name, kept in tiny.tied:
        assert _same_memory(got[name], got[kept])


def test_satchel_folder_loads_with_huggingface_hub(gpt2: Tiny, tmp_path: Path) -> None:
    folder = _satchel_folder(gpt2, tmp_path)
    fresh = _gpt2_fresh(gpt2)
    assert not torch.equal(_logits(fresh), _logits(gpt2.model))
    result = hub.load_torch_model(fresh, folder, strict=False)
    assert list(result.unexpected_keys) == []
    # The tied copy is not in the folder; the model ties it to the loaded weight itself.
    assert list(result.missing_keys) == ["lm_head.weight"]
    assert torch.equal(_logits(fresh), _logits(gpt2.model))
    got = satchel.load(folder)
    for shard in _shards(folder):
        for name, tensor in hub.load_state_dict_from_file(shard).items():
            assert torch.equal(tensor, got[name]), name


def _gpt2_fresh(tiny: Tiny) -> PreTrainedModel:
    torch.manual_seed(123)
    return GPT2LMHeadModel(tiny.model.config).eval()


def test_satchel_saves_the_module_itself(gpt2: Tiny, tmp_path: Path) -> None:
    # satchel.save(model) saves its state dict plus the class path; transformers reads it alike.
    gpt2.model.config.save_pretrained(tmp_path)
    satchel.save(gpt2.model, tmp_path, max_shard_size=gpt2.shard)
    loaded = gpt2.auto.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(loaded), _logits(gpt2.model))


def test_satchel_resave_over_save_pretrained_loads_the_new_weights(
    gpt2: Tiny, tmp_path: Path
) -> None:
    # The old shards keep their names until satchel's index replaces transformers' one, so the
    # new shards carry a tag; transformers follows the index wherever its names point.
    gpt2.model.save_pretrained(tmp_path, max_shard_size=gpt2.shard)
    fresh = _gpt2_fresh(gpt2)
    satchel.save(fresh.state_dict(), tmp_path, max_shard_size=gpt2.shard)
    names = [p.name for p in _shards(tmp_path)]
    assert all("-g" in name for name in names), names  # the old ones are gone
    loaded = gpt2.auto.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(loaded), _logits(fresh))
    assert (tmp_path / "generation_config.json").exists()  # other files stay
