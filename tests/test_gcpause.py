"""The garbage-collector pause (issue 8.6e): main thread only, never across disk writes.

The collector is one process-wide switch. These tests pin that ``paused_gc`` leaves it alone off
the main thread (the async checkpoint writer runs under the user's training loop) and, through
an audit hook that records the collector's state whenever satchel opens a file for writing, that
no save holds the pause while it writes.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel._gcpause import paused_gc


@pytest.fixture(autouse=True)
def _collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_main_thread_pause_disables_and_restores() -> None:
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled(), "an inner pause must not end the outer one"
    assert gc.isenabled()


def test_restores_a_disabled_collector_as_disabled() -> None:
    gc.disable()
    with paused_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_is_a_no_op_off_the_main_thread() -> None:
    seen: list[bool] = []

    def work() -> None:
        with paused_gc():
            seen.append(gc.isenabled())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [True]
    assert gc.isenabled()


def test_a_worker_never_ends_the_main_threads_pause() -> None:
    """Worker pauses, main pauses, worker resumes: main's pause must still hold."""
    entered, main_paused, left = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        with paused_gc():
            entered.set()
            main_paused.wait(10)
        left.set()

    t = threading.Thread(target=work)
    t.start()
    assert entered.wait(10)
    with paused_gc():
        main_paused.set()
        assert left.wait(10)
        assert not gc.isenabled()
    t.join()
    assert gc.isenabled()


class _WriteWatch:
    """Records ``gc.isenabled()`` at each open-for-writing under ``folder`` (audit hooks stay
    installed for the process: the hook goes inert once the test is done)."""

    active: _WriteWatch | None = None
    installed = False

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)
        self.states: list[tuple[str, bool]] = []

    def __enter__(self) -> _WriteWatch:
        if not _WriteWatch.installed:
            sys.addaudithook(_WriteWatch._hook)
            _WriteWatch.installed = True
        _WriteWatch.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        _WriteWatch.active = None

    @staticmethod
    def _hook(event: str, args: tuple[Any, ...]) -> None:
        watch = _WriteWatch.active
        if watch is None or event != "open" or not args or not isinstance(args[0], str):
            return
        path, mode, flags = [*list(args), None, None][:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & 3 != 0  # O_WRONLY / O_RDWR
        )
        if writing and path.startswith(watch.folder):
            watch.states.append((path, gc.isenabled()))


def test_save_writes_with_the_collector_running(tmp_path: Path) -> None:
    with _WriteWatch(tmp_path) as watch:
        satchel.save({"w": np.arange(10), "nested": [np.ones(3)] * 3}, tmp_path / "a.satchel")
    assert watch.states, "the audit hook saw no write"
    assert all(enabled for _, enabled in watch.states), watch.states


def test_checkpoint_save_writes_with_the_collector_running(tmp_path: Path) -> None:
    manager = satchel.CheckpointManager(tmp_path / "root")
    with _WriteWatch(tmp_path) as watch:
        manager.save(1, weights={"w": np.arange(10)})
    assert watch.states, "the audit hook saw no write"
    assert all(enabled for _, enabled in watch.states), watch.states
