"""Tiny generators of hostile single files, and a runner that loads files in a confined child.

Nothing here uses satchel's writer: every file is put together byte by byte from the layout in
SPEC.md, so a test can break exactly one rule and a writer bug cannot hide a reader bug.

The usual way to make a file::

    spec = simple()                       # a valid satchel file, as editable dicts
    spec.header["a"]["shape"] = [5]        # break one rule
    blob = spec.build()                    # manifest re-signed, header padded, length prefixed

``build(sign=False)`` keeps the manifest checksum of the unedited manifest (bit-rot model);
``sign=True`` (the default) recomputes it, as a hostile writer would.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

__all__ = [
    "BOUNDARY",
    "Spec",
    "dumps",
    "entry",
    "frame",
    "leaf",
    "run_confined",
    "simple",
    "view_spec",
    "xxh",
]

#: SPEC-independent boundary values every integer field is tried with (edges of 8, 32, 53, 64 bits);
#: ``len - 1``, ``len`` and ``len + 1`` are added per file, since they depend on its size.
BOUNDARY = (0, 1, 7, 8, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1)


def dumps(obj: Any) -> bytes:
    """Compact ASCII JSON, as satchel's writer spells it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def xxh(data: bytes | np.ndarray) -> str:
    """xxh3-64 as 16 lowercase hex digits (SPEC 3.7)."""
    return xxhash.xxh3_64_hexdigest(data)


def frame(body: bytes, data: bytes = b"", *, length: int | None = None, pad: bool = True) -> bytes:
    """``[u64 N][body, space padded to 64][data]``; ``length`` overrides N (any value < 2^64)."""
    if pad:
        body += b" " * (-(8 + len(body)) % 64)
    n = len(body) if length is None else length
    return n.to_bytes(8, "little") + body + data


def entry(dtype: Any, shape: Any, start: Any, end: Any) -> dict[str, Any]:
    """One safetensors header entry."""
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def leaf(fw: str, kind: str, dtype: str, shape: list[int], data: str, **extra: Any) -> dict:
    """One manifest leaf record (SPEC 3.6)."""
    return {"framework": fw, "kind": kind, "dtype": dtype, "shape": shape, "data": data, **extra}


@dataclass
class Spec:
    """A satchel file as editable parts: header entries, manifest document, data bytes."""

    header: dict[str, Any]
    manifest: dict[str, Any] | None
    data: bytes
    user_metadata: dict[str, Any] = field(default_factory=dict)

    def manifest_text(self) -> str:
        assert self.manifest is not None
        return dumps(self.manifest).decode("ascii")

    def header_body(self, *, sign: bool = True, manifest_text: str | None = None) -> bytes:
        """The JSON header; ``manifest_text`` replaces the encoded manifest verbatim."""
        obj: dict[str, Any] = {}
        meta = dict(self.user_metadata)
        if self.manifest is not None or manifest_text is not None:
            text = manifest_text if manifest_text is not None else self.manifest_text()
            meta["satchel"] = text
            digest = xxh(text.encode("utf-8", "surrogatepass"))
            meta["satchel.xxh3"] = digest if sign else self._original_digest
        if meta:
            obj["__metadata__"] = meta
        obj.update(self.header)
        return dumps(obj)

    def build(self, *, sign: bool = True, manifest_text: str | None = None) -> bytes:
        return frame(self.header_body(sign=sign, manifest_text=manifest_text), self.data)

    def copy(self) -> Spec:
        return copy.deepcopy(self)

    def __post_init__(self) -> None:
        self._original_digest = (
            xxh(self.manifest_text().encode("utf-8")) if self.manifest is not None else None
        )


def _stored(arr: np.ndarray, name: str | None = None) -> dict[str, Any]:
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "xxh3": xxh(arr.tobytes())}


A = np.arange(4, dtype=np.float64)  # tensor "a": F64 [4], bytes [0, 32)
B = np.arange(6, dtype=np.int32).reshape(2, 3)  # tensor "b": I32 [2, 3], bytes [32, 56)


def simple(*, fw: str = "numpy") -> Spec:
    """A valid satchel file ``{"a": float64[4], "b": int32[2, 3]}`` built from the SPEC alone."""
    header = {"a": entry("F64", [4], 0, 32), "b": entry("I32", [2, 3], 32, 56)}
    manifest = {
        "version": 1,
        "root": {"$dict": [["a", {"$t": 0}], ["b", {"$t": 1}]]},
        "leaves": [
            leaf(fw, "tensor", "float64", [4], "a"),
            leaf(fw, "tensor", "int32", [2, 3], "b"),
        ],
        "stored": {"a": _stored(A), "b": _stored(B)},
        "metadata": {},
    }
    return Spec(header, manifest, A.tobytes() + B.tobytes())


BASE = np.arange(8, dtype=np.float64)  # stored tensor "base": F64 [8], 64 bytes


def view_spec(
    shape: list[Any], strides: list[Any], offset: Any, *, fw: str = "numpy", dtype: str = "float64"
) -> Spec:
    """``[base, view]`` where ``view`` is a leaf into the stored float64[8] ``base`` (SPEC 3.6)."""
    header = {"base": entry("F64", [8], 0, 64)}
    manifest = {
        "version": 1,
        "root": [{"$t": 0}, {"$t": 1}],
        "leaves": [
            leaf(fw, "tensor", "float64", [8], "base"),
            leaf(fw, "tensor", dtype, shape, "base", offset=offset, strides=strides),
        ],
        "stored": {"base": _stored(BASE)},
        "metadata": {},
    }
    return Spec(header, manifest, BASE.tobytes())


# -- the confined child ------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import satchel
    def peak():  # VmHWM: this process's peak RSS (ru_maxrss would include the parent's)
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM"))

    def reset_peak():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    jobs = json.loads(sys.stdin.read())
    out = []
    overall = peak()
    for job in jobs:
        reset_peak()
        t = time.perf_counter()
        try:
            satchel.load(job["path"], **job.get("kwargs", {}))
            res = {"outcome": "accepted"}
        except satchel.SatchelError as e:
            res = {"outcome": "rejected", "error": type(e).__name__, "message": str(e)}
        except BaseException as e:  # MemoryError, RecursionError, ...: exactly what we look for
            res = {"outcome": "other", "error": type(e).__name__, "message": str(e)[:300]}
        res["seconds"] = time.perf_counter() - t
        res["peak_rss"] = peak()
        res["path"] = job["path"]
        overall = max(overall, res["peak_rss"])
        out.append(res)
    print(json.dumps({"results": out, "max_rss": overall}))
    """
)


def run_confined(
    jobs: list[tuple[Path, dict[str, Any]]], *, limit: int = 1 << 30, timeout: float = 60
) -> dict[str, Any]:
    """Load each file in one child process under ``RLIMIT_AS = limit`` and a wall-clock timeout.

    Returns ``{"results": [{outcome, error, message, seconds, peak_rss, path}], "max_rss": n}``
    (peak resident bytes of the child, per job and overall; Linux ``VmHWM``); a timeout or a
    signal is reported as ``{"crash": description}``.
    """
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    env["OPENBLAS_NUM_THREADS"] = "1"  # per-thread BLAS buffers would eat the address space
    payload = json.dumps([{"path": str(p), "kwargs": kw} for p, kw in jobs])
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(limit)],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"crash": f"timeout after {timeout} s"}
    if proc.returncode != 0:
        return {"crash": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
