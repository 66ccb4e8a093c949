"""Training state without pickle (issue item 3): optimizers, LR schedulers, GradScaler, RNG
state, step/epoch and user extras, each through satchel.save/load or CheckpointManager."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import satchel
from satchel import CheckpointManager, capture_rng, restore_rng


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def _batches(seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(6, 5, generator=g)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = (model(x) - 0.5).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _assert_tree_equal(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested state (tensors: dtype, shape and bytes; others: == and type)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype, where
        assert a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping), where
        assert list(a) == list(b), where
        for k in a:
            _assert_tree_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b), where
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_tree_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float), where
        assert math.isnan(b), where
    else:
        assert type(a) is type(b), (where, a, b)
        assert a == b, where


def _params_equal(a: nn.Module, b: nn.Module) -> None:
    _assert_tree_equal(dict(a.state_dict()), dict(b.state_dict()))


@pytest.fixture(autouse=True)
def _keep_global_rng() -> Iterator[None]:
    """Tests here draw from and reset global generators; leave them as they were."""
    py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(py)
    np.random.set_state(npst)
    torch.set_rng_state(th)


# -- optimizers ----------------------------------------------------------------------------------

OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd_momentum": (
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "dampening": 0.0},
    ),
    "adam": (
        torch.optim.Adam,
        {"lr": 3e-3, "betas": (0.85, 0.97), "eps": 1e-7, "weight_decay": 1e-4, "amsgrad": True},
    ),
    "adamw": (
        torch.optim.AdamW,
        {"lr": 2e-3, "betas": (0.9, 0.95), "eps": 1e-6, "weight_decay": 0.05},
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_round_trip_and_continued_training_bitwise(name: str, tmp_path: Path) -> None:
    make, hyper = OPTIMIZERS[name]
    model = _net(1)
    # Two param groups with different hyperparameters.
    opt = make(
        [
            {"params": model.a.parameters()},
            {"params": model.b.parameters(), "lr": hyper["lr"] / 2, "weight_decay": 0.0},
        ],
        **hyper,
    )
    data = _batches(2)
    for _ in range(4):
        _step(model, opt, next(data))

    path = tmp_path / f"{name}.satchel"
    satchel.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    loaded = satchel.load(path)

    # The loaded state is the saved state, bitwise, with tuples and ints as they were.
    _assert_tree_equal(loaded["optimizer"], opt.state_dict())
    assert set(loaded["optimizer"]["state"]) == {0, 1, 2, 3}
    if "betas" in hyper:
        assert type(loaded["optimizer"]["param_groups"][0]["betas"]) is tuple

    # A new model and optimizer, built with other hyperparameters, take the saved state.
    model2 = _net(99)
    opt2 = make(
        [{"params": model2.a.parameters()}, {"params": model2.b.parameters()}],
        lr=0.5,
    )
    assert satchel.load_state(model2, loaded["model"]).clean
    opt2.load_state_dict(loaded["optimizer"])

    _assert_tree_equal(opt2.state_dict(), opt.state_dict())
    for g1, g2 in zip(opt.param_groups, opt2.param_groups, strict=True):
        for key in g1:
            if key != "params":
                _assert_tree_equal(g2[key], g1[key], key)
    assert opt2.param_groups[1]["lr"] == hyper["lr"] / 2
    assert opt2.param_groups[0]["weight_decay"] == hyper["weight_decay"]
    assert opt2.param_groups[1]["weight_decay"] == 0.0
    if "betas" in hyper:
        assert opt2.param_groups[0]["betas"] == hyper["betas"]
        assert type(opt2.param_groups[0]["betas"]) is tuple
    if name == "sgd_momentum":
        assert opt2.param_groups[0]["momentum"] == 0.9
        assert opt2.param_groups[0]["nesterov"] is True
    if name == "adam":
        assert opt2.param_groups[0]["amsgrad"] is True

    # Continuing both from here gives bitwise-equal parameters and optimizer state.
    cont = _batches(3)
    for _ in range(5):
        x = next(cont)
        _step(model, opt, x)
        _step(model2, opt2, x)
    _params_equal(model, model2)
    _assert_tree_equal(opt2.state_dict(), opt.state_dict())


def test_optimizer_round_trip_through_checkpoint_manager(tmp_path: Path) -> None:
    model = _net(4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9), weight_decay=0.1)
    data = _batches(5)
    for _ in range(3):
        _step(model, opt, next(data))
    mgr = CheckpointManager(tmp_path / "run")
    mgr.save(3, model=model, optimizer=opt)

    model2 = _net(6)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    result = mgr.restore(model=model2, optimizer=opt2)

    assert result.step == 3
    assert result.reports["model"].clean
    _params_equal(model, model2)
    _assert_tree_equal(opt2.state_dict(), opt.state_dict())
    for _ in range(3):
        x = next(data)
        _step(model, opt, x)
        _step(model2, opt2, x)
    _params_equal(model, model2)


# -- LR schedulers -------------------------------------------------------------------------------

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=30, pct_start=0.3
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_round_trip(name: str, tmp_path: Path) -> None:
    model = _net(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = SCHEDULERS[name](opt)
    data = _batches(8)
    for _ in range(7):
        _step(model, opt, next(data))
        sched.step()

    path = tmp_path / "sched.satchel"
    satchel.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        },
        path,
    )
    loaded = satchel.load(path)
    _assert_tree_equal(loaded["scheduler"], sched.state_dict())

    model2 = _net(70)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = SCHEDULERS[name](opt2)
    satchel.load_state(model2, loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])

    _assert_tree_equal(sched2.state_dict(), sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched2.last_epoch == sched.last_epoch == 7
    lrs1, lrs2 = [], []
    for _ in range(10):
        x = next(data)
        _step(model, opt, x)
        _step(model2, opt2, x)
        sched.step()
        sched2.step()
        lrs1.append(sched.get_last_lr())
        lrs2.append(sched2.get_last_lr())
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        if name == "onecycle":
            assert opt2.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]
    assert lrs1 == lrs2
    assert len({lr[0] for lr in lrs1}) > 1  # the schedule really moved
    _params_equal(model, model2)


def test_scheduler_through_checkpoint_manager(tmp_path: Path) -> None:
    model = _net(9)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(5):
        opt.step()
        sched.step()
    mgr = CheckpointManager(tmp_path / "run")
    mgr.save(5, model=model, optimizer=opt, scheduler=sched)

    opt2 = torch.optim.SGD(_net(10).parameters(), lr=0.2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.1)
    mgr.restore(optimizer=opt2, scheduler=sched2)
    _assert_tree_equal(sched2.state_dict(), sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# -- GradScaler ------------------------------------------------------------------------------------


def _scaler_steps(model: nn.Module, opt: torch.optim.Optimizer, scaler: Any, xs: list) -> None:
    for i, x in enumerate(xs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        if i == 1:
            loss = loss * float("inf")  # one overflowing step: the scale backs off
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def test_grad_scaler_round_trip(tmp_path: Path) -> None:
    model = _net(11)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=4)
    data = _batches(12)
    _scaler_steps(model, opt, scaler, [next(data) for _ in range(5)])
    state = scaler.state_dict()
    assert state["scale"] != 2.0**10  # it backed off on the overflow
    assert state["_growth_tracker"] != 0

    path = tmp_path / "scaler.satchel"
    satchel.save({"model": model.state_dict(), "opt": opt.state_dict(), "scaler": state}, path)
    loaded = satchel.load(path)
    _assert_tree_equal(loaded["scaler"], state)

    model2 = _net(13)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.01)
    scaler2 = torch.amp.GradScaler("cpu")
    satchel.load_state(model2, loaded["model"])
    opt2.load_state_dict(loaded["opt"])
    scaler2.load_state_dict(loaded["scaler"])
    _assert_tree_equal(scaler2.state_dict(), state)
    assert scaler2.get_scale() == scaler.get_scale()

    xs = [next(data) for _ in range(4)]
    _scaler_steps(model, opt, scaler, xs)
    _scaler_steps(model2, opt2, scaler2, xs)
    _assert_tree_equal(scaler2.state_dict(), scaler.state_dict())
    _params_equal(model, model2)


def test_grad_scaler_through_checkpoint_manager(tmp_path: Path) -> None:
    model = _net(14)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=2)
    data = _batches(15)
    _scaler_steps(model, opt, scaler, [next(data) for _ in range(3)])
    mgr = CheckpointManager(tmp_path / "run")
    mgr.save(3, scaler=scaler)
    scaler2 = torch.amp.GradScaler("cpu")
    mgr.restore(scaler=scaler2)
    _assert_tree_equal(scaler2.state_dict(), scaler.state_dict())


# -- RNG state ---------------------------------------------------------------------------------


def _draw() -> tuple[list[float], list[float], list[float], list[float], torch.Tensor]:
    return (
        [random.random() for _ in range(5)],
        [random.gauss(0, 1) for _ in range(3)],
        np.random.rand(5).tolist(),
        np.random.randn(3).tolist(),
        torch.rand(5),
    )


def _assert_draws_equal(a: tuple, b: tuple) -> None:
    assert a[:4] == b[:4]
    assert torch.equal(a[4], b[4])


def test_rng_round_trip_through_save_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    # Put cached Gaussians in both Python's and NumPy's state, the tricky part of each.
    random.gauss(0, 1)
    np.random.randn(1)
    assert random.getstate()[2] is not None
    assert np.random.get_state()[3] == 1
    torch.rand(3)

    state = capture_rng()
    assert {"python", "numpy", "torch"} <= set(state)
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        assert "cuda" not in state
    path = tmp_path / "rng.satchel"
    satchel.save(state, path)

    expected = _draw()
    # Move every generator elsewhere, then restore from the file (a plain loaded structure).
    random.seed(100)
    np.random.seed(100)
    torch.manual_seed(100)
    _draw()
    restore_rng(satchel.load(path))
    got = _draw()
    _assert_draws_equal(got, expected)

    # Restoring twice from the same loaded structure gives the same sequence again.
    loaded = satchel.load(path)
    restore_rng(loaded)
    first = _draw()
    restore_rng(loaded)
    _assert_draws_equal(_draw(), first)
    _assert_draws_equal(first, expected)


def test_rng_loaded_state_matches_captured_state(tmp_path: Path) -> None:
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    state = capture_rng()
    path = tmp_path / "rng.satchel"
    satchel.save(state, path)
    loaded = satchel.load(path)
    restore_rng(loaded)
    assert random.getstate() == state["python"]
    now = np.random.get_state()
    assert now[0] == state["numpy"][0]
    np.testing.assert_array_equal(now[1], state["numpy"][1])
    assert now[2:] == tuple(state["numpy"][2:])
    assert torch.equal(torch.get_rng_state(), state["torch"])


def test_rng_round_trip_through_checkpoint_manager(tmp_path: Path) -> None:
    random.seed(21)
    np.random.seed(22)
    torch.manual_seed(23)
    mgr = CheckpointManager(tmp_path / "run")
    mgr.save(1, rng=True, model=_net(0))
    expected = _draw()
    _draw()
    mgr.restore(rng=True)
    _assert_draws_equal(_draw(), expected)


def test_restore_rng_rejects_other_structures() -> None:
    with pytest.raises(satchel.UsageError):
        restore_rng({"torch": torch.get_rng_state()})
    with pytest.raises(ValueError):
        restore_rng([1, 2, 3])


# -- step/epoch and extras ---------------------------------------------------------------------


def test_extras_json_values_and_tensors_through_checkpoint_manager(tmp_path: Path) -> None:
    model = _net(31)
    extra = {
        "epoch": 3,
        "global_step": 1200,
        "best_val": 0.125,
        "name": "run-α",
        "done": False,
        "note": None,
        "history": [1.5, 0.75, 0.5],
        "nested": {"lrs": [0.1, 0.01], "flags": {"warmup": True}},
        "centroids": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "counts": np.array([1, 2, 3], dtype=np.int64),
        "mask": torch.tensor([True, False, True]),
    }
    mgr = CheckpointManager(tmp_path / "run")
    mgr.save(1200, model=model, extra=extra, metrics={"val_loss": 0.125})

    model2 = _net(32)
    result = mgr.restore(model=model2)

    assert result.step == 1200
    assert result.metrics == {"val_loss": 0.125}
    _params_equal(model, model2)
    got = result.extra
    for key in ("epoch", "global_step", "best_val", "name", "done", "note", "history", "nested"):
        assert got[key] == extra[key], key
        assert type(got[key]) is type(extra[key]), key
    assert isinstance(got["centroids"], torch.Tensor)
    assert got["centroids"].dtype == torch.float32
    assert torch.equal(got["centroids"], extra["centroids"])
    assert isinstance(got["counts"], np.ndarray)
    assert got["counts"].dtype == np.int64
    np.testing.assert_array_equal(got["counts"], extra["counts"])
    assert torch.equal(got["mask"], extra["mask"])
    assert "extra" not in result.reports


def test_full_training_state_through_checkpoint_manager(tmp_path: Path) -> None:
    """Model, optimizer, scheduler, scaler, RNG, step/epoch and extras together."""
    model = _net(41)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    torch.manual_seed(42)
    random.seed(42)
    np.random.seed(42)
    data = _batches(43)
    _scaler_steps(model, opt, scaler, [next(data) for _ in range(3)])
    sched.step()
    mgr = CheckpointManager(tmp_path / "run", keep_last=2)
    mgr.save(
        3,
        model=model,
        optimizer=opt,
        scheduler=sched,
        scaler=scaler,
        rng=True,
        extra={"epoch": 1, "data_gen": torch.Generator().manual_seed(7).get_state()},
    )
    after_save = _draw()

    model2 = _net(44)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=8)
    scaler2 = torch.amp.GradScaler("cpu")
    _draw()
    result = mgr.restore(model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2, rng=True)

    assert result.step == 3
    assert result.extra["epoch"] == 1
    g = torch.Generator()
    g.set_state(result.extra["data_gen"])
    assert torch.equal(
        torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(7))
    )
    _params_equal(model, model2)
    _assert_tree_equal(opt2.state_dict(), opt.state_dict())
    _assert_tree_equal(sched2.state_dict(), sched.state_dict())
    _assert_tree_equal(scaler2.state_dict(), scaler.state_dict())
    _assert_draws_equal(_draw(), after_save)
