"""Mutation campaign over genuine satchel files (docs/formats.md#hostile-integrity).

Every mutant of a file written by ``satchel.save`` must either load to exactly what was saved
(same structure, types, dtypes, shapes, bytes and sharing) or raise a ``satchel.SatchelError``:
no other exception type, no silently different result, no hang.

Mutation kinds:

* ``bitflip-header`` / ``bitflip-data``: one bit, uniform over the region (seeded);
* ``truncate-4k`` (every 4 KiB boundary) and ``truncate-random``;
* ``insert`` / ``delete``: 1-16 random bytes at a random offset;
* ``splice``: the head of one corpus file glued to the tail of another;
* ``boundary-length``: boundary values in the 8-byte header length;
* ``boundary-header``: boundary values in each ``shape`` / ``data_offsets`` integer, the header
  re-encoded and its length prefix updated (so only the value itself is wrong);
* ``boundary-manifest``: the same for every integer in the manifest, checksum left as it was
  (bit-rot model: must be ``IntegrityError``);
* ``boundary-manifest-signed``: the same with the checksum recomputed (a hostile writer). Such a
  file may legitimately describe something else, so ``accepted-variant`` is allowed there; only
  non-satchel exceptions and hangs count as failures.

Run a larger campaign by hand and print its figures::

    PYTHONPATH=src python tests/test_mutation.py --scale 4 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import signal
import struct
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import satchel

try:  # tests/ as a package or as a plain folder on sys.path
    from . import hostile_cases as hc
except ImportError:
    import hostile_cases as hc

# -- the corpus ------------------------------------------------------------------------------------


def _numpy_mixed() -> Any:
    rng = np.random.default_rng(1)
    ints = {
        name: rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, size=(5,), dtype=dt, endpoint=True)
        for name, dt in [
            ("i8", np.int8),
            ("u8", np.uint8),
            ("i16", np.int16),
            ("u16", np.uint16),
            ("i32", np.int32),
            ("u32", np.uint32),
            ("i64", np.int64),
            ("u64", np.uint64),
        ]
    }
    return {
        "f32": rng.standard_normal((64, 64)).astype(np.float32),
        "f64": rng.standard_normal(100),
        "f16": rng.standard_normal(30).astype(np.float16),
        "bf16": rng.standard_normal((7, 3)).astype(ml_dtypes.bfloat16),
        "f8a": rng.standard_normal(16).astype(ml_dtypes.float8_e4m3fn),
        "f8b": rng.standard_normal(5).astype(ml_dtypes.float8_e5m2),
        "c64": (rng.standard_normal((3, 2)) + 1j * rng.standard_normal((3, 2))).astype(
            np.complex64
        ),
        "c128": rng.standard_normal(4) + 1j * rng.standard_normal(4),
        "ints": ints,
        "bool": rng.random(37) > 0.5,
        "zero": np.zeros((0, 3), np.float32),
        "zero_c128": np.zeros((2, 0), np.complex128),
        "rank0": np.array(2.5, np.float32),
        "scalar": np.float64(3.25),
        "scalar_i": np.int16(-7),
        "blob": b"\x00\x01payload",
        "meta": {
            "step": 1234,
            "lr": 0.001,
            "nan": float("nan"),
            "inf": float("inf"),
            "ninf": float("-inf"),
            "neg0": -0.0,
            "name": "run-1 ünïcode",
            "none": None,
            "flag": True,
            "tuple": (1, 2.5, "x", ()),
            7: "int key",
            "od": OrderedDict([("z", 1), ("a", [2, 3])]),
        },
    }


def _big() -> Any:
    rng = np.random.default_rng(2)
    return {
        "w": rng.standard_normal((256, 300)).astype(np.float32),  # 300 KiB: ~75 pages
        "b": rng.standard_normal(300).astype(np.float32),
        "step": np.int64(5),
    }


def _many_small() -> Any:
    rng = np.random.default_rng(3)
    dts = [np.float32, np.int8, np.float16, np.int64, np.uint8, np.bool_, np.complex64]
    out = {}
    for i in range(100):
        dt = dts[i % len(dts)]
        out[f"layer{i}"] = {
            "w": (rng.standard_normal(i % 3 + 1) * 10).astype(dt),
            "b": np.full(i % 2, i, dtype=dt),
        }
    return out


def _nested() -> Any:
    rng = np.random.default_rng(4)
    shared = rng.standard_normal(6)
    node: Any = {"leaf": shared, "n": 0}
    for depth in range(30):
        arr = np.arange(depth % 4 + 1, dtype=np.int32) * depth
        kind = depth % 3
        if kind == 0:
            node = [node, arr, depth]
        elif kind == 1:
            node = (arr, node, None)
        else:
            node = {"d": node, depth: arr, "tied": shared}
    return {"tree": node, "again": shared}


def _numpy_views() -> Any:
    x = np.arange(24.0).reshape(4, 6)
    y = np.arange(20, dtype=np.int32)
    v = np.arange(3, dtype=np.float32)
    return {
        "v": v,
        "bcast": np.broadcast_to(v, (4, 3)),  # stride 0
        "x": x,
        "row": x[1:2],
        "cols": x[:, ::2],
        "rev": x[::-1],
        "T": x.T,
        "span_a": y[2:8],  # no whole-array owner: stored as a view-only span
        "span_b": y[5:15].reshape(2, 5),
    }


def _zero_only() -> Any:
    return {"a": np.zeros(0), "b": np.zeros((0, 5), np.int32), "s": "no data bytes"}


def _no_tensors() -> Any:
    return {"step": 3, "cfg": {"lr": 0.1, "betas": (0.9, 0.999)}}


def _torch_state() -> Any:
    import torch

    g = torch.Generator().manual_seed(5)
    w = torch.randn(8, 6, generator=g)
    emb = torch.randn(10, 4, generator=g).to(torch.bfloat16)
    b = torch.randn(3, generator=g)
    return {
        "linear.weight": torch.nn.Parameter(torch.randn(4, 3, generator=g)),
        "linear.bias": torch.nn.Parameter(torch.zeros(4), requires_grad=False),
        "emb": emb,
        "head": emb,  # tied weights: the same object twice
        "views": {"w": w, "w5": w[:5], "wT": w.t(), "row": w[1:2], "col": w[:, 2]},
        "b": b,
        "expanded": b.expand(4, 3),  # a stride-0 view of "b"
        "f16": torch.randn(7, generator=g).half(),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "c128": torch.randn(3, dtype=torch.complex128, generator=g),
        "c64": torch.randn(2, 2, dtype=torch.complex64, generator=g),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 4),
        "u16": torch.tensor([1, 2, 60000], dtype=torch.int32).to(torch.uint16),
        "step": 100,
    }


def _lone_bf16() -> Any:
    import torch

    return torch.randn(33, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)


def _torch_zero_only() -> Any:
    import torch

    return {"a": torch.zeros(0, dtype=torch.float64), "b": torch.zeros(2, 0)}


#: name -> (builder, metadata, in the mutation campaign)
CORPUS: dict[str, tuple[Callable[[], Any], dict[str, str] | None, bool]] = {
    "numpy_mixed": (_numpy_mixed, {"author": "test", "note": "ünïcode"}, True),
    "big": (_big, None, True),
    "many_small": (_many_small, None, True),
    "nested": (_nested, {"k": "v"}, True),
    "numpy_views": (_numpy_views, None, True),
    "zero_only": (_zero_only, None, True),
    "no_tensors": (_no_tensors, None, True),
    "torch_state": (_torch_state, {"framework": "torch"}, True),
    "lone_bf16": (_lone_bf16, None, True),
    "torch_zero_only": (_torch_zero_only, None, True),  # no data bytes at all
}


# -- comparing what was saved with what was loaded -------------------------------------------------


_HUGE = 1 << 28  # bigger than any corpus array: only a (signed) hostile view gets here


def canon(x: Any, memo: dict[int, int] | None = None, *, framework: bool = True) -> Any:
    """A comparable form of a saved/loaded object: types, dtypes, shapes, raw bytes, sharing.

    Bytes are compared exactly (stricter than ``array_equal(equal_nan=True)``: NaN payloads and
    the sign of zero count). ``memo`` numbers array objects by first appearance, so tied and
    distinct arrays must match pairwise.
    """
    memo = {} if memo is None else memo

    def key(obj: Any) -> int:
        return memo.setdefault(id(obj), len(memo))

    if "torch" in sys.modules:
        import torch

        if isinstance(x, torch.Tensor) and x.numel() * x.element_size() > _HUGE:
            return ("huge", str(x.dtype), tuple(x.shape), x.stride())
        if isinstance(x, torch.Tensor):
            t = x.detach()
            if t.dtype == torch.bool:  # copying a bool tensor would turn a stray 0x03 into 0x01
                t = t.view(torch.uint8)
            # A fresh C-ordered copy: ``contiguous()`` keeps odd strides on size-1 dims.
            dense = torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)
            raw = dense.reshape(-1).view(torch.uint8).numpy().tobytes()
            kind = type(x).__name__ if framework else "array"
            grad = bool(x.requires_grad) if framework else False
            dt = str(x.dtype).removeprefix("torch.")
            return (kind, grad, dt, tuple(t.shape), raw, key(x))
    if isinstance(x, np.ndarray) and x.nbytes > _HUGE:  # a hostile broadcast view: no copy
        return ("huge", x.dtype.name, x.shape, x.strides)
    if isinstance(x, np.ndarray):
        kind = "ndarray" if framework else "array"
        return (kind, False, x.dtype.name, x.shape, np.ascontiguousarray(x).tobytes(), key(x))
    if isinstance(x, np.generic):
        return ("npscalar", x.dtype.name, x.tobytes())
    if isinstance(x, bytes):
        return ("bytes", x, key(x))
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return (type(x).__name__, x)
    if isinstance(x, float):
        return ("float", struct.pack("<d", x))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [canon(v, memo, framework=framework) for v in x])
    if isinstance(x, dict):
        items = [(canon(k, memo), canon(v, memo, framework=framework)) for k, v in x.items()]
        return (type(x).__name__, items)
    raise TypeError(f"canon: unexpected {type(x).__name__}")


# -- mutators --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    kind: str
    what: str  # how to reproduce it from the original file
    blob: bytes
    signed: bool = False  # a hostile writer re-signed the manifest: variants are legitimate


def _header(blob: bytes) -> tuple[int, dict[str, Any]]:
    n = int.from_bytes(blob[:8], "little")
    return n, json.loads(blob[8 : 8 + n])


def _reencode(obj: dict[str, Any], data: bytes) -> bytes:
    return hc.frame(hc.dumps(obj), data)


def _values(limit: int) -> list[int]:
    return sorted({*hc.BOUNDARY, limit - 1, limit, limit + 1} - {-1})


def bit_flips(blob: bytes, rng: random.Random, n: int) -> Iterator[Mutant]:
    hn = 8 + int.from_bytes(blob[:8], "little")
    regions = [("bitflip-header", 0, hn)]
    if len(blob) > hn:
        regions.append(("bitflip-data", hn, len(blob)))
    for i in range(n):
        kind, lo, hi = regions[i % len(regions)]
        pos, bit = rng.randrange(lo, hi), rng.randrange(8)
        m = bytearray(blob)
        m[pos] ^= 1 << bit
        yield Mutant(kind, f"flip byte {pos} bit {bit}", bytes(m))


def truncations(blob: bytes, rng: random.Random, n: int) -> Iterator[Mutant]:
    for size in range(0, len(blob), 4096):
        yield Mutant("truncate-4k", f"truncate to {size}", blob[:size])
    for _ in range(n):
        size = rng.randrange(len(blob))
        yield Mutant("truncate-random", f"truncate to {size}", blob[:size])


def insert_delete(blob: bytes, rng: random.Random, n: int) -> Iterator[Mutant]:
    for i in range(n):
        pos, k = rng.randrange(len(blob) + 1), rng.randint(1, 16)
        if i % 2:
            junk = bytes(rng.randrange(256) for _ in range(k))
            yield Mutant("insert", f"insert {junk!r} at {pos}", blob[:pos] + junk + blob[pos:])
        else:
            yield Mutant("delete", f"delete {k} bytes at {pos}", blob[:pos] + blob[pos + k :])


def splices(blob: bytes, others: list[bytes], rng: random.Random, n: int) -> Iterator[Mutant]:
    for _ in range(n):
        j = rng.randrange(len(others))
        other = others[j]
        cut, cut2 = rng.randrange(len(blob) + 1), rng.randrange(len(other) + 1)
        yield Mutant("splice", f"self[:{cut}] + other#{j}[{cut2}:]", blob[:cut] + other[cut2:])


def boundary_length(blob: bytes) -> Iterator[Mutant]:
    n = int.from_bytes(blob[:8], "little")
    for v in sorted({*_values(len(blob)), n - 1, n + 1, n - 64, n + 64} - {-1}):
        if 0 <= v < 2**64:
            yield Mutant("boundary-length", f"N := {v}", v.to_bytes(8, "little") + blob[8:])


def boundary_header(blob: bytes, rng: random.Random, max_fields: int) -> Iterator[Mutant]:
    n, obj = _header(blob)
    data = blob[8 + n :]
    assert _reencode(obj, data) == blob, "the mutator must re-encode the header byte for byte"
    fields = [
        (name, f, i)
        for name, spec in obj.items()
        if name != "__metadata__"
        for f in ("shape", "data_offsets")
        for i in range(len(spec[f]))
    ]
    if len(fields) > max_fields:
        fields = rng.sample(fields, max_fields)
    for name, f, i in fields:
        for v in sorted({*_values(len(blob)), *_values(len(data))} - {-1}):
            if v == obj[name][f][i]:
                continue
            patched = json.loads(json.dumps(obj))
            patched[name][f][i] = v
            yield Mutant("boundary-header", f"{name}.{f}[{i}] := {v}", _reencode(patched, data))


def _int_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, bool):
        return
    if isinstance(node, int):
        yield path
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _int_paths(v, (*path, i))
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _int_paths(v, (*path, k))


def boundary_manifest(
    blob: bytes, rng: random.Random, max_fields: int, *, signed: bool
) -> Iterator[Mutant]:
    n, obj = _header(blob)
    data = blob[8 + n :]
    meta = obj.get("__metadata__", {})
    if "satchel" not in meta:
        return
    text = meta["satchel"]
    doc = json.loads(text)
    assert hc.dumps(doc).decode() == text, "the mutator must re-encode the manifest exactly"
    paths = list(_int_paths(doc))
    # Every integer of a view (shape, offset, strides) is always tried: those reach the array
    # libraries' own limits. Other integers are sampled.
    views = [p for p in paths if p[0] == "leaves" and "strides" in doc["leaves"][p[1]]]
    rest = [p for p in paths if p not in views]
    if len(rest) > max_fields:
        rest = rng.sample(rest, max_fields)
    paths = views + rest
    values = _values(len(data))
    for path in paths:
        picked = values if signed else rng.sample(values, 2)
        for v in picked:
            patched = json.loads(text)
            node = patched
            for k in path[:-1]:
                node = node[k]
            if node[path[-1]] == v:
                continue
            node[path[-1]] = v
            new_text = hc.dumps(patched).decode()
            new_obj = json.loads(json.dumps(obj))
            new_obj["__metadata__"]["satchel"] = new_text
            if signed:
                new_obj["__metadata__"]["satchel.xxh3"] = hc.xxh(new_text.encode())
            kind = "boundary-manifest-signed" if signed else "boundary-manifest"
            where = ".".join(map(str, path))
            yield Mutant(kind, f"manifest {where} := {v}", _reencode(new_obj, data), signed)


# -- running cases ---------------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the per-case alarm; a BaseException so no ``except Exception`` swallows it."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


@dataclass
class Campaign:
    """Outcome counts per mutation kind, failures with reproducers, times to reject."""

    counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    reject_seconds: list[float] = field(default_factory=list)
    reject_by_file: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    scratch: Path = field(default_factory=Path)
    hang_after: float = 10.0
    #: also read every mutant with safetensors (``safetensors.torch.load_file``) and count its
    #: outcomes the same way, for the comparison in docs/reliability.md
    differential: bool = False
    st_counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    _n: int = 0

    def run(self, orig: Original, mutant: Mutant, *, mode: str) -> str:
        """Load ``mutant`` one way (``MODES``) and classify the outcome."""
        path = self.scratch / f"m{self._n % 4}.satchel"
        self._n += 1
        if path.exists():
            path.unlink()  # a fresh inode: no earlier mapping can see these bytes
        path.write_bytes(mutant.blob)
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, self.hang_after)
        t = time.perf_counter()
        detail = ""
        try:
            try:
                if mode == "lazy":
                    with satchel.open(path) as f:
                        got = canon({k: f[k] for k in f})
                    expected = orig.lazy_expected
                else:
                    got = canon(satchel.load(path, mmap=mode == "mmap"))
                    expected = orig.expected
                outcome = "accepted-identical" if got == expected else "accepted-different"
                if mutant.signed and outcome == "accepted-different":
                    outcome = "accepted-variant"
            except satchel.SatchelError as e:
                outcome = f"rejected:{type(e).__name__}"
                if str(path) not in str(e):
                    outcome, detail = "unnamed-file", str(e)[:200]
                else:
                    took = time.perf_counter() - t
                    self.reject_seconds.append(took)
                    self.reject_by_file[orig.name].append(took)
            except Exception as e:
                outcome, detail = f"other:{type(e).__name__}", str(e)[:200]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Hang:
            outcome = "hang"
        finally:
            signal.signal(signal.SIGALRM, previous)
        self.counts[(mutant.kind, outcome)] += 1
        if _is_failure(outcome) and len(self.failures) < 200:
            self.failures.append(
                f"{outcome} {detail} <- {orig.name}: {mutant.kind} {mutant.what} ({mode})"
            )
        if self.differential:
            self.st_counts[(mutant.kind, _safetensors_outcome(path, orig))] += 1
        return outcome

    def by_outcome(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for (_, outcome), k in self.counts.items():
            out[outcome] += k
        return out

    def by_kind(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for (kind, _), k in self.counts.items():
            out[kind] += k
        return out

    def total(self) -> int:
        return sum(k for (_, o), k in self.counts.items() if o != "no-op")


def _safetensors_reference(path: Path) -> Any:
    from safetensors.torch import load_file

    # Sorted by name: safetensors orders tensors that share an offset (zero-size ones) at random.
    return canon(dict(sorted(load_file(str(path)).items())))


def _safetensors_outcome(path: Path, orig: Original) -> str:
    """safetensors' own reading of a mutant: rejected (any exception), identical or different."""
    if orig.st_expected is None:
        p = path.with_suffix(".orig")
        p.write_bytes(orig.blob)
        orig.st_expected = _safetensors_reference(p)
    try:
        got = _safetensors_reference(path)
    except Exception:
        return "rejected"
    return "accepted-identical" if got == orig.st_expected else "accepted-different"


