"""Compare what a reader returned with a fixture's recorded ground truth.

Every genuine fixture in ``tests/fixtures/<framework>/`` has ``<fixture>.expected.json`` (the
structure the framework's own loader returned, schema ``satchel-fixture-expected/1``, described
in ``tests/fixtures/README.md``) and ``<fixture>.expected.npz`` (the array values). This module
reads both and checks an object against them, node by node:

* dicts: class (``builtins.dict`` / ``collections.OrderedDict``), key order, key types
  (``str``/``int``, never ``bool``), the ``_metadata`` attribute of state dicts;
* lists and tuples (``torch.Size`` counts as a tuple), their lengths and items;
* plain values: int (not bool), float (exact; ``"nan"``/``"inf"``/``"-inf"`` spelled as
  strings), bool, str, None, bytes (base64), JSON members, GGUF KV values;
* tensors: dtype name, shape and the values **bit for bit** in little-endian C order. NumPy
  arrays (incl. ``ml_dtypes`` bfloat16/float8, big-endian and structured dtypes) and torch
  tensors are both understood; ``bits_of`` nodes (bfloat16/float8 stored as raw uint16/uint8 in
  the npz) compare the raw bit patterns;
* ``same_object_as``: the very same Python object as an earlier path (checked where the
  fixture's notes define it, i.e. pickle-memo identity in torch fixtures: the generator records
  it from ``id()``, which is only meaningful while the loaded structure keeps every object
  alive; for h5py datasets, created afresh on each access, recorded ids can be reused and the
  field is unreliable, see ``keras/mlp.weights.h5``);
* optionally (``check_layout=True``) torch's layout facts: strides, storage offset,
  ``requires_grad``, Parameter vs Tensor, and storage sharing (tensors with the same
  ``storage.id`` share memory, tensors with different ids do not overlap), for torch tensors
  and for NumPy arrays alike.

Typical use::

    from fixture_truth import FIXTURES, assert_matches, load_truth

    truth = load_truth(FIXTURES / "torch" / "mlp_state_dict.pt")
    assert_matches(satchel.load(truth.fixture), truth)

:func:`mismatches` returns the list of differences instead of raising, each naming the path
(``'/'``-joined keys and indices, as the npz keys are; the root is ``<root>``).
:func:`flat_mismatches` checks a flat ``name -> array`` mapping (``satchel.open`` keys) against
the ``tensors`` index. Importing this module imports neither torch nor ml_dtypes; torch tensors
are recognised only if torch is already imported by the caller.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FIXTURES",
    "Truth",
    "assert_matches",
    "fixture_paths",
    "flat_mismatches",
    "leaf_bits",
    "load_truth",
    "mismatches",
]

# The one place the tests find their fixtures: tests/fixtures/, inside the checkout.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
_SUFFIX = ".expected.json"
_ROOT = "<root>"


@dataclass(frozen=True)
class Truth:
    """One fixture's ground truth: the parsed JSON document and the raw npz arrays."""

    fixture: Path
    doc: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)

    @property
    def root(self) -> dict[str, Any] | None:
        """The root node of the loaded structure (absent for files that must be rejected)."""
        return self.doc.get("root")

    @property
    def rejects(self) -> bool:
        """True for fixtures whose ground truth is ``{"expect": "reject", ...}``."""
        return self.doc.get("expect") == "reject"

    @property
    def tensors(self) -> dict[str, dict[str, Any]]:
        """The flat index ``{npz_key: {dtype, shape[, bits_of]}}``."""
        return dict(self.doc.get("tensors", {}))

    @property
    def notes(self) -> list[str]:
        return list(self.doc.get("notes", []))


def fixture_paths(framework: str | None = None) -> list[Path]:
    """Every fixture (file or folder) under ``FIXTURES[/framework]`` that has ground truth.

    Raises:
        FileNotFoundError: the folder is missing or holds no fixture, so that a lost fixture
            fails the tests parametrized over this list instead of leaving them empty (skipped).
    """
    base = FIXTURES / framework if framework else FIXTURES
    found = sorted(
        p.with_name(p.name[: -len(_SUFFIX)]) for p in base.rglob(f"*{_SUFFIX}") if p.is_file()
    )
    if not found:
        raise FileNotFoundError(f"{base}: no fixture with ground truth (*{_SUFFIX}) found")
    return found


