"""Fuzz targets, one per reader: a mutated valid file loads or raises ``satchel.SatchelError``.

Each target starts from a small valid seed (built here with satchel, NumPy, h5py, safetensors or
by hand from the format's layout; TensorFlow and Orbax use the genuine fixtures, which no
library here can write) and applies 1-4 byte mutations drawn by hypothesis: bit flips, byte
and word overwrites with boundary values (0, 2^31, 2^63, 2^64-1, ...), truncations,
insertions (random bytes or grammar tokens: pickle opcodes, JSON punctuation, zip signatures),
deletions, and chunks of the file repeated or copied elsewhere. Positions favour the first 256
bytes, where the headers are. For folder formats one file of the folder is mutated. The property:

* ``satchel.load`` returns, or raises a ``SatchelError`` - never another exception type;
* what it returns is plain data (containers, numbers, strings, bytes, NumPy arrays), never a
  stand-in object of satchel's readers;
* every example finishes within ``HANG_SECONDS`` (an interval timer interrupts a hang) and the
  hypothesis deadline.

The CI slice (``make test``) runs ``CI_EXAMPLES`` derandomized examples per target. A larger
campaign, which counts outcomes instead of stopping at the first failure::

    python benchmarks/fuzz.py --examples 5000 --format torch-zip

A failing example prints as ``Mutant(file=..., ops=[...])``; :func:`mutate` applied to the
target's seed rebuilds the exact bytes (``benchmarks/fuzz.py --replay`` does it).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import pickle
import shutil
import signal
import struct
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import satchel
from fixture_truth import FIXTURES

CI_EXAMPLES = 100
HANG_SECONDS = 20.0
DEADLINE = timedelta(seconds=5)

# -- seeds --------------------------------------------------------------------------------------
P2 = b"\x80\x02"


def _u(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _g(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _arrays() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([-1, 2], dtype=np.int64),
    }


def seed_satchel(folder: Path) -> Path:
    tree = {**_arrays(), "step": 7, "name": "mlp", "nested": [1.5, (2, None, b"\x00\xff")]}
    satchel.save(tree, folder / "seed.satchel")
    return folder / "seed.satchel"


def seed_safetensors(folder: Path) -> Path:
    from safetensors.numpy import save_file

    save_file(_arrays(), str(folder / "seed.safetensors"), metadata={"format": "np"})
    return folder / "seed.safetensors"


def seed_torch_zip(folder: Path) -> Path:
    # satchel's torch writer lays the zip out as torch.save does (records, 64-byte alignment).
    src = seed_satchel(folder)
    satchel.convert(src, folder / "seed.pt", to="torch")
    return folder / "seed.pt"


def seed_torch_legacy(folder: Path) -> Path:
    """A pre-1.6 ``torch.save`` stream (docs/formats.md#torch-legacy): four pickles, one storage."""
    head = (
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # magic
        + pickle.dumps(1001, protocol=2)  # protocol version
        + pickle.dumps(
            {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}},
            protocol=2,
        )
    )  # fmt: skip
    storage = b"(" + _u("storage") + _g("torch", "FloatStorage") + _u("0") + _u("cpu")
    storage += b"K\x06Nt" + b"Q"  # ('storage', FloatStorage, '0', 'cpu', 6, None) BINPERSID
    tensor = _g("torch._utils", "_rebuild_tensor_v2") + b"(" + storage
    tensor += b"K\x00" + b"K\x02K\x03\x86" + b"K\x03K\x01\x86" + b"\x89"
    tensor += _g("collections", "OrderedDict") + b")R" + b"tR"
    obj = P2 + b"}(" + _u("w") + tensor + _u("step") + b"K\x07u."
    keys = P2 + b"]" + _u("0") + b"a."
    data = struct.pack("<q", 6) + np.arange(6, dtype=np.float32).tobytes()
    (folder / "seed.pt").write_bytes(head + obj + keys + data)
    return folder / "seed.pt"


