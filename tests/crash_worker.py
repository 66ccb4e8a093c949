"""A training process for the crash tests (run as a script by tests/test_crash.py; not a test).

It builds a small NumPy "model" and "optimizer" (a few MiB), resumes from the newest checkpoint
in ROOT if there is one, then loops: train one step in place, print ``writing <step> <digest>``,
save with a CheckpointManager, print ``committed <step> <digest>`` once the save is on disk. Every
line is flushed, so a parent that SIGKILLs this process knows what was committed.

Training is deterministic: the state after step ``s`` is the same whichever process computed
it, so a digest reported for a step by one life must be reported again by any later life.

Usage: crash_worker.py ROOT [--keep-last N] [--mode blocking|async] [--max-steps N] [--small]
                       [--max-shard-size SIZE]

``--small`` trains a state of a few KiB instead: saves then take a few milliseconds, so a
reader meets many commits and deletions in a second. ``--max-shard-size 1MiB`` saves the model
as a folder of 4 shards and the optimizer as one of 2 (SPEC 8.15).

``crash_worker.py --serve`` is a fork server for the SIGKILL campaign: it imports everything
once, then for each ``run OUTFILE ARGS...`` line on stdin forks a worker (stdout to OUTFILE) and
answers ``pid <pid>``; ``reap <pid>`` waits for that worker and answers ``reaped <pid> <status>``.
Each worker is a real process (killed by a real SIGKILL) that merely skips a ~0.3 s interpreter
start, so a hundred kills fit in a test run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
import traceback
from typing import Any

import numpy as np

SHAPES = {
    "model": {"w1": (512, 1024), "b1": (1024,), "w2": (1024, 256), "b2": (256,)},
    "opt": {"m_w1": (512, 1024), "m_w2": (1024, 256)},
}
SMALL = {  # the same names (digest() reads either), a few KiB
    "model": {"w1": (8, 16), "b1": (16,), "w2": (16, 8), "b2": (256,)},
    "opt": {"m_w1": (8, 16), "m_w2": (16, 8)},
}


def initial_state(small: bool = False) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        item: {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in arrays.items()}
        for item, arrays in (SMALL if small else SHAPES).items()
    }


def digest(state: dict[str, Any]) -> str:
    """sha256 of every array's name, dtype, shape and bytes, items and names in sorted order."""
    h = hashlib.sha256()
    for item in sorted(SHAPES):
        arrays = state[item]
        for name in sorted(SHAPES[item]):
            a = np.ascontiguousarray(np.asarray(arrays[name]))
            h.update(f"{item}/{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:32]


def train_step(state: dict[str, dict[str, np.ndarray]], step: int) -> None:
    """One deterministic in-place update of every array (cheap, touches every byte)."""
    lr = np.float32(1e-3 * (1 + step % 7))
    for arrays in state.values():
        for a in arrays.values():
            np.multiply(a, np.float32(0.999), out=a)
            np.add(a, lr, out=a)
    state["model"]["b2"][step % 256] = np.float32(step)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--mode", choices=("blocking", "async"), default="blocking")
    p.add_argument("--max-steps", type=int, default=0, help="0: run until killed")
    p.add_argument("--small", action="store_true", help="a state of a few KiB")
    p.add_argument("--max-shard-size", default=None, help="shard items larger than this")
    args = p.parse_args(argv)

    import satchel

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    mgr = satchel.CheckpointManager(
        args.root, keep_last=args.keep_last, max_shard_size=args.max_shard_size
    )
    state = initial_state(args.small)
    step = -1
    if mgr.latest() is not None:
        res = mgr.restore()
        step = res.step
        for item, arrays in state.items():
            for name, a in arrays.items():
                np.copyto(a, np.asarray(res.items[item][name]))
    say(f"ready {step} {digest(state)}")

    pending: tuple[int, str, float] | None = None  # async: the save in flight
    done = 0
    parent = os.getppid()
    while args.max_steps == 0 or done < args.max_steps:
        if os.getppid() != parent:  # the test process is gone: do not train forever
            return 1
        step += 1
        train_step(state, step)  # with an async save in flight, this mutates its source arrays
        if pending is not None:
            mgr.wait()
            say(f"committed {pending[0]} {pending[1]} {time.monotonic() - pending[2]:.4f}")
            pending = None
        d = digest(state)
        say(f"writing {step} {d}")
        blocking = args.mode == "blocking"
        t0 = time.monotonic()
        mgr.save(
            step,
            blocking=blocking,
            metrics={"loss": 1.0 / (step + 1)},
            extra={"step": step, "digest": d},
            model=state["model"],
            opt=state["opt"],
        )
        if blocking:
            say(f"committed {step} {d} {time.monotonic() - t0:.4f}")
        else:
            pending = (step, d, t0)
        done += 1
    mgr.close()
    if pending is not None:
        say(f"committed {pending[0]} {pending[1]} {time.monotonic() - pending[2]:.4f}")
    say("done")
    return 0


def serve() -> int:
    import satchel  # noqa: F401  (imported once; every forked worker starts with it)

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    children: set[int] = set()
    say("serving")
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "run":
            out, *argv = rest
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the worker
                rc = 1
                try:
                    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.close(fd)
                    rc = main(argv)
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(rc)
            children.add(pid)
            say(f"pid {pid}")
        elif cmd == "reap":
            pid = int(rest[0])
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            say(f"reaped {pid} {status}")
    for pid in children:  # the test is gone: leave no worker behind
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
