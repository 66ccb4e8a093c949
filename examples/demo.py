"""The satchel tour: the tutorial flow every framework starts with, done safely.

Run with `make demo`. Each step prints what it does and what came back.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import satchel


def step(title: str) -> None:
    print(f"\n== {title}")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 10))


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="satchel-demo-") as tmp:
        work = Path(tmp)
        print(f"working in {work}")
        tour(work)


def tour(work: Path) -> None:
    step("one tensor")
    x = torch.arange(4)
    satchel.save(x, work / "x-file")
    print("saved torch.arange(4); loaded:", satchel.load(work / "x-file"))

    step("a list of tensors")
    satchel.save([x, torch.zeros(4)], work / "x-files")
    x2, y2 = satchel.load(work / "x-files")
    print("loaded:", x2, y2)

    step("a dict of tensors")
    satchel.save({"x": x, "y": y2}, work / "mydict")
    print("loaded:", satchel.load(work / "mydict"))

    step("an MLP's parameters into a fresh clone")
    net = mlp()
    X = torch.randn(2, 20)
    satchel.save(net.state_dict(), work / "mlp.params")
    clone = mlp()
    clone.load_state_dict(satchel.load(work / "mlp.params"))
    same = torch.equal(clone(X), net(X))
    print(f"clone(X) == net(X) everywhere: {same}")
    assert same

    step("lazy open: read one tensor, nothing else")
    with satchel.open(work / "mlp.params") as ck:
        print("keys:", ck.keys())
        print("info of 0.weight:", ck.info("0.weight"))
        w = ck["0.weight"]
        print("0.weight[:1, :4] =", w[:1, :4])

    step("tied weights and views stay shared")
    emb = torch.randn(100, 16)
    satchel.save({"embed": emb, "lm_head": emb, "first_rows": emb[:10]}, work / "tied")
    back = satchel.load(work / "tied")
    back["embed"][0, 0] = 42.0
    print("lm_head is embed:", back["lm_head"] is back["embed"])
    print("first_rows sees the write:", float(back["first_rows"][0, 0]) == 42.0)
    size = (work / "tied").stat().st_size
    print(f"file holds one copy: {size} bytes for {emb.numel() * 4} bytes of data")

    step("corruption is caught")
    raw = bytearray((work / "mlp.params").read_bytes())
    raw[-5] ^= 0x01
    (work / "broken.params").write_bytes(bytes(raw))
    try:
        satchel.load(work / "broken.params")
    except satchel.IntegrityError as e:
        print("IntegrityError:", e)

    step("any safetensors reader sees the flat tensors")
    try:
        from safetensors import safe_open
    except ImportError:
        print("(safetensors not installed; skipping this step)")
    else:
        with safe_open(str(work / "mlp.params"), framework="pt") as f:
            print("safetensors keys:", list(f.keys()))

    step("training checkpoints: kill the run part-way, resume, compare")
    resume_demo(work)

    tensorflow_tour(work / "tf")


def tensorflow_tour(work: Path) -> None:
    """The same steps in the tutorials' TensorFlow column: no np.save, no pickle."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's start-up banner
    import keras
    import numpy as np
    import tensorflow as tf

    work.mkdir()
    step("TensorFlow: a tensor, a list, a dict")
    x = tf.range(4)
    satchel.save(x, work / "x-file")
    print("saved tf.range(4); loaded:", satchel.load(work / "x-file"))
    satchel.save([x, tf.zeros(4)], work / "x-files")
    x2, y2 = satchel.load(work / "x-files")
    print("loaded:", x2.numpy(), y2.numpy())
    satchel.save({"x": x, "y": y2}, work / "mydict")
    print("loaded types:", {k: type(v).__name__ for k, v in satchel.load(work / "mydict").items()})

    step("Keras: an MLP's parameters into a fresh clone")

    class MLP(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = keras.layers.Dense(256, activation="relu")
            self.out = keras.layers.Dense(10)

        def call(self, inputs: tf.Tensor) -> tf.Tensor:
            return self.out(self.hidden(inputs))

    X = tf.random.uniform((2, 20))
    net = MLP()
    y = net(X)
    satchel.save(net, work / "mlp.params")
    with satchel.open(work / "mlp.params") as ck:
        print("keys:", ck.keys())
    clone = MLP()
    clone(X)  # build its variables
    report = satchel.load_state(clone, work / "mlp.params")
    same = bool(np.array_equal(clone(X).numpy(), y.numpy()))
    print(f"loaded {len(report.loaded)} variables; clone(X) == net(X) everywhere: {same}")
    assert same and report.clean


def resume_demo(work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import demo_train

    total = 40
    straight, _ = demo_train.train(work / "straight", total)
    print(f"uninterrupted run: trained {total} steps")

    root = work / "run"
    script = Path(__file__).parent / "demo_train.py"
    child = subprocess.Popen(
        [sys.executable, str(script), str(root), str(total), "--slow"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    last = ""
    for line in child.stdout:
        last = line.strip()
        if last == "committed 15":
            break
    child.send_signal(signal.SIGKILL)  # no chance to clean up: as hard as a power cut gets
    child.wait()
    print(f"killed the training process with SIGKILL after '{last}'")
    view = satchel.CheckpointRoot(root)  # a reader: the resumed run below is the writer
    print(f"checkpoints on disk: {view.steps()} (newest valid is restored)")

    resumed, start = demo_train.train(root, total)
    print(f"resumed from step {start} in a new run and trained to step {total}")
    a, b = straight.state_dict(), resumed.state_dict()
    identical = all(torch.equal(a[k], b[k]) for k in a)
    print(f"resumed parameters bitwise identical to the uninterrupted run: {identical}")
    assert identical


if __name__ == "__main__":
    main()