def seed_npy(folder: Path) -> Path:
    np.save(folder / "seed.npy", np.arange(12, dtype=">i4").reshape(3, 4))
    return folder / "seed.npy"


def seed_npz(folder: Path) -> Path:
    np.savez(folder / "seed.npz", **_arrays())
    return folder / "seed.npz"


def seed_npz_deflated(folder: Path) -> Path:
    np.savez_compressed(folder / "seed.npz", **_arrays())
    return folder / "seed.npz"


def _mxnet_record(a: np.ndarray[Any, Any]) -> bytes:
    """An ``NDArray::Save`` V2 record (docs/formats.md#mxnet-record): header fields, then data."""
    flag = {"float32": 0, "int64": 6}[a.dtype.name]
    shape = struct.pack("<i", a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
    return struct.pack("<Ii", 0xF993FAC9, 0) + shape + struct.pack("<iii", 1, 0, flag) + a.tobytes()


def seed_mxnet_params(folder: Path) -> Path:
    arrays = _arrays()
    out = struct.pack("<QQQ", 0x112, 0, len(arrays))
    out += b"".join(_mxnet_record(a) for a in arrays.values())
    out += struct.pack("<Q", len(arrays))
    out += b"".join(struct.pack("<Q", len(k)) + k.encode() for k in arrays)
    (folder / "seed.params").write_bytes(out)
    return folder / "seed.params"


def seed_mxnet_states(folder: Path) -> Path:
    """``Trainer.save_states``: a pickle of ``({index: NDArray}, optimizer)``."""
    nd = _g("mxnet.ndarray.ndarray", "NDArray") + b")\x81"  # NDArray.__new__ via NEWOBJ
    record = _mxnet_record(np.arange(6, dtype=np.float32).reshape(2, 3))
    nd += b"}" + _u("handle") + b"B" + struct.pack("<I", len(record)) + record + b"sb"
    adam = _g("mxnet.optimizer.optimizer", "Adam") + b")\x81"
    adam += b"}(" + _u("lr") + b"G" + struct.pack(">d", 0.001) + _u("num_update") + b"K\x01ub"
    body = b"\x80\x03}(K\x00" + nd + b"u" + adam + b"\x86."
    (folder / "seed.states").write_bytes(body)
    return folder / "seed.states"


def seed_oneflow_folder(folder: Path) -> Path:
    satchel.convert(seed_npz(folder), folder / "seed.of", to="oneflow")
    return folder / "seed.of"


def seed_oneflow_file(folder: Path) -> Path:
    """The OneFlow 1.0 single file: ``{protocol_version, __oneflow__, data}``, tensors carrying
    pickled NumPy arrays (docs/formats.md#oneflow-single-file)."""
    array = pickle.dumps(np.arange(6, dtype=np.float32).reshape(2, 3), protocol=3)[2:-1]
    dtype = _g("oneflow._oneflow_internal", "dtype") + b")RK\x02b"  # kFloat
    tensor = _g("oneflow", "Tensor") + b")\x81}(" + _u("data") + array + _u("dtype") + dtype
    tensor += b"ub"
    body = b"\x80\x03}(" + _u("protocol_version") + b"K\x01" + _u("__oneflow__") + b"N"
    body += _u("data") + b"}(" + _u("w") + tensor + _u("step") + b"K\x07uu."
    (folder / "seed.of").write_bytes(body)
    return folder / "seed.of"


def _weights_h5(path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:  # the Keras 3 .weights.h5 layout, smallest version
        dense = f.create_group("layers").create_group("dense").create_group("vars")
        dense.create_dataset("0", data=_arrays()["w"])
        dense.create_dataset("1", data=np.zeros(3, dtype=np.float32))
        f.create_group("optimizer").create_group("vars").create_dataset("0", data=np.int64(1))
        f.attrs["keras_version"] = "3.7.0"
    return path


def seed_keras_h5(folder: Path) -> Path:
    return _weights_h5(folder / "seed.weights.h5")


def seed_keras_zip(folder: Path) -> Path:
    h5 = _weights_h5(folder / "model.weights.h5").read_bytes()
    meta = {"keras_version": "3.7.0", "date_saved": "2025-01-01@00:00:00"}
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "mlp"}}
    with zipfile.ZipFile(folder / "seed.keras", "w") as zf:
        zf.writestr("metadata.json", json.dumps(meta))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", h5)
    return folder / "seed.keras"


