"""Live Keras 3 models and optimizers (issue 14): the tutorials' ``save_weights`` /
``load_weights`` flow through satchel, Keras' and TensorFlow's own files loaded into a model,
and a Keras training run resumed exactly through ``CheckpointManager``.

Keras' own loaders (``load_weights``, ``load_model``, ``tf.train.Checkpoint.restore``) are the
oracles. TensorFlow is imported once for the session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's start-up banner, not errors

import keras
import numpy as np
import pytest
import tensorflow as tf

import satchel
from fixture_truth import FIXTURES

X = np.random.default_rng(0).normal(size=(8, 20)).astype(np.float32)
Y = np.arange(8) % 10


class MLP(keras.Model):
    """The tutorials' model: a hidden layer and an output layer, as attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = keras.layers.Dense(256, activation="relu")
        self.out = keras.layers.Dense(10)

    def call(self, x: Any) -> Any:
        return self.out(self.hidden(x))


def _mlp() -> MLP:
    net = MLP()
    net(X)  # builds the variables
    return net


def _sequential() -> keras.Sequential:
    return keras.Sequential(
        [keras.Input((20,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)]
    )


def _manifest(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["satchel"])


def _values(model: Any) -> list[bytes]:
    return [v.numpy().tobytes() for v in model.weights]


def test_tutorial_clone_loads_saved_parameters_and_gives_equal_outputs(tmp_path: Path) -> None:
    net = _mlp()
    y = net(X)
    satchel.save(net, tmp_path / "mlp.params")
    clone = _mlp()  # other layer names (dense_2...) and other random weights
    assert not np.array_equal(clone(X).numpy(), y.numpy())
    report = satchel.load_state(clone, tmp_path / "mlp.params")
    assert report.clean
    assert report.loaded == ("hidden/kernel", "hidden/bias", "out/kernel", "out/bias")
    assert np.array_equal(clone(X).numpy(), y.numpy())


def test_spec_3_3_keras_model_saves_weights_by_stable_names_and_class_path(
    tmp_path: Path,
) -> None:
    first, second = _sequential(), _sequential()
    assert first.weights[0].path != second.weights[0].path  # Keras' paths differ per instance
    satchel.save(first, tmp_path / "a")
    satchel.save(second, tmp_path / "b")
    names = ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"]
    for p in ("a", "b"):
        with satchel.open(tmp_path / p) as f:
            assert list(f.keys()) == names
        m = _manifest(tmp_path / p)
        assert m["module"] == "keras.src.models.sequential.Sequential"
        assert {leaf["framework"] for leaf in m["leaves"]} == {"tensorflow"}
    loaded = satchel.load(tmp_path / "a")
    assert all(isinstance(v, tf.Tensor) for v in loaded.values())
    assert np.array_equal(loaded["dense_1/bias"].numpy(), first.weights[3].numpy())


def test_spec_4_7_keras_names_are_layer_paths_and_optimizer_slots(tmp_path: Path) -> None:
    net = _mlp()  # layers that are attributes are named by the attribute
    opt = keras.optimizers.Adam()
    opt.build(net.trainable_variables)
    satchel.save(net, tmp_path / "model")
    satchel.save(opt, tmp_path / "optimizer")
    model_names = ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]
    with satchel.open(tmp_path / "model") as f:
        assert list(f.keys()) == model_names
    with satchel.open(tmp_path / "optimizer") as f:
        optimizer = set(f.keys())
    assert {"iteration", "learning_rate", "momentum/0", "velocity/3"} <= optimizer
    assert len(optimizer) == 2 + 2 * len(model_names)


def test_non_trainable_variables_are_saved_and_loaded(tmp_path: Path) -> None:
    def model() -> keras.Model:
        inp = keras.Input((20,))
        return keras.Model(inp, keras.layers.Dense(3)(keras.layers.BatchNormalization()(inp)))

    src = model()
    src.compile(optimizer="sgd", loss="mse")
    src.fit(X, np.zeros((8, 3)), epochs=1, verbose=0, batch_size=8)  # moves the statistics
    satchel.save(src, tmp_path / "bn")
    with satchel.open(tmp_path / "bn") as f:
        assert "batch_normalization/moving_mean" in list(f.keys())
    dst = model()
    assert satchel.load_state(dst, tmp_path / "bn").clean
    assert _values(dst) == _values(src)
    assert np.array_equal(dst(X, training=False).numpy(), src(X, training=False).numpy())


def test_include_exclude_rename_strict_and_skip_mismatched(tmp_path: Path) -> None:
    net = _mlp()
    satchel.save(net, tmp_path / "p")
    # Reuse the trained hidden layer in a network with a different output layer.
    wider = keras.Sequential([keras.Input((20,)), keras.layers.Dense(256), keras.layers.Dense(3)])
    before = wider.weights[2].numpy().copy()
    with pytest.raises(satchel.StateMismatchError) as info:
        satchel.load_state(wider, tmp_path / "p", rename={"hidden/": "dense/", "out/": "dense_1/"})
    assert "dense_1/kernel" in str(info.value) and info.value.report.mismatched
    assert np.array_equal(wider.weights[2].numpy(), before)  # nothing copied
    report = satchel.load_state(
        wider, tmp_path / "p", rename={"hidden/": "dense/", "out/": "dense_1/"},
        skip_mismatched=True,
    )  # fmt: skip
    assert report.loaded == ("dense/kernel", "dense/bias")
    assert [m.name for m in report.mismatched] == ["dense_1/kernel", "dense_1/bias"]
    assert np.array_equal(wider.weights[0].numpy(), net.hidden.kernel.numpy())
    assert np.array_equal(wider.weights[2].numpy(), before)  # new layer keeps its init
    part = satchel.load_state(_mlp(), tmp_path / "p", include=["hidden/*"], strict=False)
    assert part.loaded == ("hidden/kernel", "hidden/bias")
    assert part.missing == ("out/kernel", "out/bias") and part.skipped == ("out/kernel", "out/bias")
    excl = satchel.load_state(_mlp(), tmp_path / "p", exclude=["*/bias"], strict=False)
    assert excl.loaded == ("hidden/kernel", "out/kernel")
    with pytest.raises(satchel.StateMismatchError, match="missing from source"):
        satchel.load_state(_mlp(), tmp_path / "p", exclude=["*/bias"])


