"""MXNet without MXNet: the mxnet 1.9.1 fixtures, every record generation, trainer-state pickles.

The fixtures in tests/fixtures/mxnet were written by mxnet 1.9.1; ``.expected.json`` /
``.expected.npz`` hold what ``mx.nd.load`` (or ``pickle.loads`` for ``.states``) returned. Other
files come from the record writer below (docs/formats.md#mxnet-list, #mxnet-record), and
trainer-state pickles from stand-in classes registered under MXNet's module names, so ``pickle``
writes the same globals a real ``Trainer.save_states`` does at every protocol.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import struct
import sys
import types
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fixture_truth
import satchel
from satchel.formats import mxnet as mx_reader

try:  # tests/ as a package or as a plain folder on sys.path
    from . import hostile_cases as hc
except ImportError:
    import hostile_cases as hc

FIXTURES = fixture_truth.FIXTURES / "mxnet"
LISTS = ["mlp.params", "mlp_export-0001.params", "list.nd", "mixed.nd", "np_semantics.npx"]
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
FLAGS = [np.float32, np.float64, np.float16, np.uint8, np.int32, np.int8, np.int64, np.bool_,
         np.int16, np.uint16, np.uint32, np.uint64, ml_dtypes.bfloat16]  # fmt: skip


def fixture(name: str) -> Path:
    p = FIXTURES / name
    if not p.exists():
        pytest.fail(f"fixture {p} is not present")
    return p


def truth(name: str) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    doc = json.loads(fixture(f"{name}.expected.json").read_text())
    with np.load(fixture(f"{name}.expected.npz"), allow_pickle=False) as z:
        return doc, {k: z[k] for k in z.files}


def densify(sp: dict[str, Any]) -> np.ndarray[Any, Any]:
    out = np.zeros(sp["shape"], dtype=sp["data"].dtype)
    if sp["stype"] == "row_sparse":
        out[sp["indices"]] = sp["data"]
    else:
        ptr = sp["indptr"]
        for r in range(sp["shape"][0]):
            out[r, sp["indices"][ptr[r] : ptr[r + 1]]] = sp["data"][ptr[r] : ptr[r + 1]]
    return out


def same(got: Any, want: np.ndarray[Any, Any], where: str) -> None:
    assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__}"
    assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {got.dtype}{got.shape}"
    assert got.tobytes() == want.tobytes(), where


def check(got: Any, node: dict[str, Any], arrays: dict[str, Any], where: str = "root") -> None:
    """``got`` (satchel, NumPy arrays) has the structure and values the ground truth node says."""
    kind = node["kind"]
    if kind == "tensor":
        if node["stype"] == "default":
            same(got, arrays[node["npz"]], where)
        else:  # sparse arrays come back as their stored parts (see satchel.formats.mxnet)
            assert got["stype"] == node["stype"] and list(got["shape"]) == node["shape"], where
            assert list(got) == ["stype", "shape", *node["parts"]], where
            for part, p in node["parts"].items():
                same(got[part], arrays[p["npz"]], f"{where}@{part}")
            same(densify(got), arrays[node["npz"]], f"{where} densified")
        assert got_dtype(got) == node["dtype"], where
    elif kind in ("dict", "object"):
        items = node["items"] if kind == "dict" else node["state"]["items"]
        assert isinstance(got, dict), where
        assert list(got) == [i["key"] for i in items], where
        for i in items:
            assert type(i["key"]).__name__ == i["key_type"], where
            check(got[i["key"]], i["value"], arrays, f"{where}/{i['key']}")
    elif kind in ("list", "tuple"):
        assert type(got).__name__ == kind and len(got) == len(node["items"]), where
        for k, (g, n) in enumerate(zip(got, node["items"], strict=True)):
            check(g, n, arrays, f"{where}/{k}")
    else:
        want = {"none": None}.get(kind, node.get("value"))
        assert got == want and type(got).__name__ == {"none": "NoneType"}.get(kind, kind), where


def got_dtype(x: Any) -> str:
    return str((x["data"] if isinstance(x, dict) else x).dtype)


# -- ground truth -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LISTS)
def test_list_fixture_matches_mx_nd_load(name: str) -> None:
    doc, arrays = truth(name)
    check(satchel.load(fixture(name)), doc["root"], arrays)


def test_states_fixture_matches_pickle_loads_under_mxnet() -> None:
    doc, arrays = truth("mlp.states")
    assert doc["pickle_globals"] == [
        "mxnet.ndarray.ndarray.NDArray", "builtins.bytearray", "mxnet.optimizer.optimizer.Adam"
    ]  # fmt: skip
    got = satchel.load(fixture("mlp.states"))
    check(got, doc["root"], arrays)
    # _index_update_count is the same dict object as _all_index_update_counts[0], as in MXNet.
    opt = got[1]
    assert opt["_index_update_count"] is opt["_all_index_update_counts"][0]


def test_symbol_json_loads_as_plain_data_matching_mx_sym_load() -> None:
    """Issue 8.6d: a -symbol.json is a graph, read as what mx.sym.load lists (nothing run)."""
    from satchel.formats.detect import sniffed

    path = fixture("mlp_export-symbol.json")
    assert sniffed(path) == "mxnet"
    doc = json.loads(fixture("mlp_export-symbol.json.expected.json").read_text())
    got = satchel.load(path)
    assert list(got) == ["list_arguments", "list_auxiliary_states", "list_outputs", "nodes"]
    check({k: got[k] for k in list(got)[:3]}, doc["root"], {})
    raw = json.loads(path.read_text())
    assert [n["name"] for n in got["nodes"]] == [n["name"] for n in raw["nodes"]]
    assert got["nodes"][3] == {
        "op": "FullyConnected",
        "name": "dense0_fwd",
        "attrs": {"flatten": "True", "no_bias": "False", "num_hidden": "256"},
        "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]],
    }
    with satchel.open(path) as f:
        assert f.keys() == []


def _symbol(nodes: list[dict[str, Any]], heads: list[list[int]]) -> bytes:
    args = [i for i, n in enumerate(nodes) if n["op"] == "null"]
    version = {"mxnet_version": ["int", 10901]}
    doc = {"nodes": nodes, "arg_nodes": args, "heads": heads, "attrs": version}
    return json.dumps(doc, indent=2).encode()


def _var(name: str) -> dict[str, Any]:
    return {"op": "null", "name": name, "inputs": []}


def test_symbol_batchnorm_moving_stats_are_auxiliary_states(tmp_path: Path) -> None:
    """FMutateInputs of BatchNorm (inputs 3, 4) makes them aux states; DFS order as nnvm lists."""
    nodes = [
        _var("data"), _var("bn_gamma"), _var("bn_beta"), _var("bn_moving_mean"),
        _var("bn_moving_var"),
        {"op": "BatchNorm", "name": "bn", "attrs": {"eps": "1e-5"},
         "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 1], [4, 0, 1]]},
        _var("unused"),
        {"op": "SliceChannel", "name": "split", "attrs": {"num_outputs": "2"},
         "inputs": [[5, 0, 0]]},
    ]  # fmt: skip
    path = tmp_path / "net-symbol.json"
    path.write_bytes(_symbol(nodes, [[7, 0, 0], [7, 1, 0], [5, 1, 0], [0, 0, 0]]))
    got = satchel.load(path)
    assert got["list_arguments"] == ["data", "bn_gamma", "bn_beta"]
    assert got["list_auxiliary_states"] == ["bn_moving_mean", "bn_moving_var"]
    assert got["list_outputs"] == ["split_output0", "split_output1", "bn_mean", "data"]


def test_symbol_strings_are_never_evaluated(tmp_path: Path) -> None:
    evil = {"op": "os.system", "name": "x", "attrs": {"cmd": "rm -rf /"}, "inputs": [[0, 0, 0]]}
    nodes = [_var("__import__('os').system('false')"), evil]
    path = tmp_path / "evil-symbol.json"
    path.write_bytes(_symbol(nodes, [[1, 0, 0]]))
    got = satchel.load(path)
    assert got["list_arguments"] == ["__import__('os').system('false')"]
    assert got["list_outputs"] == ["x_output"]
    assert got["nodes"][1]["attrs"] == {"cmd": "rm -rf /"}


@pytest.mark.parametrize(
    ("nodes", "heads", "what"),
    [
        (
            [_var("a"), {"op": "relu", "name": "r", "inputs": [[2, 0, 0]]}, _var("b")],
            [[1, 0, 0]],
            "input",
        ),  # a forward reference: nnvm saves in topological order, so never a cycle
        ([_var("a")], [[5, 0, 0]], "heads"),
        ([_var("a")], [], "no heads"),
        ([{"op": 1, "name": "a", "inputs": []}], [[0, 0, 0]], "strings"),
        ([{"op": "null", "name": "a", "attrs": {"x": 1}, "inputs": []}], [[0, 0, 0]], "strings"),
        ([{"op": "null", "name": "a", "inputs": [[0, True, 0]]}], [[0, 0, 0]], "input"),
    ],
)
def test_symbol_malformed_graphs_raise_format_error(
    tmp_path: Path, nodes: list[Any], heads: list[Any], what: str
) -> None:
    path = tmp_path / "bad-symbol.json"
    path.write_bytes(_symbol(nodes, heads))
    with pytest.raises(satchel.FormatError, match=what):
        satchel.load(path)


def test_symbol_json_truncated_is_a_format_error(tmp_path: Path) -> None:
    raw = fixture("mlp_export-symbol.json").read_bytes()
    for cut in (60, len(raw) // 2, len(raw) - 3):
        path = tmp_path / f"cut{cut}-symbol.json"
        path.write_bytes(raw[:cut])
        with pytest.raises(satchel.FormatError):
            satchel.load(path)


def test_fixtures_load_as_torch_and_open_lazily() -> None:
    import torch

    _, arrays = truth("mixed.nd")
    got = satchel.load(fixture("mixed.nd"), framework="torch")
    assert torch.equal(got["i64"], torch.from_numpy(arrays["i64"]))
    assert torch.equal(got["csr"]["indptr"], torch.from_numpy(arrays["csr@indptr"]))
    with satchel.open(fixture("np_semantics.npx")) as f:
        assert f.keys() == ["w", "s"] and f.info("s").shape == ()
        same(f["s"], arrays_of("np_semantics.npx")["s"], "s")


def arrays_of(name: str) -> dict[str, Any]:
    return truth(name)[1]


# -- a record writer: every generation, every type flag, sparse and none arrays ------------------
def tshape(shape: tuple[int, ...]) -> bytes:
    return struct.pack("<i", len(shape)) + struct.pack(f"<{len(shape)}q", *shape)


def record(
    a: np.ndarray[Any, Any] | None, magic: int = V2, *, ctx: tuple[int, int] = (1, 0)
) -> bytes:
    if a is None:
        return struct.pack("<Ii", magic, 0) + (tshape(()) if magic == V2 else struct.pack("<i", -1))
    flag = FLAGS.index(a.dtype.type)
    body = struct.pack("<ii", *ctx) + struct.pack("<i", flag) + a.tobytes()
    if magic in (V2, V3):
        return struct.pack("<Ii", magic, 0) + tshape(a.shape) + body
    if magic == V1:
        return struct.pack("<I", V1) + tshape(a.shape) + body
    # pre-V1: the ndim is the first word, then u32 dims
    return struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape) + body


def sparse_record(kind: str, dense: np.ndarray[Any, Any]) -> bytes:
    rows = [r for r in range(dense.shape[0]) if dense[r].any()]
    if kind == "row_sparse":
        data, aux = dense[rows], [np.array(rows, np.int64)]
        head = struct.pack("<Ii", V2, 1) + tshape(data.shape) + tshape(dense.shape)
    else:
        nz = np.nonzero(dense)
        data = dense[nz]
        ptr = np.searchsorted(nz[0], np.arange(dense.shape[0] + 1)).astype(np.int64)
        aux = [ptr, nz[1].astype(np.int64)]
        head = struct.pack("<Ii", V2, 2) + tshape(data.shape) + tshape(dense.shape)
    head += struct.pack("<iii", 1, 0, FLAGS.index(dense.dtype.type))
    for a in aux:
        head += struct.pack("<i", 6) + tshape(a.shape)
    return head + data.tobytes() + b"".join(a.tobytes() for a in aux)


def list_file(
    records: list[bytes], names: list[str] | None = None, *, n: int | None = None
) -> bytes:
    out = struct.pack("<QQQ", 0x112, 0, len(records) if n is None else n) + b"".join(records)
    names = names or []
    out += struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw
    return out


def put(tmp_path: Path, blob: bytes, name: str = "m") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def sample(dt: Any, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    n = int(np.prod(shape)) * np.dtype(dt).itemsize
    raw = np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)
    if np.dtype(dt) == np.bool_:
        raw &= 1
    return raw.view(dt).reshape(shape)


@pytest.mark.parametrize("magic", [V3, V2, V1, 0], ids=["V3", "V2", "V1", "pre-V1"])
def test_every_type_flag_in_every_record_generation(tmp_path: Path, magic: int) -> None:
    arrays = {f"a{i}": sample(dt, (2, 3), i) for i, dt in enumerate(FLAGS)}
    arrays["empty"] = np.zeros((0, 4), np.float32)
    if magic == V3:
        arrays["scalar"] = np.array(1.5, np.float32)  # 0-d exists only with numpy semantics
    blob = list_file([record(a, magic) for a in arrays.values()], list(arrays))
    got = satchel.load(put(tmp_path, blob))
    assert list(got) == list(arrays)
    for k, a in arrays.items():
        same(got[k], a, k)


def test_none_arrays_unnamed_lists_and_gpu_contexts(tmp_path: Path) -> None:
    a = np.arange(4, dtype=np.float32)
    blob = list_file([record(None, V2), record(a, ctx=(2, 3)), record(None, V3), b"\0\0\0\0"])
    got = satchel.load(put(tmp_path, blob))
    assert isinstance(got, list) and got[0] is None and got[2] is None and got[3] is None
    same(got[1], a, "gpu array")  # every array loads to the CPU, as mx.nd.load does


def test_sparse_records_round_trip_to_their_dense_values(tmp_path: Path) -> None:
    dense = np.zeros((5, 3), np.float64)
    dense[1] = [1, 2, 3]
    dense[4, 2] = 7
    blob = list_file([sparse_record("row_sparse", dense), sparse_record("csr", dense)], ["r", "c"])
    got = satchel.load(put(tmp_path, blob))
    assert list(got["c"]) == ["stype", "shape", "data", "indices", "indptr"]
    for k in "rc":
        same(densify(got[k]), dense, k)


# -- trainer states through the interpreter ------------------------------------------------------
@pytest.fixture
def fake_mxnet(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Classes registered under MXNet's names so ``pickle`` writes MXNet's own globals."""

    class NDArray:
        def __init__(self, handle: bytes | None) -> None:
            self.handle = handle

        def __reduce__(self) -> Any:  # as mxnet/ndarray/ndarray.py
            return (
                NDArray,
                (None,),
                {"handle": None if self.handle is None else bytearray(self.handle)},
            )

    class Adam:
        def __init__(self, **kw: Any) -> None:
            self.__dict__.update(kw)

    class FactorScheduler(Adam):
        pass

    mods = {}
    for name in ("mxnet", "mxnet.ndarray", "mxnet.ndarray.ndarray", "mxnet.optimizer",
                 "mxnet.optimizer.optimizer", "mxnet.lr_scheduler"):  # fmt: skip
        mods[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mods[name])
    for cls, mod in ((NDArray, "mxnet.ndarray.ndarray"), (Adam, "mxnet.optimizer.optimizer"),
                     (FactorScheduler, "mxnet.lr_scheduler")):  # fmt: skip
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    return types.SimpleNamespace(NDArray=NDArray, Adam=Adam, FactorScheduler=FactorScheduler)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_states_pickles_of_every_protocol(tmp_path: Path, fake_mxnet: Any, protocol: int) -> None:
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    v = sample(np.float16, (3,), 1)
    nd = fake_mxnet.NDArray
    sched = fake_mxnet.FactorScheduler(step=10, factor=0.5, base_lr=0.1)
    opt = fake_mxnet.Adam(lr=0.01, beta1=0.9, lr_scheduler=sched, idx2name={0: "w"}, flag=True)
    shared = nd(record(m))
    states = {0: (shared, nd(record(v))), 1: shared, 2: nd(None), 3: [nd(record(m, V3))]}
    blob = pickle.dumps((states, opt), protocol=protocol)
    got = satchel.load(put(tmp_path, blob))
    assert isinstance(got, tuple) and list(got[0]) == [0, 1, 2, 3]
    same(got[0][0][0], m, "mean")
    same(got[0][0][1], v, "var")
    assert got[0][2] is None
    same(got[0][3][0], m, "V3 record")
    assert got[1] == {"lr": 0.01, "beta1": 0.9, "idx2name": {0: "w"}, "flag": True,
                      "lr_scheduler": {"step": 10, "factor": 0.5, "base_lr": 0.1},
                      "param_dict": {}}  # fmt: skip