def seed_gguf(folder: Path) -> Path:
    """GGUF v3 (ggml docs/gguf.md): header, 2 key/values, 2 tensor infos, aligned data."""

    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    kvs = s("general.architecture") + struct.pack("<I", 8) + s("llama")
    kvs += s("general.alignment") + struct.pack("<II", 4, 32)
    w, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2, 3, -4], np.int32)
    infos = s("w") + struct.pack("<IQQIQ", 2, 3, 2, 0, 0)  # ne is reversed shape; F32
    infos += s("b") + struct.pack("<IQIQ", 1, 4, 26, 32)  # I32 at the next 32-byte boundary
    head = b"GGUF" + struct.pack("<IQQ", 3, 2, 2) + kvs + infos
    head += b"\x00" * (-len(head) % 32)
    data = w.tobytes() + b"\x00" * (32 - w.nbytes) + b.tobytes()
    (folder / "seed.gguf").write_bytes(head + data)
    return folder / "seed.gguf"


def _fixture(name: str) -> Callable[[Path], Path]:
    def copy(folder: Path) -> Path:
        src = FIXTURES / name
        dst = folder / src.name
        shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)
        return dst

    return copy


# -- pickle streams: generated opcode by opcode, in the containers that carry them -------------
_LEGACY_HEAD = (
    pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    + pickle.dumps(1001, protocol=2)
    + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
)