def load_truth(fixture: str | Path) -> Truth:
    """Read ``<fixture>.expected.json`` and, when the document names one, its npz."""
    fixture = Path(fixture)
    doc = json.loads(fixture.with_name(fixture.name + _SUFFIX).read_text("utf-8"))
    arrays: dict[str, np.ndarray] = {}
    if doc.get("npz"):
        with np.load(fixture.with_name(doc["npz"]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return Truth(fixture, doc, arrays)


# -- leaves -------------------------------------------------------------------------------------
def _torch_tensor_type() -> Any:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _is_tensor(x: Any) -> bool:
    t = _torch_tensor_type()
    return isinstance(x, np.ndarray | np.generic) or (t is not None and isinstance(x, t))


def leaf_bits(x: Any) -> tuple[str, tuple[int, ...], bytes]:
    """``(dtype name, shape, bytes)`` of a NumPy array or torch tensor, canonically laid out.

    The bytes are the values in C order and little-endian, so equal values compare equal
    whatever the array's strides or byte order. Dtype names are the framework-neutral ones the
    ground truth uses: ``float32``, ``bfloat16``, ``bool``, ``int64``, ``void64``...
    """
    t = _torch_tensor_type()
    if t is not None and isinstance(x, t):
        import torch

        y = x.detach().to("cpu").contiguous()
        raw = y.reshape(-1).view(torch.uint8).numpy().tobytes() if y.numel() else b""
        return str(y.dtype).removeprefix("torch."), tuple(y.shape), raw
    a = np.asarray(x)
    dt = a.dtype
    if dt.byteorder == ">" or (dt.fields and not dt.isnative):
        dt = dt.newbyteorder("<")
    c = np.asarray(a, dtype=dt, order="C")  # ascontiguousarray would make 0-d arrays 1-d
    return a.dtype.name, tuple(c.shape), c.tobytes()


def _expected_bits(truth: Truth, key: str, node: Mapping[str, Any]) -> tuple[str, bytes]:
    raw = truth.arrays[key]
    if node.get("bits_of"):
        # README: bfloat16/float8 values are stored as their raw uint16/uint8 bit patterns.
        return str(node["dtype"]), np.asarray(
            raw, dtype=raw.dtype.newbyteorder("<"), order="C"
        ).tobytes()
    _, _, data = leaf_bits(raw)
    return str(node["dtype"]), data


# -- the walk -----------------------------------------------------------------------------------
@dataclass
class _Walk:
    truth: Truth
    check_classes: bool
    check_attrs: bool
    check_layout: bool
    check_identity: bool
    unordered: Collection[str]
    problems: list[str] = field(default_factory=list)
    seen: dict[str, Any] = field(default_factory=dict)
    storages: dict[int, list[tuple[str, Any, Mapping[str, Any]]]] = field(default_factory=dict)

    def bad(self, path: str, what: str) -> None:
        self.problems.append(f"{path or _ROOT}: {what}")

    def node(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        self.seen[path or _ROOT] = x
        if self.check_identity and "same_object_as" in n:
            other = self.seen.get(n["same_object_as"])
            if other is not x:
                self.bad(path, f"is not the same object as {n['same_object_as']!r}")
        kind = n["kind"]
        handler: Callable[[Any, Mapping[str, Any], str], None] | None = getattr(
            self, f"k_{kind}", None
        )
        if handler is None:
            self.bad(path, f"ground truth node kind {kind!r} is unknown to fixture_truth")
            return
        handler(x, n, path)

    # containers
    def k_dict(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        cls = n.get("class")
        if not isinstance(x, Mapping):
            self.bad(path, f"expected a mapping ({cls}), got {type(x).__name__}")
            return
        if self.check_classes:
            if cls == "collections.OrderedDict" and not isinstance(x, OrderedDict):
                self.bad(path, f"expected an OrderedDict, got {type(x).__name__}")
            elif cls == "builtins.dict" and type(x) is not dict:
                self.bad(path, f"expected a plain dict, got {type(x).__name__}")
        items = n["items"]
        want = [it["key"] for it in items]
        got = list(x.keys())
        if (path or _ROOT) in self.unordered:
            if len(got) != len(want) or set(got) != set(want):
                self.bad(path, f"keys {sorted(map(str, got))} != {sorted(map(str, want))}")
                return
            by_key = {k: k for k in got}  # dict lookup: the actual key object equal to k
            pairs = [(by_key[it["key"]], it) for it in items]
        elif got != want:
            self.bad(path, f"keys in order {got[:12]} != {want[:12]}")
            return
        else:
            pairs = list(zip(got, items, strict=True))
        for actual_key, it in pairs:
            kt = it.get("key_type", "str")
            if kt == "int" and type(actual_key) is not int:
                self.bad(path, f"key {actual_key!r} is a {type(actual_key).__name__}, not int")
            elif kt == "str" and not isinstance(actual_key, str):
                self.bad(path, f"key {actual_key!r} is a {type(actual_key).__name__}, not str")
            child = f"{path}/{it['key']}" if path else str(it["key"])
            self.node(x[actual_key], it["value"], child)
        if self.check_attrs and "attr__metadata" in n:
            if not hasattr(x, "_metadata"):
                self.bad(path, "has no _metadata attribute")
            else:
                self.node(x._metadata, n["attr__metadata"], f"{path}@_metadata")

    def _seq(self, x: Any, n: Mapping[str, Any], path: str, typ: type) -> None:
        cls = n.get("class")
        if self.check_classes and not isinstance(x, typ):
            self.bad(path, f"expected a {typ.__name__} ({cls}), got {type(x).__name__}")
            return
        if not isinstance(x, list | tuple):
            self.bad(path, f"expected a sequence, got {type(x).__name__}")
            return
        if len(x) != len(n["items"]):
            self.bad(path, f"length {len(x)} != {len(n['items'])}")
            return
        for i, (v, child) in enumerate(zip(x, n["items"], strict=True)):
            self.node(v, child, f"{path}/{i}" if path else str(i))

    def k_list(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        self._seq(x, n, path, list)

    def k_tuple(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        self._seq(x, n, path, tuple)

    def k_object(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        # An object is recorded by its __dict__; a reader may return that dict directly.
        state = x if isinstance(x, Mapping) else getattr(x, "__dict__", None)
        if state is None:
            self.bad(path, f"expected an object with state ({n.get('class')}), got {type(x)}")
            return
        self.node(state, n["state"], path)

    # plain values
    def k_int(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        ok = type(x) is int if self.check_classes else isinstance(x, int | np.integer)
        if not ok or isinstance(x, bool) or int(x) != n["value"]:
            self.bad(path, f"expected int {n['value']!r}, got {type(x).__name__} {x!r}")

    def k_float(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        want = n["value"]
        want_f = float(want)  # "nan", "inf" and "-inf" arrive as strings
        ok = type(x) is float if self.check_classes else isinstance(x, float | np.floating)
        if not ok:
            self.bad(path, f"expected float {want!r}, got {type(x).__name__} {x!r}")
        elif math.isnan(want_f):
            if not math.isnan(x):
                self.bad(path, f"expected nan, got {x!r}")
        elif float(x) != want_f:
            self.bad(path, f"expected {want_f!r}, got {x!r}")

    def k_bool(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        if x is not n["value"] and not (not self.check_classes and x == n["value"]):
            self.bad(path, f"expected {n['value']!r}, got {type(x).__name__} {x!r}")

    def k_str(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        if not isinstance(x, str) or x != n["value"]:
            self.bad(path, f"expected str {n['value']!r}, got {x!r}"[:200])

    def k_none(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        if x is not None:
            self.bad(path, f"expected None, got {type(x).__name__}")

    def k_bytes(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        want = base64.b64decode(n["b64"])
        if not isinstance(x, bytes | bytearray) or bytes(x) != want:
            self.bad(path, f"expected {len(want)} bytes, got {type(x).__name__}")

    def k_json(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        if isinstance(x, bytes | bytearray | str):
            try:
                x = json.loads(x)
            except ValueError:
                self.bad(path, "is not JSON text")
                return
        if x != n["value"]:
            self.bad(path, "JSON value differs")

    def k_gguf_kv(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        got = x.tolist() if isinstance(x, np.ndarray | np.generic) else x
        if isinstance(got, bytes):
            got = got.decode("utf-8", "replace")
        if got != n["value"]:
            self.bad(path, f"expected {n['value']!r}, got {got!r}"[:200])

    # tensors
    def k_tensor(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        if "values_b64" in n:
            self._strings(x, n, path)
            return
        if "parts" in n and isinstance(x, Mapping):
            for part, spec in n["parts"].items():
                if part not in x:
                    self.bad(path, f"sparse part {part!r} is missing")
                else:
                    self.k_tensor(x[part], {**spec, "kind": "tensor"}, f"{path}@{part}")
            return
        if not _is_tensor(x):
            self.bad(path, f"expected a tensor, got {type(x).__name__}")
            return
        key = n.get("npz")
        name, shape, data = leaf_bits(x)
        if name != n["dtype"]:
            self.bad(path, f"dtype {name} != {n['dtype']}")
        if list(shape) != list(n["shape"]):
            self.bad(path, f"shape {list(shape)} != {n['shape']}")
        if key is None or key not in self.truth.arrays:
            self.bad(path, f"ground truth has no npz array {key!r}")
        elif name == n["dtype"] and list(shape) == list(n["shape"]):
            _, want = _expected_bits(self.truth, key, n)
            if data != want:
                self.bad(path, "values differ from the ground truth (bitwise)")
            raw = self.truth.arrays[key]
            if (
                raw.dtype.fields
                and isinstance(x, np.ndarray)
                and x.dtype.newbyteorder("<") != raw.dtype.newbyteorder("<")
            ):
                self.bad(path, f"structured dtype {x.dtype} != {raw.dtype}")
        if self.check_classes:
            self._tensor_class(x, n, path)
        if self.check_layout:
            self._layout(x, n, path)

    def _strings(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        vals = n["values_b64"]
        want = (
            base64.b64decode(vals) if isinstance(vals, str) else [base64.b64decode(v) for v in vals]
        )
        got = np.asarray(x).tolist() if isinstance(x, np.ndarray | np.generic) else x
        if isinstance(got, list):
            got = [g.encode() if isinstance(g, str) else g for g in got]
        elif isinstance(got, str):
            got = got.encode()
        if got != want:
            self.bad(path, "string tensor elements differ")

    def _tensor_class(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        t = _torch_tensor_type()
        if t is None or not isinstance(x, t):
            return
        import torch

        is_param = isinstance(x, torch.nn.Parameter)
        cls = str(n.get("class", ""))
        if cls.endswith("Parameter") != is_param:
            self.bad(path, f"class {type(x).__name__} but ground truth says {cls}")

    def _layout(self, x: Any, n: Mapping[str, Any], path: str) -> None:
        t = _torch_tensor_type()
        is_torch = t is not None and isinstance(x, t)
        if "stride" in n:
            if is_torch:
                stride = list(x.stride())
            else:
                a = np.asarray(x)
                stride = [s // a.itemsize for s in a.strides] if a.itemsize else []
            if stride != list(n["stride"]) and math.prod(n["shape"]) > 1:
                self.bad(path, f"stride {stride} != {n['stride']}")
        if is_torch and "storage_offset" in n and x.storage_offset() != n["storage_offset"]:
            self.bad(path, f"storage_offset {x.storage_offset()} != {n['storage_offset']}")
        if is_torch and "requires_grad" in n and bool(x.requires_grad) != n["requires_grad"]:
            self.bad(path, f"requires_grad {x.requires_grad} != {n['requires_grad']}")
        storage = n.get("storage")
        if isinstance(storage, Mapping) and "id" in storage:
            self.storages.setdefault(int(storage["id"]), []).append((path, x, n))

    def finish_layout(self) -> None:
        """Same ``storage.id`` => same memory; different ids => memory that does not overlap."""
        firsts: list[tuple[int, str, Any]] = []
        for sid, group in sorted(self.storages.items()):
            starts = {p: _storage_start(x, n) for p, x, n in group}
            if len(set(starts.values())) != 1:
                self.bad(group[0][0], f"tensors of storage {sid} do not share memory: {starts}")
            firsts.append((sid, group[0][0], group[0][1]))
        for i, (sa, pa, xa) in enumerate(firsts):
            for sb, pb, xb in firsts[i + 1 :]:
                if _overlaps(xa, xb):
                    self.bad(pa, f"storage {sa} overlaps storage {sb} ({pb}) in memory")


def _storage_start(x: Any, n: Mapping[str, Any]) -> int:
    t = _torch_tensor_type()
    if t is not None and isinstance(x, t):
        return int(x.untyped_storage().data_ptr())
    a = np.asarray(x)
    return int(a.__array_interface__["data"][0]) - int(n.get("storage_offset", 0)) * a.itemsize


def _overlaps(a: Any, b: Any) -> bool:
    t = _torch_tensor_type()
    if t is not None and isinstance(a, t) and isinstance(b, t):
        sa, sb = a.untyped_storage(), b.untyped_storage()
        lo_a, lo_b = sa.data_ptr(), sb.data_ptr()
        return (
            lo_a < lo_b + sb.nbytes()
            and lo_b < lo_a + sa.nbytes()
            and min(sa.nbytes(), sb.nbytes()) > 0
        )
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.may_share_memory(a, b)) and a.size > 0 and b.size > 0
    return False


def mismatches(
    actual: Any,
    truth: Truth,
    *,
    check_classes: bool = True,
    check_attrs: bool = True,
    check_layout: bool = False,
    check_identity: bool | None = None,
    unordered: Collection[str] = (),
) -> list[str]:
    """Every difference between ``actual`` and the ground truth's ``root`` (empty: equal).

    ``unordered`` lists paths (``"<root>"``, ``"model"``, ``"optimizer/state"``) whose dict
    keys are compared as a set, for loaders whose order is not defined (OneFlow's legacy
    snapshot follows ``os.listdir``). ``check_classes=False`` accepts any Mapping/sequence and
    NumPy scalars for plain values; ``check_attrs=False`` skips ``_metadata``;
    ``check_layout=True`` adds strides, storage offsets, requires_grad and storage sharing.
    ``check_identity`` enforces ``same_object_as``; by default only for fixtures whose notes
    define it (see the module docstring).
    """
    if truth.root is None:
        return [
            f"{truth.fixture.name}: ground truth has no root (expect={truth.doc.get('expect')})"
        ]
    if check_identity is None:
        check_identity = any("same_object_as" in note for note in truth.notes)
    walk = _Walk(
        truth, check_classes, check_attrs, check_layout, check_identity, frozenset(unordered)
    )
    walk.node(actual, truth.root, "")
    if check_layout:
        walk.finish_layout()
    return walk.problems


def assert_matches(actual: Any, truth: Truth, **options: Any) -> None:
    """:func:`mismatches`, raising ``AssertionError`` listing the first 25 differences."""
    problems = mismatches(actual, truth, **options)
    if problems:
        shown = "\n  ".join(problems[:25])
        more = f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else ""
        raise AssertionError(
            f"{truth.fixture.name}: {len(problems)} difference(s) from the ground truth:\n"
            f"  {shown}{more}"
        )


def flat_mismatches(
    flat: Mapping[str, Any],
    truth: Truth,
    *,
    name_of: Callable[[str], str] = lambda key: key.replace("/", "."),
) -> list[str]:
    """Differences between a flat ``name -> array`` mapping and the ``tensors`` index.

    ``name_of`` maps an npz key (``'/'``-joined path) to the mapping's name; by default the
    dotted name ``satchel.open`` uses. Every indexed tensor must be present with equal bits;
    names beyond the index are reported too.
    """
    problems: list[str] = []
    wanted = {name_of(k): (k, spec) for k, spec in truth.tensors.items() if k in truth.arrays}
    for name, (key, spec) in wanted.items():
        if name not in flat:
            problems.append(f"{name}: missing")
            continue
        got_name, shape, data = leaf_bits(flat[name])
        if got_name != spec["dtype"] or list(shape) != list(spec["shape"]):
            problems.append(f"{name}: {got_name}{list(shape)} != {spec['dtype']}{spec['shape']}")
        elif data != _expected_bits(truth, key, spec)[1]:
            problems.append(f"{name}: values differ from the ground truth (bitwise)")
    extra = sorted(set(flat) - set(wanted))
    if extra:
        problems.append(f"names not in the ground truth: {extra[:10]}")
    return problems