def test_arrays_in_sets_or_as_keys_are_refused(tmp_path: Path, fake_mxnet: Any) -> None:
    nd = fake_mxnet.NDArray(record(np.zeros(1, np.float32)))
    for obj in ({nd}, {nd: 1}, frozenset([fake_mxnet.Adam()])):
        blob = pickle.dumps(({0: nd}, obj), protocol=4)
        with pytest.raises(satchel.FormatError, match=r"set|key"):
            satchel.load(put(tmp_path, blob))


def _mx_prefix() -> bytes:
    """Protocol 0 text that names an allowed MXNet global first, so the file sniffs as MXNet."""
    return b"(cmxnet.ndarray.ndarray\nNDArray\n"


@pytest.mark.parametrize(
    ("label", "body", "refused"),
    [
        ("GLOBAL posix system", b"cposix\nsystem\n(S'touch CANARY'\ntR", "posix.system"),
        ("GLOBAL os system", b"cos\nsystem\n(S'touch CANARY'\ntR", "os.system"),
        ("builtins eval", b'cbuiltins\neval\n(S\'open("CANARY","w")\'\ntR', "builtins.eval"),
        ("py2 builtin exec", b"c__builtin__\nexec\n(S'x'\ntR", "builtins.exec"),
        ("subprocess", b"csubprocess\nPopen\n((S'touch'\nS'CANARY'\nltR", "subprocess.Popen"),
        ("optimizer lookalike", b"cmxnet.optimizer.optimizer\nregister\n(tR", "register"),
        ("numpy reconstruct", b"cnumpy.core.multiarray\n_reconstruct\n(tR", "_reconstruct"),
        ("INST", b"(S'touch CANARY'\nios\nsystem\n", "INST"),
        ("REDUCE an optimizer class", b"cmxnet.optimizer.optimizer\nAdam\n(tR", "Adam"),
        ("stack global", b"\x8c\x05posix\x8c\x06system\x93(S'touch CANARY'\ntR", "posix.system"),
    ],
)
def test_malicious_states_are_refused_without_running(
    tmp_path: Path, label: str, body: bytes, refused: str
) -> None:
    canary = tmp_path / "CANARY"
    blob = _mx_prefix() + body.replace(b"CANARY", str(canary).encode()) + b"t."
    for loader in (satchel.load, mx_reader.read):
        with pytest.raises(satchel.UnsafeContentError) as info:
            loader(put(tmp_path, blob))
        assert refused in str(info.value), str(info.value)
    # Without an MXNet name in its first bytes a pickle is not recognised at all.
    bare = body.replace(b"CANARY", str(canary).encode()) + b"."
    with pytest.raises(satchel.SatchelError):
        satchel.load(put(tmp_path, bare, "bare"))
    with pytest.raises(satchel.UnsafeContentError):
        mx_reader.read(put(tmp_path, bare, "bare"))
    assert not canary.exists()


