"""The whole-column paths for many tensors give what the general paths give.

``load`` of a state dict that satchel wrote skips the per-tensor records, storages and refs
(``_read/bulk.py``); ``save`` of a plain dict of torch tensors describes them over whole
lists (``describe_plain``). Each test compares the fast path with the general one on the same
input (the general path is reached by asking for something only it does: a progress callback,
an OrderedDict), and checks the guarantees the fast path must keep: checksums before data,
the same error naming the same tensor, one allocation per tensor, sharing still found.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xxhash

import satchel
from satchel._format.header import Entry, render_entries
from satchel._format.manifest import encode_manifest, parse_manifest
from satchel._plan import plan_save
from satchel.dtypes import get as dtype

MANY = 1200  # above COMPACT_FROM: a version 2 file


def state(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mixed dtypes and shapes, 0-d tensors included, in an order that is not data order."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for i in range(n):
        kind = i % 5
        if kind == 0:
            out[f"w.{i}"] = torch.randn(3, 4, generator=g)
        elif kind == 1:
            out[f"i.{i}"] = torch.randint(-9, 9, (5,), generator=g, dtype=torch.int16)
        elif kind == 2:
            out[f"d.{i}"] = torch.randn(2, generator=g, dtype=torch.float64)
        elif kind == 3:
            out[f"b.{i}"] = torch.randn(7, generator=g) > 0
        else:
            out[f"s.{i}"] = torch.tensor(float(i))
    return out


def general_load(path: Path, **kw: Any) -> Any:
    """``load`` through the general path (a progress callback takes it)."""
    return satchel.load(path, progress=lambda done, total: None, **kw)


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for k, x in a.items():
        y = b[k]
        assert type(x) is type(y), k
        assert x.dtype == y.dtype and tuple(x.shape) == tuple(y.shape), k
        assert bool((torch.as_tensor(x) == torch.as_tensor(y)).all()), k


def storage_starts(d: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    return [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in d.values()]


@pytest.mark.parametrize("n", [40, MANY])
def test_state_dict_load_takes_the_column_path_and_matches_the_general_one(
    tmp_path: Path, n: int
) -> None:
    src = state(n)
    p = tmp_path / "s.satchel"
    satchel.save(src, p)
    with satchel.open(p) as f:
        fast = f.load()
        assert f._names is None  # no ref was built: the column path ran
    slow = general_load(p)
    assert_same(fast, slow)
    assert_same(fast, src)
    # One allocation per tensor, exactly its bytes, as the general path gives.
    starts = storage_starts(fast)
    assert len(set(starts)) == n
    assert [nb for _, nb in starts] == [t.nbytes for t in fast.values()]


def test_loaded_state_saves_back_to_the_same_bytes(tmp_path: Path) -> None:
    # A tensor sharing memory with another would be saved as a view of one base: the bytes
    # would differ. Both frameworks.
    for name, src in [
        ("torch", state(MANY)),
        ("numpy", {k: v.numpy() for k, v in state(MANY).items()}),
    ]:
        p, q = tmp_path / f"{name}.a", tmp_path / f"{name}.b"
        satchel.save(src, p)
        back = satchel.load(p)
        assert all(isinstance(v, np.ndarray) == (name == "numpy") for v in back.values())
        satchel.save(back, q)
        assert p.read_bytes() == q.read_bytes(), name


def corrupt(path: Path, tensor: str) -> None:
    with satchel.open(path) as f:
        entry = f._tree.root  # builds the refs: where the tensor's bytes are
        ref = entry[tensor]
        start = ref.storage._region[1]
    n = int.from_bytes(path.read_bytes()[:8], "little")
    raw = bytearray(path.read_bytes())
    raw[8 + n + start] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_corrupt_tensor_raises_the_general_paths_error_before_any_data(
    tmp_path: Path,
) -> None:
    src = state(MANY)
    p = tmp_path / "s.satchel"
    satchel.save(src, p)
    keys = list(src)
    # Two bad tensors: the first in the structure's order is named, by both paths.
    corrupt(p, keys[700])
    corrupt(p, keys[300])
    with pytest.raises(satchel.IntegrityError) as fast:
        satchel.load(p)
    with pytest.raises(satchel.IntegrityError) as slow:
        general_load(p)
    assert str(fast.value) == str(slow.value)
    assert fast.value.field == keys[300] == slow.value.field
    # verify=False reads it anyway, the flipped byte included.
    got = satchel.load(p, verify=False)
    assert not bool((got[keys[300]] == src[keys[300]]).all())
    assert bool((got[keys[0]] == src[keys[0]]).all())


def test_open_returns_the_arrays_load_made(tmp_path: Path) -> None:
    p = tmp_path / "s.satchel"
    satchel.save(state(MANY), p)
    with satchel.open(p) as f:
        first = f.load()
        key = list(first)[17]
        assert f[key] is first[key]
        again = f.load()
        assert all(again[k] is first[k] for k in first)


def test_parameters_numpy_and_casts_match_the_general_path(tmp_path: Path) -> None:
    params = {
        f"p.{i}": torch.nn.Parameter(torch.randn(3), requires_grad=False) for i in range(MANY)
    }
    p = tmp_path / "p.satchel"
    satchel.save(params, p)
    fast = satchel.load(p)
    assert_same(fast, general_load(p))
    assert all(type(v) is torch.nn.Parameter and not v.requires_grad for v in fast.values())
    q = tmp_path / "q.satchel"
    satchel.save(state(MANY), q)
    assert_same(satchel.load(q, framework="numpy"), general_load(q, framework="numpy"))
    half = satchel.load(q, dtype="float16")  # a cast: the general path
    assert half["w.0"].dtype == torch.float16


def test_files_the_column_path_does_not_take_load_as_before(tmp_path: Path) -> None:
    cases: dict[str, Any] = {
        # bfloat16: torch.from_numpy cannot take it
        "bf16": {f"x.{i}": torch.randn(2, dtype=torch.bfloat16) for i in range(MANY)},
        # a tied tensor: one stored tensor, two keys, one object
        "tied": {**{f"x.{i}": torch.randn(2) for i in range(MANY)}},
        # mixed frameworks in one file
        "mixed": {f"x.{i}": (torch.randn(2) if i % 2 else np.ones(2)) for i in range(MANY)},
    }
    cases["tied"]["again"] = cases["tied"]["x.3"]
    for name, src in cases.items():
        p = tmp_path / f"{name}.satchel"
        satchel.save(src, p)
        got = satchel.load(p)
        assert list(got) == list(src), name
        for k, v in src.items():
            assert bool((torch.as_tensor(got[k]).float() == torch.as_tensor(v).float()).all())
    got = satchel.load(tmp_path / "tied.satchel")
    assert got["again"] is got["x.3"]


def test_plain_tensor_plans_equal_the_general_plans() -> None:
    src = state(MANY)
    fast = plan_save(src)
    slow = plan_save(OrderedDict(src))  # not a plain dict: the per-tensor path
    assert fast.entries == slow.entries
    assert fast.leaves == slow.leaves
    assert [(s.name, s.dtype, s.shape) for s in fast.stored] == [
        (s.name, s.dtype, s.shape) for s in slow.stored
    ]
    assert all(
        a.data.tobytes() == b.data.tobytes() for a, b in zip(fast.stored, slow.stored, strict=True)
    )


def test_tensors_sharing_an_allocation_are_still_stored_once(tmp_path: Path) -> None:
    base = torch.arange(256, dtype=torch.float32)
    # Disjoint contiguous slices of one allocation, and a copy-free alias over NumPy memory
    # starting at the same address as another tensor.
    arr = np.arange(40, dtype=np.float32)
    src = {
        "a": base[:64],
        "b": base[64:128],
        "c": torch.from_numpy(arr[:8]),
        "d": torch.from_numpy(arr[:16]),
        **{f"x.{i}": torch.randn(2) for i in range(MANY)},
    }
    fast = plan_save(src)
    slow = plan_save(OrderedDict(src))
    assert fast.entries == slow.entries and fast.leaves == slow.leaves
    assert any(leaf.strides is not None for leaf in fast.leaves)  # a and b: views of a base
    p = tmp_path / "s.satchel"
    satchel.save(src, p)
    got = satchel.load(p)
    assert got["a"].untyped_storage().data_ptr() == got["b"].untyped_storage().data_ptr()
    assert bool((torch.cat([got["a"], got["b"]]) == base[:128]).all())


def test_tensors_the_plain_describe_refuses_are_saved_as_before(tmp_path: Path) -> None:
    grad = torch.randn(3, requires_grad=True)
    src = {
        "t": torch.randn(4, 3).t(),  # not contiguous
        "g": grad,  # requires grad
        "e": torch.empty(0),  # empty
        "z": torch.zeros(3, dtype=torch.complex128),  # stored as U8 bytes (SPEC 2.4)
        **{f"x.{i}": torch.randn(2) for i in range(MANY)},
    }
    fast = plan_save(src)
    slow = plan_save(OrderedDict(src))
    assert fast.entries == slow.entries and fast.leaves == slow.leaves
    p = tmp_path / "s.satchel"
    satchel.save(src, p)
    got = satchel.load(p)
    for k in ("t", "g", "z"):
        assert bool((got[k] == src[k].detach()).all()), k
    assert got["e"].shape == (0,)


def test_rendered_entries_are_what_json_dumps_writes() -> None:
    names = ["plain", 'q"uote', "back\\slash", "ünï", "tab\t", "emoji\U0001f600"]
    entries = [
        Entry(name, dtype("float32" if i % 2 else "int16"), (i, 2, 3)[: i % 4], 10 * i, 10 * i)
        for i, name in enumerate(names)
    ]
    want = json.dumps(
        {
            e.name: {
                "dtype": e.dtype.wire,
                "shape": list(e.shape),
                "data_offsets": [e.start, e.end],
            }
            for e in entries
        },
        separators=(",", ":"),
        ensure_ascii=True,
    )
    assert "{" + render_entries(entries) + "}" == want
    assert render_entries([]) == ""


def test_column_manifests_build_equal_records(tmp_path: Path) -> None:
    p = tmp_path / "s.satchel"
    satchel.save(state(MANY), p)
    n = int.from_bytes(p.read_bytes()[:8], "little")
    header = json.loads(p.read_bytes()[8 : 8 + n])
    m = parse_manifest(header["__metadata__"]["satchel"], where="x")
    assert m.columns is not None  # plain: records not built yet
    again = parse_manifest(encode_manifest(m), where="x")
    assert again == m and again.stored == m.stored and again.leaves == m.leaves
    assert list(m.stored) == m.columns.names


def test_copy_of_a_written_file_loads_identically(tmp_path: Path) -> None:
    # mmap=False reads the data into memory: the column path works on it too.
    p = tmp_path / "s.satchel"
    satchel.save(state(MANY), p)
    q = tmp_path / "copy.satchel"
    shutil.copyfile(p, q)
    assert_same(satchel.load(q, mmap=False), general_load(p))


def test_sharded_state_dict_loads_by_columns_like_the_general_path(tmp_path: Path) -> None:
    # A satchel shard folder of a plain state dict: each shard's bulk path, merged in the
    # index's key order; the general path (a progress callback) gives the same tensors.
    folder = tmp_path / "shards"
    s = state(40)
    satchel.save(s, folder, max_shard_size=200)
    assert len(list(folder.glob("*.safetensors"))) > 2
    for verify in (True, False):
        fast = satchel.load(folder, verify=verify)
        assert_same(fast, general_load(folder, verify=verify))
        assert_same(fast, s)
    # Each tensor keeps its own storage, as on the general path.
    fast = satchel.load(folder)
    assert len({t.untyped_storage().data_ptr() for t in fast.values()}) == len(fast)


def test_sharded_column_path_checks_bytes_and_shards_as_the_general_one(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    satchel.save(state(40), folder, max_shard_size=200)
    shard = sorted(folder.glob("*.safetensors"))[1]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF  # the last data byte of this shard's last tensor
    shard.write_bytes(bytes(raw))
    with pytest.raises(satchel.IntegrityError) as fast:
        satchel.load(folder)
    with pytest.raises(satchel.IntegrityError) as slow:
        general_load(folder)
    assert fast.value.field == slow.value.field
    assert satchel.load(folder, verify=False).keys() == state(40).keys()
    # A shard from another save with the same names: refused before any data, verify or not.
    other = tmp_path / "other"
    satchel.save(state(40, seed=1), other, max_shard_size=200)
    shutil.copyfile(other / shard.name, shard)
    for verify in (True, False):
        with pytest.raises(satchel.IntegrityError, match="changed since"):
            satchel.load(folder, verify=verify)


def test_sharded_shard_keyed_unlike_its_stored_names_takes_the_general_path(
    tmp_path: Path,
) -> None:
    # A valid shard whose state-dict key is not its stored tensor's name (satchel's writer
    # never does this): the index's structure still decides the keys, as on the general path.
    folder = tmp_path / "shards"
    s = state(10)
    satchel.save(s, folder, max_shard_size=200)
    shard = sorted(folder.glob("*.safetensors"))[0]
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header["__metadata__"]
    manifest = json.loads(meta["satchel"])
    key = manifest["root"]["$dict"][0][0]
    manifest["root"]["$dict"][0][0] = key + ".renamed"
    meta["satchel"] = json.dumps(manifest, separators=(",", ":"))
    meta["satchel.xxh3"] = xxhash.xxh3_64_hexdigest(meta["satchel"].encode())
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 64)
    shard.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    for verify in (True, False):
        assert_same(satchel.load(folder, verify=verify), s)
