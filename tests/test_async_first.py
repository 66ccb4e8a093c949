"""The snapshot an async save takes: staging memory of its own, reused from save to save.

The first ``save(blocking=False)`` copies the state into fresh staging memory (one anonymous
mapping, no huge pages: see satchel/_checkpoint/snapshot.py for why); later ones copy into the
same buffers. These tests pin what that must never change: every value copied exactly, each
array in memory of its own (the writer stores arrays sharing memory as views of one blob), the
buffers reused, and the copy independent of later in-place updates. Timing lives in
benchmarks/async_stall.py, never here. (The CUDA path, pinned memory, needs a GPU to run.)
"""

from __future__ import annotations

import gc
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from satchel import CheckpointManager
from satchel._checkpoint.layout import step_name
from satchel._checkpoint.snapshot import snapshot


def _torch_state() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(512, 1024, generator=gen)  # 2 MiB
    cplx = torch.randn(6, dtype=torch.complex64, generator=gen)
    return {
        "big": big,
        "param": torch.nn.Parameter(torch.randn(33, generator=gen)),
        "frozen": torch.nn.Parameter(torch.randn(5, generator=gen), requires_grad=False),
        "transposed": torch.randn(7, 3, generator=gen).t(),
        "strided": torch.arange(40, dtype=torch.int64)[::3],
        "bf16": torch.randn(9, generator=gen).to(torch.bfloat16),
        "f8": torch.randn(11, generator=gen).to(torch.float8_e4m3fn),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "conj": cplx.conj(),  # a conj view: the copy must hold the conjugated values
        "nested": {"list": [torch.arange(3), (torch.ones(2, 2), 7)], "s": "text"},
        "tied": big,  # the same object twice: copied once, stays tied
    }


def _numpy_state() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((512, 1024), dtype=np.float32)
    return {
        "big": big,
        "fortran": np.asfortranarray(rng.standard_normal((5, 7))),
        "strided": np.arange(40, dtype=np.int16)[::3],
        "big_endian": np.arange(13, dtype=">u4"),
        "bool": np.array([True, False]),
        "complex": rng.standard_normal(5) + 1j * rng.standard_normal(5),
        "scalar": np.array(3.0),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "record": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        "nested": [np.linspace(0, 1, 7), {"k": np.ones(3, dtype=np.uint8)}],
        "tied": big,
    }


def _leaves(x: Any, path: str = "") -> dict[str, Any]:
    """Every array in ``x`` by its path (``tied`` and ``big`` both appear)."""
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _leaves(val, f"{path}/{key}").items()}
    if isinstance(x, list | tuple):
        return {k: v for i, val in enumerate(x) for k, v in _leaves(val, f"{path}/{i}").items()}
    if isinstance(x, np.ndarray | torch.Tensor):
        return {path: x}
    return {}


