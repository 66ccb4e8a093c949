"""load_state into live models, optimizers and mappings; whole nn.Modules saved without pickle.

Covers issue items 1 and 2: the report's exact contents, strict errors that list every problem
and leave the target untouched, include/exclude/rename/skip_mismatched, in-place copies (tied
weights stay tied) and the tutorials' cases (clone, extend, transplant, BatchNorm, tied weights).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import satchel
from satchel import LoadReport, Mismatch, StateMismatchError, load_state

# -- models used by the tutorials' cases -----------------------------------------------------


class MLP(nn.Module):
    def __init__(self, d_in: int = 4, d_hidden: int = 8, d_out: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class MLPExtended(nn.Module):
    """MLP with one more hidden layer between ``hidden`` and ``out``."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.extra = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.extra(torch.relu(self.hidden(x)))))


class Deep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.hidden2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden2(torch.relu(self.hidden(x)))))


class EncoderHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean(dim=(2, 3)))


class TiedLM(nn.Module):
    """Embedding shared with the output layer (weight tying)."""

    def __init__(self, vocab: int = 10, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(self.embed(ids))))


# -- helpers ---------------------------------------------------------------------------------


def _seeded(cls: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def _train(model: nn.Module, steps: int = 5, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def trained_mlp(tmp_path: Path) -> tuple[nn.Module, Path]:
    model = _seeded(MLP, 1)
    _train(model)
    path = tmp_path / "mlp.satchel"
    satchel.save(model.state_dict(), path)
    return model, path


# -- the tutorials' cases ----------------------------------------------------------------------


def test_clone_mlp_from_saved_parameters_gives_identical_outputs(trained_mlp) -> None:
    model, path = trained_mlp
    clone = _seeded(MLP, 2)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(clone(x), model(x))

    report = load_state(clone, path)

    assert report == LoadReport(
        loaded=("hidden.weight", "hidden.bias", "out.weight", "out.bias"),
        missing=(),
        unexpected=(),
        mismatched=(),
        skipped=(),
    )
    assert report.clean
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
    _assert_state_equal(clone.state_dict(), model.state_dict())


def test_extend_trained_network_new_layer_keeps_its_init(trained_mlp) -> None:
    model, path = trained_mlp
    bigger = _seeded(MLPExtended, 5)
    extra_before = _params(bigger.extra)

    report = load_state(bigger, path, strict=False)

    assert report.loaded == ("hidden.weight", "hidden.bias", "out.weight", "out.bias")
    assert report.missing == ("extra.weight", "extra.bias")
    assert report.unexpected == ()
    assert report.mismatched == ()
    assert not report.clean
    _assert_state_equal(bigger.extra.state_dict(), extra_before)
    _assert_state_equal(bigger.hidden.state_dict(), model.hidden.state_dict())
    _assert_state_equal(bigger.out.state_dict(), model.out.state_dict())


def test_extend_trained_network_strict_raises_naming_new_layer(trained_mlp) -> None:
    _, path = trained_mlp
    bigger = _seeded(MLPExtended, 5)
    before = _params(bigger)
    with pytest.raises(StateMismatchError) as ei:
        load_state(bigger, path)
    assert "extra.weight" in str(ei.value)
    assert "extra.bias" in str(ei.value)
    assert ei.value.report.missing == ("extra.weight", "extra.bias")
    _assert_state_equal(bigger.state_dict(), before)


def test_first_two_layers_into_different_network(tmp_path: Path) -> None:
    trained = _seeded(Deep, 7)
    _train(trained)
    path = tmp_path / "deep.satchel"
    satchel.save(trained.state_dict(), path)

    other = _seeded(EncoderHead, 8)
    head_before = _params(other.head)
    report = load_state(
        other,
        path,
        strict=False,
        include=["hidden.*", "hidden2.*"],
        rename={"hidden.": "encoder.0.", "hidden2.": "encoder.2."},
    )

    assert report.loaded == (
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.2.weight",
        "encoder.2.bias",
    )
    assert report.missing == ("head.weight", "head.bias")
    assert report.unexpected == ()
    assert report.mismatched == ()
    assert report.skipped == ("out.weight", "out.bias")
    _assert_state_equal(other.encoder[0].state_dict(), trained.hidden.state_dict())
    _assert_state_equal(other.encoder[2].state_dict(), trained.hidden2.state_dict())
    _assert_state_equal(other.head.state_dict(), head_before)
    # The transplanted encoder computes exactly what the trained layers did.
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = trained.hidden2(torch.relu(trained.hidden(x)))
        assert torch.equal(other.encoder(x), want)


def test_cnn_batchnorm_running_stats_and_num_batches_tracked(tmp_path: Path) -> None:
    cnn = _seeded(SmallCNN, 11)
    g = torch.Generator().manual_seed(12)
    opt = torch.optim.SGD(cnn.parameters(), lr=0.05)
    cnn.train()
    for _ in range(3):
        loss = cnn(torch.randn(8, 1, 6, 6, generator=g) * 3 + 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(cnn.bn.num_batches_tracked) == 3
    path = tmp_path / "cnn.satchel"
    satchel.save(cnn.state_dict(), path)

    fresh = _seeded(SmallCNN, 13)
    assert int(fresh.bn.num_batches_tracked) == 0
    report = load_state(fresh, path)

    assert set(report.loaded) == {
        "conv.weight",
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    }
    assert report.clean
    assert torch.equal(fresh.bn.running_mean, cnn.bn.running_mean)
    assert torch.equal(fresh.bn.running_var, cnn.bn.running_var)
    assert fresh.bn.num_batches_tracked.dtype == torch.int64
    assert int(fresh.bn.num_batches_tracked) == 3
    cnn.eval()
    fresh.eval()
    x = torch.randn(4, 1, 6, 6, generator=g)
    with torch.no_grad():
        assert torch.equal(fresh(x), cnn(x))


def test_tied_weights_saved_from_module_stay_tied(tmp_path: Path) -> None:
    lm = _seeded(TiedLM, 21)
    _train_lm(lm)
    path = tmp_path / "lm.satchel"
    satchel.save(lm.state_dict(), path)

    fresh = _seeded(TiedLM, 22)
    report = load_state(fresh, path)

    assert report.clean
    assert fresh.head.weight is fresh.embed.weight
    assert fresh.head.weight.data_ptr() == fresh.embed.weight.data_ptr()
    assert torch.equal(fresh.embed.weight, lm.embed.weight)
    ids = torch.tensor([[1, 2, 3], [4, 5, 9]])
    with torch.no_grad():
        assert torch.equal(fresh(ids), lm(ids))


def test_tied_alias_is_not_reported_missing(tmp_path: Path) -> None:
    lm = _seeded(TiedLM, 23)
    _train_lm(lm)
    # A source that names the shared weight once (as a converter or a pruned file would).
    source = {k: v.detach().clone() for k, v in lm.state_dict().items() if k != "head.weight"}
    path = tmp_path / "lm_once.satchel"
    satchel.save(source, path)

    fresh = _seeded(TiedLM, 24)
    weight_obj = fresh.embed.weight
    report = load_state(fresh, path)  # strict: must not complain about head.weight

    assert report.loaded == ("embed.weight", "proj.weight", "proj.bias")
    assert report.missing == ()
    assert report.unexpected == ()
    assert fresh.embed.weight is weight_obj
    assert fresh.head.weight is fresh.embed.weight
    assert fresh.head.weight.data_ptr() == fresh.embed.weight.data_ptr()
    assert torch.equal(fresh.head.weight, lm.embed.weight)

    # After an optimizer step on the loaded model the two names still move together.
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh(torch.tensor([[0, 1]])).sum().backward()
    opt.step()
    assert fresh.head.weight is fresh.embed.weight
    assert not torch.equal(fresh.embed.weight, lm.embed.weight)


def _train_lm(lm: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(lm.parameters(), lr=0.1)
    for _ in range(3):
        ids = torch.randint(0, 10, (4, 5), generator=g)
        loss = nn.functional.cross_entropy(lm(ids).reshape(-1, 10), ids.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


# -- report and strictness ---------------------------------------------------------------------


def _bad_source(model: nn.Module) -> dict[str, torch.Tensor]:
    """hidden.bias missing, out.weight of the wrong shape, out.bias of the wrong dtype, extras."""
    sd = {k: v.detach().clone() + 1 for k, v in model.state_dict().items()}
    del sd["hidden.bias"]
    sd["out.weight"] = torch.zeros(5, 8)
    sd["out.bias"] = torch.zeros(3, dtype=torch.float64)
    sd["stray.weight"] = torch.zeros(2)
    sd["other"] = torch.zeros(1)
    return sd


def test_strict_error_lists_every_problem_and_leaves_target_untouched() -> None:
    model = _seeded(MLP, 31)
    before = _params(model)
    source = _bad_source(model)

    with pytest.raises(StateMismatchError) as ei:
        load_state(model, source)

    err = ei.value
    assert isinstance(err, ValueError)
    assert isinstance(err, satchel.SatchelError)
    msg = str(err)
    for name in ("hidden.bias", "stray.weight", "other", "out.weight", "out.bias"):
        assert name in msg, name
    assert "float32[3, 8]" in msg
    assert "float32[5, 8]" in msg
    assert "float64[3]" in msg
    report = err.report
    assert isinstance(report, LoadReport)
    assert report.loaded == ("hidden.weight",)
    assert report.missing == ("hidden.bias",)
    assert report.unexpected == ("stray.weight", "other")
    assert report.mismatched == (
        Mismatch("out.weight", "float32[3, 8]", "float32[5, 8]"),
        Mismatch("out.bias", "float32[3]", "float64[3]"),
    )
    # Nothing was copied, not even the one name that matched.
    _assert_state_equal(model.state_dict(), before)


def test_strict_error_from_path_source(tmp_path: Path) -> None:
    model = _seeded(MLP, 32)
    before = _params(model)
    path = tmp_path / "bad.satchel"
    satchel.save(_bad_source(model), path)
    with pytest.raises(StateMismatchError) as ei:
        load_state(model, path)
    assert ei.value.report.missing == ("hidden.bias",)
    assert ei.value.report.unexpected == ("stray.weight", "other")
    assert [m.name for m in ei.value.report.mismatched] == ["out.weight", "out.bias"]
    _assert_state_equal(model.state_dict(), before)


def test_mismatch_fails_even_when_not_strict() -> None:
    model = _seeded(MLP, 33)
    before = _params(model)
    with pytest.raises(StateMismatchError) as ei:
        load_state(model, _bad_source(model), strict=False)
    assert len(ei.value.report.mismatched) == 2
    _assert_state_equal(model.state_dict(), before)


def test_skip_mismatched_loads_the_rest() -> None:
    model = _seeded(MLP, 34)
    before = _params(model)
    source = _bad_source(model)

    report = load_state(model, source, strict=False, skip_mismatched=True)

    assert report.loaded == ("hidden.weight",)
    assert report.missing == ("hidden.bias",)
    assert report.unexpected == ("stray.weight", "other")
    assert report.mismatched == (
        Mismatch("out.weight", "float32[3, 8]", "float32[5, 8]"),
        Mismatch("out.bias", "float32[3]", "float64[3]"),
    )
    assert torch.equal(model.hidden.weight, source["hidden.weight"])
    for name in ("hidden.bias", "out.weight", "out.bias"):
        assert torch.equal(model.state_dict()[name], before[name]), name


def test_skip_mismatched_with_strict_passes_when_only_mismatches() -> None:
    model = _seeded(MLP, 35)
    before = _params(model)
    source = {k: v.detach().clone() - 1 for k, v in model.state_dict().items()}
    source["out.weight"] = torch.zeros(2, 8)

    report = load_state(model, source, skip_mismatched=True)

    assert report.loaded == ("hidden.weight", "hidden.bias", "out.bias")
    assert report.missing == ()
    assert report.mismatched == (Mismatch("out.weight", "float32[3, 8]", "float32[2, 8]"),)
    assert torch.equal(model.out.weight, before["out.weight"])
    assert torch.equal(model.out.bias, source["out.bias"])


def test_strict_with_skip_mismatched_still_lists_missing_and_unexpected() -> None:
    model = _seeded(MLP, 36)
    before = _params(model)
    with pytest.raises(StateMismatchError) as ei:
        load_state(model, _bad_source(model), skip_mismatched=True)
    msg = str(ei.value)
    for name in ("hidden.bias", "stray.weight", "other", "out.weight", "out.bias"):
        assert name in msg, name
    _assert_state_equal(model.state_dict(), before)


def test_report_is_frozen_dataclass() -> None:
    report = load_state(_seeded(MLP, 37), _seeded(MLP, 38).state_dict())
    assert dataclasses.is_dataclass(report)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.loaded = ()  # type: ignore[misc]
    m = Mismatch("a", "float32[1]", "float32[2]")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "b"  # type: ignore[misc]
    assert (m.name, m.expected, m.found) == ("a", "float32[1]", "float32[2]")


def test_parameters_are_copied_in_place() -> None:
    model = _seeded(MLP, 39)
    objs = {n: p for n, p in model.named_parameters()}
    ptrs = {n: p.data_ptr() for n, p in objs.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    source = _seeded(MLP, 40).state_dict()

    load_state(model, source)

    for n, p in model.named_parameters():
        assert p is objs[n]
        assert p.data_ptr() == ptrs[n]
        assert p.requires_grad
        assert torch.equal(p, source[n])
    # The optimizer still holds the model's parameters.
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in objs.values()]


def test_non_persistent_buffers_are_not_targets() -> None:
    model = _seeded(MLP, 41)
    model.register_buffer("scratch", torch.ones(2), persistent=False)
    model.register_buffer("kept", torch.zeros(2))
    source = {k: v.clone() + 1 for k, v in model.state_dict().items()}

    report = load_state(model, source)
    assert "scratch" not in report.loaded + report.missing
    assert "kept" in report.loaded
    assert torch.equal(model.kept, torch.ones(2))
    assert torch.equal(model.scratch, torch.ones(2))

    source["scratch"] = torch.full((2,), 5.0)
    with pytest.raises(StateMismatchError) as ei:
        load_state(model, source)
    assert ei.value.report.unexpected == ("scratch",)
    assert torch.equal(model.scratch, torch.ones(2))


# -- include / exclude / rename -----------------------------------------------------------------


def test_include_globs() -> None:
    model = _seeded(MLP, 51)
    source = _seeded(MLP, 52).state_dict()
    before = _params(model)

    report = load_state(model, source, include=["*.weight"], strict=False)

    assert report.loaded == ("hidden.weight", "out.weight")
    assert report.missing == ("hidden.bias", "out.bias")
    assert report.skipped == ("hidden.bias", "out.bias")
    assert report.unexpected == ()
    assert torch.equal(model.hidden.weight, source["hidden.weight"])
    assert torch.equal(model.hidden.bias, before["hidden.bias"])


def test_exclude_globs() -> None:
    model = _seeded(MLP, 53)
    source = _seeded(MLP, 54).state_dict()
    before = _params(model)

    report = load_state(model, source, exclude=["out.*"], strict=False)

    assert report.loaded == ("hidden.weight", "hidden.bias")
    assert report.missing == ("out.weight", "out.bias")
    assert report.skipped == ("out.weight", "out.bias")
    assert torch.equal(model.out.weight, before["out.weight"])
    assert torch.equal(model.hidden.bias, source["hidden.bias"])


def test_include_and_exclude_combined_and_excluded_unexpected_not_reported() -> None:
    model = _seeded(MLP, 55)
    source = dict(_seeded(MLP, 56).state_dict())
    source["aux.weight"] = torch.zeros(3)
    source["aux.bias"] = torch.zeros(3)

    report = load_state(
        model, source, include=["hidden.*", "out.*", "aux.*"], exclude=["*.bias"], strict=False
    )

    assert report.loaded == ("hidden.weight", "out.weight")
    assert report.unexpected == ("aux.weight",)
    assert report.missing == ("hidden.bias", "out.bias")
    assert set(report.skipped) == {"hidden.bias", "out.bias", "aux.bias"}


def test_strict_fails_when_include_leaves_target_names_unloaded() -> None:
    model = _seeded(MLP, 57)
    before = _params(model)
    with pytest.raises(StateMismatchError) as ei:
        load_state(model, _seeded(MLP, 58).state_dict(), include=["hidden.*"])
    assert ei.value.report.missing == ("out.weight", "out.bias")
    _assert_state_equal(model.state_dict(), before)


def test_rename_dict_prefixes_longest_wins() -> None:
    source = {
        "backbone.layer.weight": torch.full((8, 4), 1.0),
        "backbone.layer.bias": torch.full((8,), 2.0),
        "backbone.layer_out.weight": torch.full((3, 8), 3.0),
        "backbone.layer_out.bias": torch.full((3,), 4.0),
    }
    model = _seeded(MLP, 59)
    report = load_state(
        model, source, rename={"backbone.layer.": "hidden.", "backbone.layer_out.": "out."}
    )
    assert report.loaded == ("hidden.weight", "hidden.bias", "out.weight", "out.bias")
    assert report.clean
    assert torch.equal(model.hidden.bias, torch.full((8,), 2.0))
    assert torch.equal(model.out.weight, torch.full((3, 8), 3.0))

    # Overlapping prefixes: the longest one applies.
    model2 = _seeded(MLP, 60)
    src2 = {"m.weight": torch.full((8, 4), 5.0), "m.o.weight": torch.full((3, 8), 6.0)}
    report2 = load_state(model2, src2, rename={"m.": "hidden.", "m.o.": "out."}, strict=False)
    assert report2.loaded == ("hidden.weight", "out.weight")
    assert torch.equal(model2.out.weight, torch.full((3, 8), 6.0))


def test_rename_callable() -> None:
    trained = _seeded(Deep, 61)
    path_source = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    other = _seeded(EncoderHead, 62)

    def rename(name: str) -> str:
        layer, _, leaf = name.partition(".")
        return {"hidden": "encoder.0", "hidden2": "encoder.2", "out": "dropped"}[layer] + "." + leaf

    report = load_state(other, path_source, rename=rename, strict=False)

    assert report.loaded == (
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.2.weight",
        "encoder.2.bias",
    )
    # Unexpected names are the source's own names.
    assert report.unexpected == ("out.weight", "out.bias")
    assert report.missing == ("head.weight", "head.bias")
    assert torch.equal(other.encoder[2].weight, trained.hidden2.weight)


def test_rename_mismatch_reported_under_target_name() -> None:
    model = _seeded(MLP, 63)
    source = {"h.weight": torch.zeros(8, 5), "h.bias": torch.zeros(8)}
    report = load_state(model, source, rename={"h.": "hidden."}, strict=False, skip_mismatched=True)
    assert report.mismatched == (Mismatch("hidden.weight", "float32[8, 4]", "float32[8, 5]"),)
    assert report.loaded == ("hidden.bias",)
    assert report.missing == ("out.weight", "out.bias")


# -- mapping targets and sources ----------------------------------------------------------------


def test_numpy_mapping_target_in_place(tmp_path: Path) -> None:
    a = np.zeros(3, dtype=np.float32)
    c = np.zeros((2, 2), dtype=np.int64)
    target = {"a": a, "b": {"c": c}}
    source = {"a": np.arange(3, dtype=np.float32), "b": {"c": np.arange(4).reshape(2, 2)}}
    path = tmp_path / "np.satchel"
    satchel.save(source, path)

    report = load_state(target, path)

    assert report.loaded == ("a", "b.c")
    assert report.clean
    assert target["a"] is a
    assert target["b"]["c"] is c
    np.testing.assert_array_equal(a, [0, 1, 2])
    np.testing.assert_array_equal(c, [[0, 1], [2, 3]])


def test_numpy_mapping_target_from_mapping_source_with_problems() -> None:
    a = np.zeros(3, dtype=np.float32)
    target = {"a": a, "b": np.zeros(2, dtype=np.float32)}
    source = {"a": np.ones(3, dtype=np.float64), "c": np.ones(1, dtype=np.float32)}

    with pytest.raises(StateMismatchError) as ei:
        load_state(target, source)
    assert ei.value.report.mismatched == (Mismatch("a", "float32[3]", "float64[3]"),)
    assert ei.value.report.missing == ("b",)
    assert ei.value.report.unexpected == ("c",)
    np.testing.assert_array_equal(a, np.zeros(3))


def test_torch_mapping_target_in_place_from_numpy_and_torch_sources(tmp_path: Path) -> None:
    w = torch.zeros(2, 3)
    b = torch.zeros(3, dtype=torch.float64)
    target = {"layer": {"w": w, "b": b}}
    ptr = w.data_ptr()

    report = load_state(target, {"layer": {"w": np.ones((2, 3), np.float32), "b": np.ones(3)}})
    assert report.loaded == ("layer.w", "layer.b")
    assert target["layer"]["w"] is w
    assert w.data_ptr() == ptr
    assert torch.equal(w, torch.ones(2, 3))
    assert torch.equal(b, torch.ones(3, dtype=torch.float64))

    path = tmp_path / "t.satchel"
    satchel.save(
        {"layer.w": torch.full((2, 3), 7.0), "layer.b": torch.full((3,), 8.0).double()}, path
    )
    report = load_state(target, path)
    assert report.loaded == ("layer.w", "layer.b")
    assert target["layer"]["w"] is w
    assert torch.equal(w, torch.full((2, 3), 7.0))
    assert torch.equal(b, torch.full((3,), 8.0, dtype=torch.float64))


def test_module_from_path_and_from_loaded_mapping_agree(trained_mlp) -> None:
    model, path = trained_mlp
    a = _seeded(MLP, 70)
    b = _seeded(MLP, 71)
    ra = load_state(a, path)
    rb = load_state(b, satchel.load(path))
    assert ra == rb
    _assert_state_equal(a.state_dict(), b.state_dict())
    _assert_state_equal(a.state_dict(), model.state_dict())


def test_plain_values_in_source_are_skipped() -> None:
    model = _seeded(MLP, 72)
    source = {"version": 3, "meta": {"name": "x"}, **_seeded(MLP, 73).state_dict()}
    report = load_state(model, source)
    assert report.loaded == ("hidden.weight", "hidden.bias", "out.weight", "out.bias")
    assert set(report.skipped) == {"version", "meta.name"}
    assert report.unexpected == ()


# -- optimizer target --------------------------------------------------------------------------


def test_optimizer_target_via_load_state(tmp_path: Path) -> None:
    model = _seeded(MLP, 80)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    _train_with(model, opt, 3)
    path = tmp_path / "opt.satchel"
    satchel.save(opt.state_dict(), path)

    model2 = _seeded(MLP, 80)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    report = load_state(opt2, path)

    assert report.loaded == ("state.0", "state.1", "state.2", "state.3")
    assert opt2.param_groups[0]["lr"] == 0.01
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for i, p in enumerate(model2.parameters()):
        ref = opt.state[list(model.parameters())[i]]
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt2.state[p][key], ref[key]), key


def test_optimizer_target_that_does_not_fit_raises(tmp_path: Path) -> None:
    model = _seeded(MLP, 81)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_with(model, opt, 1)
    path = tmp_path / "opt.satchel"
    satchel.save(opt.state_dict(), path)

    small = nn.Linear(4, 8)
    opt_small = torch.optim.SGD(small.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(StateMismatchError) as ei:
        load_state(opt_small, path)
    assert isinstance(ei.value, ValueError)
    assert opt_small.state_dict()["state"] == {}


def _train_with(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(99)
    for _ in range(steps):
        loss = model(torch.randn(8, 4, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# -- whole nn.Modules without pickle (item 2) --------------------------------------------------


def test_save_module_records_class_path_and_load_returns_state(tmp_path: Path) -> None:
    model = _seeded(SmallCNN, 90)
    path = tmp_path / "cnn.satchel"
    satchel.save(model, path)

    with satchel.open(path) as f:
        assert f.module_class == f"{SmallCNN.__module__}.SmallCNN"
        assert f.module_class.endswith("test_state.SmallCNN")
        assert set(f.keys()) == set(model.state_dict())

    loaded = satchel.load(path)
    assert isinstance(loaded, Mapping)
    assert not isinstance(loaded, nn.Module)
    _assert_state_equal(loaded, model.state_dict())

    fresh = _seeded(SmallCNN, 91)
    assert load_state(fresh, path).clean
    _assert_state_equal(fresh.state_dict(), model.state_dict())


def test_module_class_is_information_never_imported(tmp_path: Path) -> None:
    """The recorded class path names a module that does not exist; loading never imports it."""

    def make_local() -> nn.Module:
        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin = nn.Linear(2, 2)

        Net.__module__ = "satchel_no_such_pkg.models"
        Net.__qualname__ = "Net"
        return Net()

    model = make_local()
    path = tmp_path / "net.satchel"
    satchel.save(model, path)
    assert "satchel_no_such_pkg" not in sys.modules

    assert satchel.open(path).module_class == "satchel_no_such_pkg.models.Net"
    loaded = satchel.load(path)
    assert list(loaded) == ["lin.weight", "lin.bias"]
    assert torch.equal(loaded["lin.weight"], model.lin.weight)
    assert "satchel_no_such_pkg" not in sys.modules
    assert "satchel_no_such_pkg.models" not in sys.modules


def test_plain_state_dict_has_no_module_class(tmp_path: Path) -> None:
    path = tmp_path / "sd.satchel"
    satchel.save(_seeded(MLP, 92).state_dict(), path)
    assert satchel.open(path).module_class is None


def test_saved_module_with_tied_weights_round_trips(tmp_path: Path) -> None:
    lm = _seeded(TiedLM, 93)
    path = tmp_path / "lm.satchel"
    satchel.save(lm, path)
    assert satchel.open(path).module_class == f"{TiedLM.__module__}.TiedLM"
    loaded = satchel.load(path)
    # One stored tensor behind both names (state_dict() gives two views of one storage).
    with satchel.open(path) as f:
        assert f.keys() == ["embed.weight", "proj.weight", "proj.bias", "head.weight"]
    assert loaded["head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()
    fresh = _seeded(TiedLM, 94)
    assert load_state(fresh, loaded).clean
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, lm.embed.weight)


# -- more sources ------------------------------------------------------------------------------


def test_tied_weights_source_naming_only_the_alias() -> None:
    lm = _seeded(TiedLM, 95)
    source = {k: v.detach().clone() + 1 for k, v in lm.state_dict().items() if k != "embed.weight"}
    fresh = _seeded(TiedLM, 96)

    report = load_state(fresh, source)

    assert report.loaded == ("proj.weight", "proj.bias", "head.weight")
    assert report.missing == ()
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, source["head.weight"])


def test_numpy_arrays_into_torch_module(tmp_path: Path) -> None:
    ref = _seeded(MLP, 97)
    source = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    path = tmp_path / "np_params.satchel"
    satchel.save(source, path)
    model = _seeded(MLP, 98)

    report = load_state(model, path)

    assert report.loaded == ("hidden.weight", "hidden.bias", "out.weight", "out.bias")
    assert report.clean
    _assert_state_equal(model.state_dict(), ref.state_dict())
    # A NumPy float16 array does not fit a float32 parameter.
    source["out.bias"] = source["out.bias"].astype(np.float16)
    with pytest.raises(StateMismatchError) as ei:
        load_state(_seeded(MLP, 98), source)
    assert ei.value.report.mismatched == (Mismatch("out.bias", "float32[3]", "float16[3]"),)


def test_model_from_nested_training_checkpoint(tmp_path: Path) -> None:
    """A whole training checkpoint as source: pick the model's part with include and rename."""
    model = _seeded(MLP, 99)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_with(model, opt, 2)
    path = tmp_path / "ckpt.satchel"
    satchel.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 4}, path)

    fresh = _seeded(MLP, 100)
    report = load_state(fresh, path, include=["model.*"], rename={"model.": ""})

    assert report.loaded == ("hidden.weight", "hidden.bias", "out.weight", "out.bias")
    assert report.clean
    assert "epoch" in report.skipped
    assert "optimizer.state.0.momentum_buffer" in report.skipped
    _assert_state_equal(fresh.state_dict(), model.state_dict())


def test_unsupported_target_is_a_usage_error() -> None:
    with pytest.raises(satchel.UsageError):
        load_state([torch.zeros(1)], {"0": torch.zeros(1)})