def _is_failure(outcome: str) -> bool:
    return outcome in ("accepted-different", "hang", "unnamed-file") or outcome.startswith("other:")


@dataclass
class Original:
    """A corpus file: its bytes, the saved object's canon, and its lazy per-key canon."""

    name: str
    blob: bytes
    expected: Any
    lazy_expected: Any
    st_expected: Any = None  # safetensors' reading of the original (differential runs only)


#: how a mutant is read: ``satchel.load`` mapped or read into memory, or ``satchel.open`` and
#: each key fetched on its own (checksums are then verified lazily, per stored tensor)
MODES = ("mmap", "read", "lazy")


def build_corpus(folder: Path, *, campaign_only: bool = True) -> list[Original]:
    out = []
    for name, (make, meta, in_campaign) in CORPUS.items():
        if campaign_only and not in_campaign:
            continue
        obj = make()
        p = folder / f"{name}.satchel"
        satchel.save(obj, p, metadata=meta)
        with satchel.open(p) as f:
            lazy = canon({k: f[k] for k in f})
        out.append(Original(name, p.read_bytes(), canon(obj), lazy))
    return out


#: mutants per file for each kind at scale 1 (the pytest run); the manual run multiplies them
PLAN = {"bitflip": 240, "truncate": 40, "insdel": 60, "splice": 20, "header": 24, "manifest": 12}