@pytest.mark.parametrize(
    ("label", "body", "match"),
    [
        (
            "handle garbage",
            b"(NtRp0\n(dS'handle'\nc__builtin__\nbytearray\n(C\x04abcdtRsb",
            "magic",
        ),
        ("handle with extra bytes", None, "bytes after"),
        ("extra state keys", b"(NtR(d(S'handle'\nNS'x'\nI1\nub", "handle"),
        ("never built", b"(NtR", "never received"),
        ("built twice", b"(NtR(dS'handle'\nNsb(dS'handle'\nNsb", "handle"),
        ("NDArray with arguments", b"(I1\ntR", "arguments"),
        ("handle not bytes", b"(NtR(dS'handle'\nI5\nsb", "int"),
    ],
)
def test_malformed_ndarray_states_are_format_errors(
    tmp_path: Path, label: str, body: bytes | None, match: str
) -> None:
    if body is None:
        handle = record(np.zeros(2, np.float32)) + b"\0"
        body = b"(NtR(dS'handle'\nC" + bytes([len(handle)]) + handle + b"sb"
    blob = b"\x80\x02cmxnet.ndarray.ndarray\nNDArray\n" + body + b"\x85."
    with pytest.raises(satchel.FormatError, match=match):
        satchel.load(put(tmp_path, blob))