# Keras' own save_weights calls np.asarray on its variables, which NumPy 2 warns about.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_keras_weights_h5_loads_like_load_weights(tmp_path: Path) -> None:
    path = FIXTURES / "keras" / "mlp.weights.h5"
    oracle = _sequential()
    oracle.load_weights(path)
    model = _sequential()
    with pytest.raises(satchel.StateMismatchError, match=r"optimizer\.vars\.0"):
        satchel.load_state(model, path)  # the file holds Adam's variables too
    report = satchel.load_state(model, path, exclude=["optimizer.*"])
    assert report.clean and len(report.loaded) == 4
    assert _values(model) == _values(oracle)
    # A file Keras writes now, from a live model, loads as well.
    src = _mlp()
    src.save_weights(tmp_path / "live.weights.h5")
    dst = _mlp()
    assert satchel.load_state(dst, tmp_path / "live.weights.h5").clean
    assert _values(dst) == _values(src)


def test_dot_keras_file_and_tf_checkpoint_load_into_a_model_and_optimizer() -> None:
    keras_file = FIXTURES / "keras" / "mlp.keras"
    oracle = keras.saving.load_model(keras_file)
    model = _sequential()
    report = satchel.load_state(model, keras_file, exclude=["model.weights.h5.optimizer.*"])
    assert report.clean and len(report.loaded) == 4
    assert np.array_equal(model(X).numpy(), oracle(X).numpy())

    ckpt = FIXTURES / "tensorflow" / "tf2_ckpt"
    model, opt = _sequential(), keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    ref_model, ref_opt = _sequential(), keras.optimizers.Adam(1e-3)
    ref_opt.build(ref_model.trainable_variables)
    status = tf.train.Checkpoint(model=ref_model, optimizer=ref_opt).restore(
        tf.train.latest_checkpoint(ckpt)
    )
    status.assert_existing_objects_matched()
    # Other keys (the step counter, the object graph) are reported, not loaded.
    rm = satchel.load_state(model, ckpt, strict=False)
    ro = satchel.load_state(opt, ckpt, strict=False)
    assert (
        not rm.missing
        and len(rm.loaded) == 4
        and "step/.ATTRIBUTES/VARIABLE_VALUE" in rm.unexpected
    )
    assert not ro.missing and len(ro.loaded) == 10
    assert _values(model) == _values(ref_model)
    assert [v.numpy().tobytes() for v in opt.variables] == [
        v.numpy().tobytes() for v in ref_opt.variables
    ]
    assert int(opt.iterations.numpy()) == 1


def test_unbuilt_model_or_optimizer_is_a_clear_error(tmp_path: Path) -> None:
    satchel.save(_mlp(), tmp_path / "p")
    with pytest.raises(satchel.UsageError, match="build it first"):
        satchel.load_state(MLP(), tmp_path / "p")
    with pytest.raises(satchel.UsageError, match=r"optimizer\.build"):
        satchel.load_state(keras.optimizers.Adam(), {"iteration": np.int64(1)})


def _train(model: Any, opt: Any, steps: range) -> None:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for step in steps:
        rows = np.random.default_rng(step).integers(0, len(X), 4)  # the data depends on the step
        with tf.GradientTape() as tape:
            loss = loss_fn(Y[rows], model(X[rows]))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                model.trainable_variables, strict=True))  # fmt: skip


@pytest.mark.parametrize("blocking", [True, False])
def test_keras_training_resumes_exactly_from_a_checkpoint(tmp_path: Path, blocking: bool) -> None:
    model, opt = _mlp(), keras.optimizers.Adam(1e-2)
    _train(model, opt, range(0, 3))
    with satchel.CheckpointManager(tmp_path / "run") as mgr:
        mgr.save(3, model=model, optimizer=opt, blocking=blocking)
        _train(model, opt, range(3, 4))  # changes the variables while an async save may run
        mgr.wait()
    _train(model, opt, range(4, 6))

    fresh, fresh_opt = _mlp(), keras.optimizers.Adam(1e-2)
    assert not fresh_opt.built
    restored = satchel.CheckpointManager(tmp_path / "run").restore(model=fresh, optimizer=fresh_opt)
    assert restored.step == 3 and restored.reports["model"].clean
    assert restored.reports["optimizer"].clean
    assert int(fresh_opt.iterations.numpy()) == 3
    _train(fresh, fresh_opt, range(3, 6))
    assert _values(fresh) == _values(model)  # bitwise
    assert [v.numpy().tobytes() for v in fresh_opt.variables] == [
        v.numpy().tobytes() for v in opt.variables
    ]