def mutants(
    orig: Original, others: list[bytes], kind: str, rng: random.Random, scale: int
) -> Iterator[Mutant]:
    blob = orig.blob
    if kind == "bitflip":
        return bit_flips(blob, rng, PLAN["bitflip"] * scale)
    if kind == "truncate":
        return truncations(blob, rng, PLAN["truncate"] * scale)
    if kind == "insdel":
        return insert_delete(blob, rng, PLAN["insdel"] * scale)
    if kind == "splice":
        return splices(blob, others, rng, PLAN["splice"] * scale)
    if kind == "length":
        return boundary_length(blob)
    if kind == "header":
        return boundary_header(blob, rng, PLAN["header"] * scale)
    if kind == "manifest":
        return boundary_manifest(blob, rng, PLAN["manifest"] * scale, signed=False)
    if kind == "manifest-signed":
        return boundary_manifest(blob, rng, PLAN["manifest"] * scale, signed=True)
    raise ValueError(kind)


KINDS = ["bitflip", "truncate", "insdel", "splice", "length", "header", "manifest"]


def run_kinds(
    corpus: list[Original],
    kinds: list[str],
    scratch: Path,
    *,
    seed: int,
    scale: int = 1,
    differential: bool = False,
) -> Campaign:
    camp = Campaign(scratch=scratch, differential=differential)
    for i, orig in enumerate(corpus):
        others = [o.blob for o in corpus if o is not orig]
        for kind in kinds:
            rng = random.Random(f"{seed}/{orig.name}/{kind}")
            for j, m in enumerate(mutants(orig, others, kind, rng, scale)):
                if m.blob == orig.blob:  # e.g. deleting past the end: not a mutant
                    camp.counts[(m.kind, "no-op")] += 1
                    continue
                camp.run(orig, m, mode=MODES[(i + j) % len(MODES)])
    return camp