# -- hostile list files (docs/formats.md#hostile-numbers, N1-N8) ---------------------------------
A = np.arange(3, dtype=np.float32)
CASES: dict[str, tuple[bytes, str]] = {
    "bad magic": (struct.pack("<QQQ", 0x113, 0, 0), "list magic"),
    "huge array count": (struct.pack("<QQQ", 0x112, 0, 2**64 - 1), "array count"),
    "more arrays than present": (list_file([record(A)], n=2), "truncated"),
    "unknown record magic": (list_file([struct.pack("<I", 0xF993FACB) + b"\0" * 40]), "magic"),
    "ndim 2**31": (list_file([struct.pack("<Iii", V2, 0, 2**31 - 1)]), "ndim"),
    "negative ndim": (list_file([struct.pack("<Iii", V2, 0, -5)]), "ndim"),
    "V2 unknown dims": (list_file([struct.pack("<Iii", V2, 0, -1)]), "dimensions"),
    "negative dim": (list_file([struct.pack("<Iiiq", V2, 0, 1, -2) + b"\0" * 12]), "dimensions"),
    "huge dims": (
        list_file([struct.pack("<Iiiqq", V2, 0, 2, 2**62, 2**62) + b"\0" * 12]),
        "dimensions",
    ),
    "huge data": (
        list_file([struct.pack("<Iiiq", V2, 0, 1, 2**40) + struct.pack("<iii", 1, 0, 0)]),
        "truncated",
    ),
    "type flag 13": (
        list_file([record(A).replace(struct.pack("<iii", 1, 0, 0), struct.pack("<iii", 1, 0, 13))]),
        "type flag 13",
    ),
    "type flag -1": (
        list_file([record(A).replace(struct.pack("<iii", 1, 0, 0), struct.pack("<iii", 1, 0, -1))]),
        "type flag -1",
    ),
    "storage type 3": (list_file([struct.pack("<Ii", V2, 3) + b"\0" * 40]), "storage type 3"),
    "storage type -1": (list_file([struct.pack("<Ii", V2, -1) + b"\0" * 40]), "storage type -1"),
    "V3 sparse": (list_file([struct.pack("<Ii", V3, 1) + b"\0" * 40]), "storage type 1"),
    "legacy ndim 33": (list_file([struct.pack("<I", 33) + b"\0" * 200]), "magic"),
    "name count mismatch": (list_file([record(A), record(A)], ["a"]), "1 names for 2"),
    "huge name": (list_file([record(A)])[:-8] + struct.pack("<QQ", 1, 2**63) + b"x", "name 0"),
    "bad utf-8 name": (list_file([record(A)])[:-8] + struct.pack("<QQ", 1, 1) + b"\xff", "UTF-8"),
    "duplicate names": (list_file([record(A), record(A)], ["w", "w"]), "appears twice"),
    "trailing bytes": (list_file([record(A)], ["w"]) + b"PK\x05\x06", "unexplained"),
    "rsp rows mismatch": (
        sparse_record("row_sparse", np.eye(3, dtype=np.float32)).replace(
            tshape((3, 3)), tshape((3, 4)), 1
        ),
        "do not fit",
    ),
    "csr indptr mismatch": (
        sparse_record("csr", np.eye(3, dtype=np.float32)).replace(tshape((4,)), tshape((3,))),
        "do not fit",
    ),
    "bad aux type": (
        sparse_record("row_sparse", np.eye(2, dtype=np.float32)).replace(
            struct.pack("<i", 6) + tshape((2,)), struct.pack("<i", 99) + tshape((2,))
        ),
        "type flag 99",
    ),
    "float indices": (
        sparse_record("row_sparse", np.eye(2, dtype=np.float32)).replace(
            struct.pack("<i", 6) + tshape((2,)), struct.pack("<i", 1) + tshape((2,))
        ),
        "not integers",
    ),
}