def _in_torch_zip(stream: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in (("data.pkl", stream), ("byteorder", b"little"), ("version", b"3\n")):
            zf.writestr(zipfile.ZipInfo(f"archive/{name}", (1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


# name -> (file name, wrapper). MXNet's sniffer looks for a class name near the start: the
# string is pushed and popped at once, leaving the stream's own opcodes to run on an empty stack.
PICKLE_TARGETS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "pickle-torch-zip": ("seed.pt", _in_torch_zip),
    "pickle-torch-legacy": ("seed.pt", lambda s: _LEGACY_HEAD + s + P2 + b"]."),
    "pickle-mxnet-states": ("seed.states", lambda s: P2 + _u("mxnet.optimizer") + b"0" + s),
}

# Opcodes with their arguments: data, containers, the memo, calls, framing, and globals - the
# allowlisted ones (whose stand-ins must never come out of a load) and two refused ones.
PICKLE_TOKENS = (
    b"N", b"\x88", b"\x89", b"K\x00", b"K\x01", b"J\xff\xff\xff\xff", b"\x8a\x01\x01",
    b"G?\xf0\x00\x00\x00\x00\x00\x00", _u("a"), b"\x8c\x01b", b"C\x01c", b"B\x01\x00\x00\x00d",
    b"S'e'\n", b"Vf\n", b"I1\n", b"L2\n", b"F1.5\n",
    b"(", b")", b"]", b"}", b"\x8f", b"t", b"\x85", b"\x86", b"\x87", b"l", b"d", b"\x91",
    b"a", b"e", b"s", b"u", b"\x90",
    b"0", b"1", b"2", b"\x94", b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"p0\n", b"g0\n",
    b"R", b"b", b"\x81", b"\x92", b"Q", b".",
    b"\x95\x00\x00\x00\x00\x00\x00\x00\x00", b"\x95\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x80\x05",
    _g("_codecs", "encode"), _g("torch._utils", "_rebuild_tensor_v2"),
    _g("torch._utils", "_rebuild_parameter"), _g("torch._tensor", "_rebuild_from_type_v2"),
    _g("collections", "OrderedDict"), _g("torch", "FloatStorage"), _g("torch", "float32"),
    _g("torch", "Size"), _g("torch", "device"), _g("torch.nn.parameter", "Parameter"),
    _g("builtins", "set"), _g("builtins", "bytearray"), _g("builtins", "complex"),
    _g("__builtin__", "object"), _g("copy_reg", "_reconstructor"),
    _g("mxnet.ndarray.ndarray", "NDArray"), _g("mxnet.optimizer.optimizer", "Adam"),
    _g("numpy", "dtype"), _g("numpy.core.multiarray", "_reconstruct"), _g("numpy", "ndarray"),
    _g("posix", "system"), _g("builtins", "eval"),
    b"(" + _u("storage") + _g("torch", "FloatStorage") + _u("0") + _u("cpu") + b"K\x01tQ",
)  # fmt: skip


def pickle_stream(tokens: list[bytes]) -> bytes:
    return P2 + b"".join(tokens) + b"."


def _pickle_seed(name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        file, wrap = PICKLE_TARGETS[name]
        (folder / file).write_bytes(wrap(pickle_stream([b"}", _u("k"), b"K\x01s"])))
        return folder / file

    return build


# name -> seed builder; the builder writes into an empty folder and returns the path to load.
TARGETS: dict[str, Callable[[Path], Path]] = {
    "satchel": seed_satchel,
    "safetensors": seed_safetensors,
    "torch-zip": seed_torch_zip,
    "torch-legacy": seed_torch_legacy,
    "npy": seed_npy,
    "npz": seed_npz,
    "npz-deflated": seed_npz_deflated,
    "mxnet-params": seed_mxnet_params,
    "mxnet-states": seed_mxnet_states,
    "oneflow-folder": seed_oneflow_folder,
    "oneflow-file": seed_oneflow_file,
    "tensorflow": _fixture("tensorflow/tf1_ckpt"),
    "keras-h5": seed_keras_h5,
    "keras-zip": seed_keras_zip,
    "gguf": seed_gguf,
    "orbax": _fixture("orbax/ckpt"),
    **{name: _pickle_seed(name) for name in PICKLE_TARGETS},
}


# -- mutations -------------------------------------------------------------------------------------
_BOUNDARY = (
    0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1,
    2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1,
)  # fmt: skip
# Tokens of the formats' grammars, inserted whole: pickle opcodes that change the stack's shape
# (STOP, MEMOIZE, GET, DUP, POP, MARK, TUPLE, REDUCE, BUILD, NEWOBJ, BINPERSID, EMPTY_*,
# SETITEMS, APPEND(S), NONE, FRAME), JSON punctuation, zip and .npy signatures.
TOKENS = (
    b".", b"\x94", b"h\x00", b"2", b"0", b"(", b"t", b"R", b"b", b"\x81", b"Q", b"}", b"]",
    b"u", b"a", b"e", b"N", b"\x95\x08\x00\x00\x00\x00\x00\x00\x00", b'{"', b'"}', b"[",
    b",", b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"\x93NUMPY",
)  # fmt: skip
Op = tuple[Any, ...]


def mutate(data: bytes, ops: list[Op]) -> bytes:
    """Apply ``ops`` in order; every op's position is valid for the bytes it is applied to."""
    buf = bytearray(data)
    for op in ops:
        kind, *a = op
        if kind == "flip":
            buf[a[0]] ^= 1 << a[1]
        elif kind == "byte":
            buf[a[0]] = a[1]
        elif kind == "word":
            pos, width, value, order = a
            raw = (value % 2 ** (8 * width)).to_bytes(width, order)
            buf[pos : pos + width] = raw[: len(buf) - pos]
        elif kind == "truncate":
            del buf[a[0] :]
        elif kind == "insert":
            buf[a[0] : a[0]] = a[1]
        elif kind == "delete":
            del buf[a[0] : a[0] + a[1]]
        elif kind == "repeat":
            buf[a[0] : a[0]] = buf[a[0] : a[0] + a[1]] * a[2]
        elif kind == "copy":  # a chunk of the file itself, written over another place
            src, n, dst = a
            chunk = buf[src : src + n]
            buf[dst : dst + len(chunk)] = chunk
        else:
            raise ValueError(f"unknown mutation {kind!r}")
    return bytes(buf)


class Mutant:
    """One mutated file of a seed (``file`` relative to the seed folder, ``""`` for a file).

    Not a dataclass: hypothesis prints dataclasses field by field, and ``data`` can be large;
    ``file`` and ``ops`` rebuild it (:func:`rebuild`).
    """

    __slots__ = ("data", "file", "ops")

    def __init__(self, file: str, ops: list[Op], data: bytes) -> None:
        self.file, self.ops, self.data = file, ops, data

    def __repr__(self) -> str:
        return f"Mutant(file={self.file!r}, ops={self.ops!r})"


@st.composite
def _op(draw: st.DrawFn, size: int) -> Op:
    """One mutation of a ``size``-byte buffer (``size`` > 0)."""
    pos = draw(st.one_of(st.integers(0, min(size, 256) - 1), st.integers(0, size - 1)))
    kind = draw(
        st.sampled_from(["flip", "byte", "word", "truncate", "insert", "delete", "repeat", "copy"])
    )
    if kind == "flip":
        return ("flip", pos, draw(st.integers(0, 7)))
    if kind == "byte":
        return ("byte", pos, draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)))
    if kind == "word":
        value = draw(st.sampled_from(_BOUNDARY) | st.integers(0, size + 64))
        value = value if draw(st.booleans()) else -value  # two's complement of the boundary
        width = draw(st.sampled_from([1, 2, 4, 8]))
        return ("word", pos, width, value, draw(st.sampled_from(["little", "big"])))
    if kind == "truncate":
        return ("truncate", pos)
    if kind == "insert":
        return ("insert", pos, draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=16)))
    if kind == "copy":
        return ("copy", draw(st.integers(0, size - 1)), draw(st.integers(1, 64)), pos)
    if kind == "delete":
        return ("delete", pos, draw(st.integers(1, 16)))
    return ("repeat", pos, draw(st.integers(1, 64)), draw(st.integers(1, 4)))


