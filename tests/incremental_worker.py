"""A fine-tuning process for the incremental crash tests (run by tests/test_incremental.py).

A NumPy "model" with a frozen backbone (2 MiB, never changes) and a small adapter, plus the
adapter's optimizer state, saved with ``CheckpointManager(root, incremental=True,
keep_last=2)`` at every step. It resumes from the newest checkpoint, then loops: train one
step, print ``writing <step> <digest>``, save, print ``committed <step> <digest>``; lines are
flushed, so a parent knows what was committed when this process dies.

``--kill-at POINT --kill-on-save K`` SIGKILLs this process itself at ``POINT`` of its K-th
save: ``pool-write`` (halfway through writing a new pool file), ``before-commit`` (pool files
durable, commit record not yet written), ``after-commit`` (step renamed into place, retention
not run), ``retention`` (an old step renamed away, not yet deleted), ``collect`` (right after
the first pool file the collection deletes).

Usage: incremental_worker.py ROOT [--max-steps N] [--kill-at POINT --kill-on-save K]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
from typing import Any

import numpy as np

SHAPES = {
    "model": {"backbone.0": (512, 512), "backbone.1": (512, 512), "adapter": (16, 512)},
    "opt": {"m": (16, 512), "v": (16, 512)},
}
FROZEN = ("backbone.0", "backbone.1")


def initial_state() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        item: {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in arrays.items()}
        for item, arrays in SHAPES.items()
    }


def digest(state: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for item in sorted(SHAPES):
        for name in sorted(SHAPES[item]):
            a = np.ascontiguousarray(np.asarray(state[item][name]))
            h.update(f"{item}/{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:32]


def train_step(state: dict[str, dict[str, np.ndarray]], step: int) -> None:
    """Only the adapter and its optimizer state change (the backbone is frozen)."""
    lr = np.float32(1e-3 * (1 + step % 5))
    state["model"]["adapter"] *= np.float32(0.999)
    state["model"]["adapter"] += lr
    state["opt"]["m"] += lr
    state["opt"]["v"] *= np.float32(0.99)


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    """Make this process SIGKILL itself at ``point`` of the save in progress."""
    from satchel._checkpoint import collect, manager
    from satchel._io import writer

    if point == "pool-write":
        real_write = writer.write_all

        def write_all(fd: int, data: Any) -> None:
            if "/blobs/" in os.readlink(f"/proc/self/fd/{fd}"):
                view = memoryview(data).cast("B")
                real_write(fd, view[: max(1, len(view) // 2)])
                _die()
            real_write(fd, data)

        writer.write_all = write_all  # type: ignore[assignment]
    elif point == "before-commit":
        manager.write_commit = lambda *a, **k: _die()  # type: ignore[assignment]
    elif point == "after-commit":
        real_replace = manager.replace_folder

        def commit(tmp: Any, final: Any) -> None:  # the rename that commits the step
            real_replace(tmp, final)
            _die()

        manager.replace_folder = commit  # type: ignore[assignment]
    elif point == "retention":
        manager._discard = lambda path: _die()  # type: ignore[assignment]
    elif point == "collect":

        class Os:
            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

            @staticmethod
            def unlink(path: Any) -> None:
                os.unlink(path)
                _die()

        collect.os = Os()  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown kill point {point}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--max-steps", type=int, default=0, help="0: run until killed")
    p.add_argument("--kill-at", default=None)
    p.add_argument("--kill-on-save", type=int, default=1)
    args = p.parse_args(argv)

    import satchel

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    mgr = satchel.CheckpointManager(args.root, keep_last=2, incremental=True)
    state = initial_state()
    step = -1
    if mgr.latest() is not None:
        res = mgr.restore()
        step = res.step
        for item, arrays in state.items():
            for name, a in arrays.items():
                np.copyto(a, np.asarray(res.items[item][name]))
    say(f"ready {step} {digest(state)}")
    done = 0
    while args.max_steps == 0 or done < args.max_steps:
        step += 1
        train_step(state, step)
        d = digest(state)
        if args.kill_at is not None and done + 1 == args.kill_on_save:
            arm(args.kill_at)
        say(f"writing {step} {d}")
        mgr.save(step, model=state["model"], opt=state["opt"], extra={"step": step})
        say(f"committed {step} {d}")
        done += 1
    mgr.close()
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