@pytest.mark.parametrize("label", sorted(CASES))
def test_hostile_list_files_are_format_errors(tmp_path: Path, label: str) -> None:
    blob, match = CASES[label]
    if not blob.startswith(struct.pack("<Q", 0x112)) and label != "bad magic":
        blob = list_file([blob])  # a bare (sparse) record: wrap it
    path = put(tmp_path, blob)
    with pytest.raises(satchel.SatchelError) as info:
        mx_reader.read_list(np.frombuffer(blob, dtype=np.uint8), where=str(path))
    assert type(info.value) is satchel.FormatError, repr(info.value)
    assert match in str(info.value) and str(path) in str(info.value), str(info.value)
    if label != "bad magic":
        with pytest.raises(satchel.FormatError):
            satchel.load(path)


@pytest.mark.parametrize("name", ["list.nd", "mixed.nd", "np_semantics.npx"])
def test_every_truncation_is_a_format_error(name: str) -> None:
    blob = fixture(name).read_bytes()
    for n in range(len(blob)):
        with pytest.raises(satchel.FormatError):
            mx_reader.read_list(np.frombuffer(blob[:n], dtype=np.uint8), where=f"cut{n}")


def test_states_truncations_and_flips_raise_only_satchel_errors() -> None:
    blob = fixture("mlp.states").read_bytes()
    for n in [*range(0, 300), *range(300, len(blob), 211)]:
        with pytest.raises(satchel.SatchelError):
            mx_reader.read_states(np.frombuffer(blob[:n], dtype=np.uint8), where=f"cut{n}")
    rng = random.Random(5)
    for _ in range(500):
        mutant = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            mutant[rng.randrange(len(blob))] = rng.randrange(256)
        with contextlib.suppress(satchel.SatchelError):
            mx_reader.read_states(np.frombuffer(bytes(mutant), dtype=np.uint8), where="m")