@st.composite
def mutants(draw: st.DrawFn, seed: Path) -> Mutant:
    """1-4 mutations of the seed file, or of one file of a seed folder."""
    files = sorted(str(p.relative_to(seed)) for p in seed.rglob("*") if p.is_file())
    name = draw(st.sampled_from(files)) if seed.is_dir() else ""
    data = (seed / name if name else seed).read_bytes()
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(_op(len(data)))
        ops.append(op)
        data = mutate(data, [op])
    return Mutant(name, ops, data)


@st.composite
def pickles(draw: st.DrawFn, target: str) -> Mutant:
    """A stream of up to 24 opcodes (then STOP) in the target's container."""
    tokens = draw(st.lists(st.sampled_from(PICKLE_TOKENS), max_size=24))
    return Mutant("", [("tokens", *tokens)], PICKLE_TARGETS[target][1](pickle_stream(tokens)))


def rebuild(target: str, seed: Path, file: str, ops: list[Op]) -> bytes:
    """The bytes of a failing example, from the target's seed and the example's ``ops``."""
    if target in PICKLE_TARGETS:
        return PICKLE_TARGETS[target][1](pickle_stream(list(ops[0][1:])))
    return mutate((seed / file if file else seed).read_bytes(), ops)


def strategy(target: str, seed: Path) -> st.SearchStrategy[Mutant]:
    return pickles(target) if target in PICKLE_TARGETS else mutants(seed)


