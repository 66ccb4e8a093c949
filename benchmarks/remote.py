"""Saving to and loading from object storage: satchel against what a user does by hand (SPEC 11).

A real S3 API on loopback (moto's server, started here) and one ~1 GiB float32 state of 64
tensors. Measured in one run, interleaved round by round so the machine's noise hits both:

- ``save``: ``satchel.save(state, "s3://...")`` (parallel multipart upload, 16 MiB parts)
  against ``safetensors.numpy.save_file`` to a local temp file, then ``fs.put`` (s3fs);
- ``load``: ``satchel.load("s3://...")`` (parallel ranged reads, every tensor verified)
  against ``fs.get`` to a local temp file, then ``safetensors.numpy.load_file``;
- ``lazy read of one tensor``: ``satchel.open(url)[name]`` for one 64 MiB tensor with 1, 2, 4,
  8 and 16 concurrent ranged requests, against ``fs.get`` of the whole file (what reading one
  tensor costs without ranged reads).

moto runs in its own process (so the client's threads do not share its GIL), keeps objects in
memory and parses every request in Python; it also reads the whole object to serve each ranged
GET, which real S3 does not. Absolute numbers are far below a real endpoint and ranged reads
are penalised; the ratios between methods, measured in the same run, are the result.

    python benchmarks/remote.py [--small] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from safetensors.numpy import load_file, save_file

import satchel
from satchel._remote import ranged, reader

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import s3server

MIB = 1 << 20


def _state(total: int, big: int) -> dict[str, np.ndarray[Any, Any]]:
    """63 equal tensors and one of ``big`` bytes (the lazily read one), ``total`` in all."""
    n = 63
    per = (total - big) // n // 4
    rng = np.random.default_rng(0)
    out = {f"layer.{i}.w": rng.standard_normal(per, dtype=np.float32) for i in range(n)}
    out["big"] = rng.standard_normal(big // 4, dtype=np.float32)
    return out


def _time(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class _Server:
    """moto's S3 server in its own process: the client's threads must not share its GIL."""

    def __init__(self) -> None:
        self.port = s3server.free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(600):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def options(self) -> dict[str, Any]:
        return {"endpoint_url": f"http://127.0.0.1:{self.port}", **s3server.CREDENTIALS}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run(total: int, repeat: int, big: int, part: int) -> str:
    ranged.READ_PART = part
    srv = _Server()
    try:
        opts = srv.options()
        fs = fsspec.filesystem("s3", **opts)
        fs.mkdir("bench")
        state = _state(total, big)
        size = sum(a.nbytes for a in state.values())
        url, manual = "s3://bench/satchel.safetensors", "bench/manual.safetensors"
        one = "big"
        rows: dict[str, list[float]] = {
            k: [] for k in ("save satchel", "save manual", "load satchel", "load manual")
        }
        with tempfile.TemporaryDirectory(dir=Path(__file__).parent.parent) as tmp:
            local = os.path.join(tmp, "m.safetensors")

            def manual_save() -> None:
                save_file(state, local)
                fs.put(local, manual)

            def manual_load() -> None:
                fs.get(manual, local)
                load_file(local)

            for _ in range(repeat):
                rows["save satchel"].append(
                    _time(lambda: satchel.save(state, url, storage_options=opts))
                )
                rows["save manual"].append(_time(manual_save))
                rows["load satchel"].append(_time(lambda: satchel.load(url, storage_options=opts)))
                rows["load manual"].append(_time(manual_load))
            whole = [_time(lambda: fs.get(manual, local)) for _ in range(repeat)]
        lazy: dict[int, list[float]] = {c: [] for c in (1, 2, 4, 8, 16)}
        for _ in range(repeat):
            for c, times in lazy.items():
                kw = {"storage_options": opts, "concurrency": c}
                times.append(_time(lambda kw=kw: _one(url, one, kw)))  # type: ignore[misc]
    finally:
        srv.stop()
    med = {k: statistics.median(v) for k, v in rows.items()}
    gib = size / (1 << 30)
    out = [
        "## Object storage (S3 API on loopback)",
        "",
        f"{gib:.2f} GiB, 64 float32 tensors, moto's S3 server (own process) on 127.0.0.1; "
        f"median of {repeat} "
        "interleaved rounds (seconds; GiB/s in brackets).",
        "",
        "| operation | satchel | by hand (safetensors + s3fs) | satchel / by hand |",
        "|---|---|---|---|",
    ]
    for op in ("save", "load"):
        a, b = med[f"{op} satchel"], med[f"{op} manual"]
        out.append(f"| {op} | {a:.2f} ({gib / a:.2f}) | {b:.2f} ({gib / b:.2f}) | {a / b:.2f}x |")
    n_one = state[one].nbytes
    out += [
        "",
        f"Lazy read of one {n_one / MIB:.0f} MiB tensor (`satchel.open(url)[name]`, verified; "
        f"ranged parts of {part // MIB} MiB) by concurrency; `fs.get` of the whole file takes "
        f"{statistics.median(whole):.2f} s.",
        "",
        "| concurrent requests | seconds | MiB/s |",
        "|---|---|---|",
    ]
    for c, xs in lazy.items():
        m = statistics.median(xs)
        out.append(f"| {c} | {m:.3f} | {n_one / MIB / m:.0f} |")
    return "\n".join(out) + "\n"


def _one(url: str, name: str, kw: dict[str, Any]) -> None:
    # open() takes no concurrency option: the knob lives on the remote reader it calls.
    tree = reader.read_url(url, verify=True, **kw)
    with satchel.ArrayFile(tree, path=url) as f:
        f[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="64 MiB instead of 1 GiB (quick check)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.small:  # 16 parts of 1 MiB: the same concurrency range on a small tensor
        print(run(64 * MIB, args.repeat, big=16 * MIB, part=1 * MIB))
    else:
        print(run(1 << 30, args.repeat, big=256 * MIB, part=16 * MIB))


if __name__ == "__main__":
    main()