def test_list_flips_raise_only_satchel_errors() -> None:
    blob = fixture("mixed.nd").read_bytes()
    rng = random.Random(11)
    refused = 0
    for _ in range(3000):
        mutant = bytearray(blob)
        mutant[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            mx_reader.read_list(np.frombuffer(bytes(mutant), dtype=np.uint8), where="m")
        except satchel.SatchelError:
            refused += 1
    assert refused > 0


def test_worst_cases_allocate_nothing_large(tmp_path: Path) -> None:
    """Huge counts, dims and names are refused under RLIMIT_AS = 1 GiB, quickly."""
    blobs = [
        struct.pack("<QQQ", 0x112, 0, 2**64 - 1),
        list_file([struct.pack("<Iiiqq", V2, 0, 2, 2**31, 2**31) + struct.pack("<iii", 1, 0, 0)]),
        list_file([struct.pack("<Iii", V2, 0, 2**31 - 1)]),
        list_file([record(A)])[:-8] + struct.pack("<QQ", 1, 2**63),
        b"\x80\x04\x8c\x15mxnet.ndarray.ndarray\x8e" + b"\xff" * 8,  # BINBYTES8 of 2**64-1
        b"\x80\x04\x8c\x15mxnet.ndarray.ndarray\x8d" + b"\xff" * 8,  # BINUNICODE8 likewise
    ]
    jobs = [(put(tmp_path, b, f"w{i}"), {}) for i, b in enumerate(blobs)]
    report = hc.run_confined(jobs, limit=1 << 30, timeout=120)
    assert "crash" not in report, report
    for r in report["results"]:
        assert r["outcome"] == "rejected" and r["error"] == "FormatError", r
        assert r["seconds"] < 2.0, r
    assert report["max_rss"] < 300 << 20, report["max_rss"]