# -- the property --------------------------------------------------------------------------------
class Hang(Exception):
    """An example ran past ``HANG_SECONDS``."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"satchel.load did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def not_plain(value: Any) -> str | None:
    """The first object in ``value`` that is not plain data, described; None if all are."""
    atoms = (type(None), bool, int, float, complex, str, bytes, bytearray, np.generic)
    containers = (dict, OrderedDict, list, tuple, set, frozenset)
    seen: dict[int, Any] = {}  # id -> object: keeps them alive so that ids are not reused
    stack = [value]
    while stack:
        x = stack.pop()
        if type(x) in containers:
            if id(x) not in seen:
                seen[id(x)] = x
                stack.extend([*x.keys(), *x.values()] if isinstance(x, dict) else x)
        elif type(x) is np.ndarray:
            if x.dtype.hasobject:
                return f"a NumPy array of dtype {x.dtype}"
        elif not isinstance(x, atoms):
            return f"a {type(x).__module__}.{type(x).__qualname__}: {x!r:.100}"
    return None


def place(seed: Path, mutant: Mutant, work: Path) -> Path:
    """Write ``mutant`` into ``work`` (a fresh copy of a seed folder); the path to load."""
    if work.exists():
        shutil.rmtree(work)
    if not seed.is_dir():
        work.mkdir()
        (work / seed.name).write_bytes(mutant.data)
        return work / seed.name
    shutil.copytree(seed, work / seed.name)
    (work / seed.name / mutant.file).write_bytes(mutant.data)
    return work / seed.name


def check(path: Path) -> str:
    """Load ``path``; the outcome's name. Raises AssertionError or the foreign exception."""
    with time_limit(HANG_SECONDS):
        try:
            value = satchel.load(path)
        except satchel.SatchelError as e:
            return type(e).__name__
    odd = not_plain(value)
    assert odd is None, f"satchel.load returned {odd}"
    return "loaded"


# -- pytest ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-seeds")
    out = {}
    for name, build in TARGETS.items():
        (root / name).mkdir()
        out[name] = build(root / name)
    return out


OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


@pytest.mark.parametrize("target", list(TARGETS))
def test_seed_loads(seeds: dict[str, Path], target: str) -> None:
    """Fuzzing starts from a file the reader accepts (else every mutant is trivially refused)."""
    assert check(seeds[target]) == "loaded"


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz(seeds: dict[str, Path], target: str, tmp_path: Path) -> None:
    seed = seeds[target]

    @settings(
        max_examples=CI_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=DEADLINE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy(target, seed))
    def run(mutant: Mutant) -> None:
        OUTCOMES[target][check(place(seed, mutant, tmp_path / "case"))] += 1

    run()


def test_fuzz_summary() -> None:
    """Prints the outcome counts per target of this run (shown with ``pytest -s``)."""
    for target, counts in OUTCOMES.items():
        print(f"fuzz {target}: {sum(counts.values())} examples, {dict(counts)}")
    assert not OUTCOMES or all(sum(c.values()) > 0 for c in OUTCOMES.values())


def test_mutate_is_reproducible() -> None:
    data = bytes(range(32))
    ops: list[Op] = [
        ("flip", 0, 7), ("byte", 1, 255), ("word", 30, 4, 2**32 - 1, "little"),
        ("insert", 2, b"ab"), ("delete", 0, 1), ("repeat", 0, 2, 2), ("copy", 0, 4, 30),
        ("truncate", 10),
    ]  # fmt: skip
    assert mutate(data, ops) == mutate(data, ops)
    assert len(mutate(data, ops)) == 10
    assert mutate(data, [("word", 0, 2, -1, "big")])[:2] == b"\xff\xff"
    with tempfile.TemporaryDirectory() as d:
        assert place(Path(d) / "x.npy", Mutant("", [], b"y"), Path(d) / "w").read_bytes() == b"y"
