"""The writer's two orders (hash-then-write, and data-first for large saves) give one file."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import satchel
from satchel._io import writer


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    # 72 MiB in a few large tensors plus small ones: above the data-first threshold.
    return {
        "big": rng.standard_normal((9, 2048, 1024), dtype=np.float32),
        "mid": rng.integers(0, 255, size=(6 << 20,), dtype=np.uint8),
        "small": np.arange(10, dtype=np.int64),
        "scalar": np.float64(2.5),
        "empty": np.zeros((0, 4), dtype=np.float16),
    }


def test_spec_7_3_data_first_and_sequential_orders_write_identical_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state()
    assert sum(a.nbytes for a in state.values()) >= writer._OVERLAP_MIN
    satchel.save(state, tmp_path / "overlapped")
    monkeypatch.setattr(writer, "_OVERLAP_MIN", 1 << 62)
    satchel.save(state, tmp_path / "sequential")
    a = (tmp_path / "overlapped").read_bytes()
    b = (tmp_path / "sequential").read_bytes()
    assert a == b
    back = satchel.load(tmp_path / "overlapped")
    for k, v in state.items():
        assert np.array_equal(np.asarray(back[k]), np.asarray(v))
    assert satchel.verify(tmp_path / "overlapped").ok


def test_data_first_reports_progress_to_the_end(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    satchel.save(_state(), tmp_path / "p", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] == (tmp_path / "p").stat().st_size
    assert all(d1 <= d2 for (d1, _), (d2, _) in itertools.pairwise(seen))


@pytest.mark.parametrize("fail_at", [1, 2, 3])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_data_first_save_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int, code: int
) -> None:
    target = tmp_path / "ckpt"
    satchel.save({"old": np.arange(5)}, target)
    before = target.read_bytes()
    calls = 0
    real = os.pwrite

    def flaky(fd: int, data: object, pos: int) -> int:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise OSError(code, os.strerror(code))
        return real(fd, data, pos)  # type: ignore[arg-type]

    monkeypatch.setattr(writer.os, "pwrite", flaky)
    with pytest.raises(OSError) as info:
        satchel.save(_state(), target)
    assert info.value.errno == code
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
