"""The save plan is data (issue: consolidation): planning returns a frozen value that can be
inspected, the header is a pure function of the plan and its digests, and the writer only
executes the plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import satchel
from satchel._io.writer import write_plan
from satchel._plan import Plan, digests, header_len, plan_save, render_header


def _state() -> dict[str, object]:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    return {
        "w": w,
        "tied": w,  # the same object: stored once
        "view": w[1:],  # a view of the same allocation: stored once with the base
        "b": np.arange(3, dtype=np.float64),
        "n": np.int8(5),
        "epoch": 3,
    }


def test_plan_is_frozen_data_without_callables() -> None:
    plan = plan_save(_state(), metadata={"k": "v"})
    assert isinstance(plan, Plan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.metadata = {}  # type: ignore[misc]
    for f in dataclasses.fields(plan):
        assert not callable(getattr(plan, f.name)), f.name


def test_plan_entries_tile_the_data_section_and_match_stored() -> None:
    plan = plan_save(_state())
    pos = 0
    for entry, stored in zip(plan.entries, plan.stored, strict=True):
        assert entry.name == stored.name
        assert entry.start == pos  # contiguous, no holes (SPEC 2.6)
        assert entry.end - entry.start == stored.data.nbytes
        assert entry.start % stored.dtype.itemsize == 0  # aligned (SPEC 2.2)
        pos = entry.end
    assert plan.data_len == pos == sum(s.data.nbytes for s in plan.stored)
    # w, tied and view share one stored tensor; b and n are their own.
    assert len(plan.stored) == 3
    assert {leaf.data for leaf in plan.leaves} == {s.name for s in plan.stored}
    assert [leaf.shape for leaf in plan.leaves] == [(3, 4), (2, 4), (3,), ()]


def test_plan_keeps_the_users_bytes_without_copying() -> None:
    w = np.arange(1 << 16, dtype=np.float32)
    plan = plan_save({"w": w})
    assert np.shares_memory(plan.stored[0].data, w)


def test_render_header_is_a_pure_function_of_plan_and_digests() -> None:
    plan = plan_save(_state())
    d = digests(plan)
    assert render_header(plan, d) == render_header(plan, list(d))
    assert len(render_header(plan, d)) == header_len(plan)  # fixed-width digests
    other = ["f" * 16] * len(d)
    assert render_header(plan, other) != render_header(plan, d)
    assert len(render_header(plan, other)) == header_len(plan)
    assert header_len(plan) % 64 == 0  # SPEC 1.3: data starts on a 64-byte boundary


def test_writer_executes_the_plan_byte_for_byte(tmp_path: Path) -> None:
    plan = plan_save(_state())
    out = tmp_path / "f.satchel"
    written = write_plan(plan, out)
    raw = out.read_bytes()
    head = render_header(plan, digests(plan))
    assert raw[: len(head)] == head
    assert written.size == len(raw) == header_len(plan) + plan.data_len
    for entry, stored in zip(plan.entries, plan.stored, strict=True):
        start = len(head) + entry.start
        assert raw[start : start + entry.end - entry.start] == stored.data.tobytes()
    back = satchel.load(out)
    assert back["epoch"] == 3 and back["tied"] is back["w"]