def _p99(seconds: list[float]) -> float:
    r = sorted(seconds)
    return r[min(len(r) - 1, math.ceil(0.99 * len(r)) - 1)]


def summary(camp: Campaign) -> str:
    lines = [f"{camp.total()} mutants"]
    for kind, k in sorted(camp.by_kind().items()):
        outs = {o: c for (kd, o), c in camp.counts.items() if kd == kind}
        lines.append(f"  {kind:26} {k:6}  {dict(sorted(outs.items()))}")
    lines.append(f"  outcomes: {dict(sorted(camp.by_outcome().items()))}")
    if camp.reject_seconds:
        r = sorted(camp.reject_seconds)
        p99 = _p99(r)
        lines.append(f"  time to reject: p50 {r[len(r) // 2] * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    lines += [f"  FAIL {f}" for f in camp.failures[:20]]
    return "\n".join(lines)


# -- tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Original]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_round_trips(tmp_path: Path, name: str) -> None:
    """The oracle itself: every corpus file loads back exactly (structure, bytes, sharing)."""
    make, meta, _ = CORPUS[name]
    obj = make()
    p = tmp_path / f"{name}.satchel"
    satchel.save(obj, p, metadata=meta)
    for mmap in (True, False):
        assert canon(satchel.load(p, mmap=mmap)) == canon(obj)
    with satchel.open(p) as f:
        assert f.metadata == (meta or {})


@pytest.mark.parametrize("name", ["numpy_views", "numpy_mixed", "nested"])
def test_corpus_round_trips_as_torch(tmp_path: Path, name: str) -> None:
    """``framework="torch"`` on NumPy-saved files: same values, as tensors (SPEC 3.6 views)."""
    make, meta, _ = CORPUS[name]
    obj = make()
    p = tmp_path / f"{name}.satchel"
    satchel.save(obj, p, metadata=meta)
    got = satchel.load(p, framework="torch")

    def untyped(x: Any) -> Any:  # numpy scalars come back as 0-d tensors, bytes as bytes
        if isinstance(x, np.generic):
            return np.asarray(x)
        if isinstance(x, dict):
            return type(x)((k, untyped(v)) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return type(x)(untyped(v) for v in x)
        return x

    assert canon(got, framework=False) == canon(untyped(obj), framework=False)


def _check(camp: Campaign, *, allow_variants: bool = False) -> None:
    print("\n" + summary(camp))
    outcomes = camp.by_outcome()
    bad = {o: k for o, k in outcomes.items() if _is_failure(o)}
    if not allow_variants:
        assert "accepted-variant" not in outcomes
    assert not bad, "\n".join([str(bad), *camp.failures[:30]])


def test_bit_flips(corpus: list[Original], tmp_path: Path) -> None:
    camp = run_kinds(corpus, ["bitflip"], tmp_path, seed=1)
    _check(camp)
    # Every data flip is caught by a checksum (safetensors 0.8.0 accepted all 1,966 of its own).
    data = {o: k for (kind, o), k in camp.counts.items() if kind == "bitflip-data"}
    assert set(data) == {"rejected:IntegrityError"}, data


def test_truncations(corpus: list[Original], tmp_path: Path) -> None:
    camp = run_kinds(corpus, ["truncate"], tmp_path, seed=2)
    _check(camp)
    assert set(camp.by_outcome()) == {"rejected:FormatError"}


def test_insert_delete_splice(corpus: list[Original], tmp_path: Path) -> None:
    _check(run_kinds(corpus, ["insdel", "splice"], tmp_path, seed=3))


def test_boundary_values_header(corpus: list[Original], tmp_path: Path) -> None:
    _check(run_kinds(corpus, ["length", "header"], tmp_path, seed=4))


def test_boundary_values_manifest_checksummed(corpus: list[Original], tmp_path: Path) -> None:
    camp = run_kinds(corpus, ["manifest"], tmp_path, seed=5)
    _check(camp)
    assert set(camp.by_outcome()) == {"rejected:IntegrityError"}


def test_boundary_values_manifest_signed(corpus: list[Original], tmp_path: Path) -> None:
    # A hostile writer re-signs the manifest: the file may describe anything SPEC allows, but
    # loading it must still end in data or a SatchelError.
    _check(run_kinds(corpus, ["manifest-signed"], tmp_path, seed=6), allow_variants=True)


# -- the manual, larger campaign -------------------------------------------------------------------


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, default=4, help="multiply the per-file mutant counts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--differential", action="store_true", help="also count safetensors' outcomes")
    args = ap.parse_args(argv)
    import torch  # noqa: F401  (the corpus has torch files)

    with tempfile.TemporaryDirectory() as d:
        corpus = build_corpus(Path(d))
        rss0 = _peak_rss()
        t = time.perf_counter()
        camp = run_kinds(
            corpus,
            [*KINDS, "manifest-signed"],
            Path(d),
            seed=args.seed,
            scale=args.scale,
            differential=args.differential,
        )
        wall = time.perf_counter() - t
    print(summary(camp))
    if args.differential:
        print("safetensors on the same mutants:")
        for kind in sorted(camp.by_kind()):
            outs = {o: c for (kd, o), c in camp.st_counts.items() if kd == kind}
            print(f"  {kind:26} {dict(sorted(outs.items()))}")
    print(
        f"  wall {wall:.1f} s; peak RSS {_peak_rss() / 2**20:.0f} MiB (before {rss0 / 2**20:.0f})"
    )
    if args.json:
        r = sorted(camp.reject_seconds)
        args.json.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "scale": args.scale,
                    "corpus": {o.name: len(o.blob) for o in corpus},
                    "total": camp.total(),
                    "by_kind": camp.by_kind(),
                    "by_outcome": camp.by_outcome(),
                    "counts": {f"{k}|{o}": n for (k, o), n in sorted(camp.counts.items())},
                    "p50_reject_ms": r[len(r) // 2] * 1e3,
                    "p99_reject_ms": _p99(r) * 1e3,
                    "max_reject_ms": r[-1] * 1e3,
                    "p99_reject_ms_by_file": {
                        name: _p99(ts) * 1e3 for name, ts in camp.reject_by_file.items()
                    },
                    "peak_rss_mib": _peak_rss() / 2**20,
                    "wall_s": wall,
                    "failures": camp.failures,
                    "safetensors": {f"{k}|{o}": n for (k, o), n in sorted(camp.st_counts.items())},
                },
                indent=1,
            )
        )
    return 1 if any(_is_failure(o) for o in camp.by_outcome()) else 0


if __name__ == "__main__":
    sys.exit(main())