def _same(a: Any, b: Any) -> bool:
    """Equal type, dtype, shape and bytes (``b`` may be a view with conj/neg bits)."""
    if type(a) is not type(b) or a.dtype != b.dtype or a.shape != b.shape:
        return False
    if isinstance(a, torch.Tensor):
        if isinstance(a, torch.nn.Parameter) and a.requires_grad != b.requires_grad:
            return False
        raw_a = a.detach().contiguous().reshape(-1).view(torch.uint8)
        raw_b = b.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
        return bool(raw_a.equal(raw_b))
    return bool(np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _own_memory(x: Any) -> tuple[int, int]:
    """(start address, length) of the memory that holds ``x`` and that the writer sees."""
    if isinstance(x, torch.Tensor):
        s = x.untyped_storage()
        return s.data_ptr(), s.nbytes()
    assert not isinstance(x.base, np.ndarray)  # its own root: no shared base array
    return x.__array_interface__["data"][0], x.nbytes


def _host(x: Any) -> np.ndarray[Any, Any]:
    if _is_tensor(x):
        t = x.detach()
        out: np.ndarray[Any, Any] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        return out
    return np.asarray(x)


def _copy_of(x: Any) -> Any:
    if isinstance(x, torch.nn.Parameter):
        return torch.nn.Parameter(x.detach().clone(), requires_grad=x.requires_grad)
    return x.clone() if _is_tensor(x) else x.copy()


def _mutate(state: dict[str, Any]) -> None:
    """Change every value of ``state`` in place, as an optimizer step would."""
    for x in {id(v): v for v in _leaves(state).values()}.values():
        if isinstance(x, torch.Tensor):
            with torch.no_grad():
                plain = x.is_contiguous() and x.dim() and not x.is_conj()
                raw = x.view(torch.uint8) if plain else None
                if x.dtype == torch.bool:
                    x.logical_not_()
                elif raw is not None and x.numel():
                    raw.bitwise_not_()
                elif x.numel():
                    x.add_(1)
        elif x.dtype == np.bool_:
            np.logical_not(x, out=x)
        elif x.size:
            flat = x.view(np.uint8) if x.flags.c_contiguous and x.ndim else None
            if flat is not None:
                np.invert(flat, out=flat)
            else:
                x[...] = np.invert(x) if x.dtype.kind in "biu" else x + 1


def test_snapshot_copies_every_value_exactly() -> None:
    for state in (_torch_state(), _numpy_state()):
        snap = snapshot(state)
        want, got = _leaves(state), _leaves(snap)
        assert list(got) == list(want)
        for path, x in want.items():
            assert _same(got[path], x), path
        assert snap["tied"] is snap["big"]  # tied weights stay tied
        assert snap["nested"] is not state["nested"]


def test_snapshot_is_unaffected_by_later_in_place_updates() -> None:
    for state in (_torch_state(), _numpy_state()):
        before = {p: _copy_of(x) for p, x in _leaves(state).items()}
        snap = snapshot(state)
        _mutate(state)
        assert not _same(_leaves(state)["/big"], before["/big"])  # the update did happen
        for path, x in _leaves(snap).items():
            assert _same(x, before[path]), path


def test_every_staged_array_has_memory_of_its_own() -> None:
    for state in (_torch_state(), _numpy_state()):
        snap = snapshot(state)
        leaves = _leaves(snap).values()
        arrays = {id(x): x for x in leaves if (x.numel() if _is_tensor(x) else x.size)}
        spans = sorted(_own_memory(x) for x in arrays.values())
        assert len(spans) == len(arrays)
        for (a, n), (b, _) in itertools.pairwise(spans):
            assert a + n <= b  # no two staged arrays overlap or share a base


def test_staging_buffers_are_reused_when_structure_matches() -> None:
    for make in (_torch_state, _numpy_state):
        first = snapshot(make())
        ptrs = {p: _own_memory(x)[0] for p, x in _leaves(first).items()}
        fresh = make()
        _mutate(fresh)
        second = snapshot(fresh, reuse=first)
        for path, x in _leaves(second).items():
            assert _same(x, _leaves(fresh)[path]), path
            if "conj" not in path:  # a conj view's copy is a plain tensor: no match to reuse
                assert x is _leaves(first)[path], path
                assert _own_memory(x)[0] == ptrs[path], path


def test_an_old_buffer_never_serves_two_arrays() -> None:
    t = torch.arange(8.0)
    first = snapshot({"a": t, "b": t})  # tied: one buffer for both places
    second = snapshot({"a": torch.zeros(8), "b": torch.ones(8)}, reuse=first)
    assert second["a"] is first["a"]
    assert second["b"] is not second["a"]
    assert second["a"].eq(0).all() and second["b"].eq(1).all()


def test_new_and_changed_arrays_get_fresh_buffers_beside_reused_ones() -> None:
    first = snapshot({"w": torch.ones(4, 4), "n": np.ones(3)})
    state = {"w": torch.full((4, 4), 2.0), "n": np.ones(4), "new": torch.arange(5)}
    second = snapshot(state, reuse=first)
    assert second["w"] is first["w"]
    assert second["n"] is not first["n"] and second["n"].shape == (4,)
    assert _same(second["new"], state["new"]) and _same(second["w"], state["w"])


def test_staged_arrays_outlive_the_rest_of_their_snapshot() -> None:
    for state in (_torch_state(), _numpy_state()):
        want = state["strided"]
        snap = snapshot(state)
        kept = snap["strided"]
        del snap
        gc.collect()
        big = [torch.ones(1 << 20) for _ in range(8)]  # memory that would reuse freed pages
        assert _same(kept, want)
        del big


def test_subclasses_and_unstageable_arrays_keep_the_plain_copy() -> None:
    class Tagged(np.ndarray):
        pass

    tagged = np.arange(6.0).view(Tagged)
    objects = np.array([1, "x"], dtype=object)
    snap = snapshot({"tagged": tagged, "objects": objects})
    assert type(snap["tagged"]) is Tagged and np.array_equal(snap["tagged"], tagged)
    assert snap["objects"] is not objects and list(snap["objects"]) == [1, "x"]


def _maps() -> list[str]:
    return Path("/proc/self/maps").read_text().splitlines()


def _vm_flags(address: int) -> list[str]:
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(h, 16) for h in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_first_snapshot_stages_into_one_mapping_without_huge_pages() -> None:
    assert sys.platform == "linux"  # the project's platform; /proc is how we look
    state: dict[str, Any] = {f"t{i}": torch.full((16,), float(i)) for i in range(3000)}
    state["big"] = torch.ones(1 << 21)  # 8 MiB: NumPy would ask huge pages for this
    state["np"] = np.ones(1 << 21, dtype=np.float32)
    before = len(_maps())
    snap = snapshot(state)
    # One anonymous mapping for all 3002 arrays (a few more lines at most: the allocator's).
    assert len(_maps()) - before <= 4
    for key in ("big", "np", "t7"):
        assert "nh" in _vm_flags(_own_memory(snap[key])[0]), key  # MADV_NOHUGEPAGE
    assert _same(snap["t7"], state["t7"]) and _same(snap["np"], state["np"])


def test_async_saves_reuse_the_first_saves_buffers(tmp_path: Path) -> None:
    state = {"w": torch.randn(256, 256), "b": torch.zeros(256)}
    with CheckpointManager(tmp_path / "run") as mgr:
        mgr.save(1, blocking=False, model=state)
        mgr.wait()
        staged = mgr._spare["model"]  # the first snapshot, kept for the next save
        ptrs = {k: v.data_ptr() for k, v in staged.items()}
        with torch.no_grad():
            state["w"].mul_(2)
        mgr.save(2, blocking=False, model=state)
        mgr.wait()
        assert {k: v.data_ptr() for k, v in mgr._spare["model"].items()} == ptrs
        assert mgr._spare["model"]["w"].equal(state["w"])


def test_spec_8_20_async_save_writes_the_values_of_the_moment_it_returned(tmp_path: Path) -> None:
    for full in (_torch_state(), _numpy_state()):
        # All but what the writer refuses or stores as another type (conj, float8, records).
        state = {k: v for k, v in full.items() if k not in ("conj", "f8", "record")}
        want = {p: _copy_of(x) for p, x in _leaves(state).items()}
        root = tmp_path / type(state["big"]).__module__.split(".")[0]
        with CheckpointManager(root) as mgr:
            mgr.save(1, blocking=False, model=state)
            _mutate(state)  # while the background thread writes
            mgr.wait()
            mgr.save(2, model=state)  # blocking, for the file size
            got = mgr.restore(1).items["model"]
        for path, x in want.items():
            assert np.array_equal(_host(_leaves(got)[path]), _host(x)), path
        # Staged arrays are separate buffers, so nothing is stored as a view of a shared blob:
        # the file is the size the blocking save of the same shapes wrote.
        sizes = [(root / step_name(s) / "model.satchel").stat().st_size for s in (1, 2)]
        assert sizes[0] == sizes[1]
