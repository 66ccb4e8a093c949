"""SPEC 7.1 "nothing lost": an error or a kill at any moment of a save leaves a loadable file.

Two kinds of test:

* deterministic fault injection: every I/O call of one save (``os.open``, ``os.write``,
  ``os.fsync``, ``os.close``, ``os.replace`` as ``satchel._io.atomic`` calls them) is counted,
  then each call in turn fails with ENOSPC or EIO;
* real processes: a child saves two payloads in turn and is SIGKILLed at random moments.
"""

from __future__ import annotations

import errno
import os
import random
import re
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel._io import atomic as atomic_mod

TMP_MARK = ".satchel-tmp-"


class FaultyOS:
    """Stands in for the ``os`` module inside ``satchel._io.atomic``.

    Records the hooked calls in order; the ``fail_at``-th hooked call (1-based) raises
    ``OSError(err)`` instead of running (``close`` still releases the descriptor first, as Linux
    does even when close reports an error). ``max_write`` makes writes short.
    """

    HOOKED = ("open", "write", "fsync", "close", "replace")

    def __init__(self, fail_at: int = 0, err: int = errno.EIO, max_write: int | None = None):
        self.fail_at = fail_at
        self.err = err
        self.max_write = max_write
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _call(self, name: str, *args: Any) -> Any:
        real = getattr(os, name)
        # Never keep the written buffer: holding it would pin the writer's bytearray.
        self.calls.append((name, (args[0], len(args[1])) if name == "write" else args))
        if len(self.calls) == self.fail_at:
            if name == "close":
                real(*args)
            raise OSError(self.err, os.strerror(self.err))
        return real(*args)

    def open(self, *args: Any) -> Any:
        return self._call("open", *args)

    def write(self, fd: int, data: Any) -> Any:
        if self.max_write is not None:
            data = memoryview(data)[: self.max_write]
        return self._call("write", fd, data)

    def fsync(self, fd: int) -> Any:
        return self._call("fsync", fd)

    def close(self, fd: int) -> Any:
        return self._call("close", fd)

    def replace(self, src: Any, dst: Any) -> Any:
        return self._call("replace", src, dst)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


def payload(tag: str) -> dict[str, Any]:
    """Two distinct checkpoints; the big tensor (> 1 MiB) is written straight from its memory."""
    rng = np.random.default_rng(1 if tag == "old" else 2)
    return {
        "tag": tag,
        "w": rng.standard_normal(300_000),  # 2.4 MB, one direct write
        "b": rng.standard_normal(1000).astype(np.float32),
        "steps": [np.int64(3), np.arange(7, dtype=np.int16)],
    }


def assert_payload(got: Any, tag: str) -> None:
    want = payload(tag)
    assert got["tag"] == tag
    assert got["w"].tobytes() == want["w"].tobytes()
    assert got["b"].tobytes() == want["b"].tobytes()
    assert got["steps"][0] == want["steps"][0]
    assert got["steps"][1].tobytes() == want["steps"][1].tobytes()


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TMP_MARK in p.name)


def count_calls(monkeypatch: pytest.MonkeyPatch, folder: Path, **kw: Any) -> FaultyOS:
    spy = FaultyOS(**kw)
    with monkeypatch.context() as m:
        m.setattr(atomic_mod, "os", spy)
        satchel.save(payload("new"), folder / "count.satchel")
    (folder / "count.satchel").unlink()
    return spy


# -- deterministic fault injection ---------------------------------------------------------------
def test_one_save_makes_the_expected_calls_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 7.1: temp file in the folder (O_EXCL, recognisable name), fsync, replace, fsync dir."""
    spy = count_calls(monkeypatch, tmp_path)
    names = spy.names
    assert set(names) == set(FaultyOS.HOOKED), names
    assert names.count("replace") == 1
    assert names[0] == "open"
    tmp, flags, *_ = spy.calls[0][1]
    assert Path(tmp).parent == tmp_path
    assert re.fullmatch(r"\.count\.satchel\.satchel-tmp-\d+-[0-9a-f]+", Path(tmp).name), tmp
    assert flags & os.O_EXCL and flags & os.O_CREAT
    i_replace = names.index("replace")
    assert spy.calls[i_replace][1] == (tmp, tmp_path / "count.satchel")
    before = names[:i_replace]
    assert before[-2:] == ["fsync", "close"], before  # data made durable, then closed, then rename
    fd = spy.calls[i_replace - 1][1][0]
    assert all(args[0] == fd for n, args in spy.calls[1:i_replace] if n in ("write", "fsync"))
    after = spy.calls[i_replace + 1 :]
    assert [n for n, _ in after] == ["open", "fsync", "close"]  # the folder is fsynced
    assert Path(after[0][1][0]) == tmp_path


def _faults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, max_write: int | None
) -> tuple[int, list[str]]:
    """Fail each I/O call of a save in turn; returns K and the problems found."""
    k_total = len(count_calls(monkeypatch, tmp_path, max_write=max_write).calls)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = folder / "model.satchel"
    satchel.save(payload("old"), path)
    old_bytes = path.read_bytes()
    problems = []
    for k in range(1, k_total + 1):
        path.write_bytes(old_bytes)
        spy = FaultyOS(fail_at=k, err=err, max_write=max_write)
        with monkeypatch.context() as m:
            m.setattr(atomic_mod, "os", spy)
            try:
                satchel.save(payload("new"), path)
            except OSError as e:
                raised: OSError | None = e
            else:
                raised = None
        where = f"k={k}/{k_total} ({spy.names[k - 1]})"
        if raised is None or raised.errno != err:
            problems.append(
                f"{where}: expected OSError errno {err} to reach the caller: {raised!r}"
            )
        committed = "replace" in spy.names[: k - 1]
        if temp_files(folder):
            problems.append(f"{where}: temp files left: {temp_files(folder)}")
        if sorted(p.name for p in folder.iterdir()) != ["model.satchel"]:
            problems.append(f"{where}: folder holds {sorted(os.listdir(folder))}")
        if not committed and path.read_bytes() != old_bytes:
            problems.append(f"{where}: previous file changed before the rename")
        if committed:
            # The rename happened; the failure is in the folder fsync. The file must be the
            # complete new one (never a mix), and the caller still hears about the error.
            try:
                assert_payload(satchel.load(path), "new")
            except Exception as e:
                problems.append(f"{where}: after the rename the file is not the new one: {e!r}")
        else:
            assert_payload(satchel.load(path), "old")
    return k_total, problems


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("max_write", [None, 512 * 1024], ids=["full-writes", "short-writes"])
def test_failure_at_every_io_call_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, max_write: int | None
) -> None:
    k_total, problems = _faults(tmp_path, monkeypatch, err, max_write)
    assert k_total >= 8  # open, writes, fsync, close, replace, open dir, fsync dir, close dir
    assert not problems, "\n".join(problems)


def test_failure_without_previous_file_leaves_folder_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = count_calls(monkeypatch, tmp_path)
    i_replace = spy.names.index("replace")
    for k in range(1, i_replace + 2):  # every call up to and including the rename
        folder = tmp_path / f"fresh{k}"
        folder.mkdir()
        with monkeypatch.context() as m:
            m.setattr(atomic_mod, "os", FaultyOS(fail_at=k, err=errno.ENOSPC))
            with pytest.raises(OSError) as ei:
                satchel.save(payload("new"), folder / "x.satchel")
        assert ei.value.errno == errno.ENOSPC
        assert list(folder.iterdir()) == [], k


def test_short_writes_still_write_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FaultyOS(max_write=4099)
    with monkeypatch.context() as m:
        m.setattr(atomic_mod, "os", spy)
        satchel.save(payload("new"), tmp_path / "short.satchel")
    assert spy.names.count("write") > 500
    satchel.save(payload("new"), tmp_path / "ref.satchel")
    assert (tmp_path / "short.satchel").read_bytes() == (tmp_path / "ref.satchel").read_bytes()
    assert_payload(satchel.load(tmp_path / "short.satchel"), "new")


def test_interrupt_during_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only OSError: a KeyboardInterrupt mid-write also removes the temp file."""
    path = tmp_path / "model.satchel"
    satchel.save(payload("old"), path)
    old_bytes = path.read_bytes()

    class Interrupting(FaultyOS):
        def write(self, fd: int, data: Any) -> Any:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(atomic_mod, "os", Interrupting())
        with pytest.raises(KeyboardInterrupt):
            satchel.save(payload("new"), path)
    assert path.read_bytes() == old_bytes
    assert temp_files(tmp_path) == []


# -- real processes killed at random moments ----------------------------------------------------
CHILD = r"""
import sys
import numpy as np
import satchel

def payload(tag):
    rng = np.random.default_rng(11 if tag == "A" else 22)
    if tag == "A":
        return {"tag": "A", "w": rng.standard_normal(400_000), "n": [1, 2.5, None]}
    return {
        "tag": "B",
        "w": rng.standard_normal((700, 1024)).astype(np.float32),
        "extra": (np.arange(1000, dtype=np.int16), b"tail"),
    }

if __name__ == "__main__":
    path = sys.argv[1]
    a, b = payload("A"), payload("B")
    print("ready", flush=True)
    i = 0
    while True:
        satchel.save(a if i % 2 == 0 else b, path)
        i += 1
"""


def _expected(tag: str) -> Any:
    scope: dict[str, Any] = {"__name__": "payloads"}
    exec(CHILD, scope)
    return scope["payload"](tag)


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, np.ndarray):
        return bool(got.dtype == want.dtype and got.tobytes() == want.tobytes())
    if isinstance(want, dict):
        return list(got) == list(want) and all(_same(got[k], want[k]) for k in want)
    if isinstance(want, (list, tuple)):
        return type(got) is type(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    return bool(type(got) is type(want) and got == want)


def test_sigkill_at_random_moments_never_breaks_the_file(tmp_path: Path) -> None:
    kills = 30
    rng = random.Random(20240607)
    expected = {"A": _expected("A"), "B": _expected("B")}
    path = tmp_path / "ckpt.satchel"
    env = dict(os.environ)
    src = str(Path(satchel.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    outcomes: Counter[str] = Counter()
    stale = 0
    deadline = time.monotonic() + 120  # a bound for a loaded machine; ~10 s when idle
    for i in range(kills):
        assert time.monotonic() < deadline, f"took too long after {i} kills: {outcomes}"
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "child never became ready"
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line == b"ready\n", (line, proc.stderr.read())  # type: ignore[union-attr]
            time.sleep(rng.uniform(0.0, 0.12))
        finally:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        assert proc.returncode == -9, proc.returncode  # it was still saving when killed
        if not path.exists():
            assert outcomes["A"] + outcomes["B"] == 0, "a committed file disappeared"
            outcomes["absent"] += 1
        else:
            got = satchel.load(path)  # never an error: verified, complete, one of the two
            tag = got["tag"]
            assert tag in expected, tag
            assert _same(got, expected[tag]), f"kill {i}: payload {tag} differs"
            outcomes[tag] += 1
        for name in temp_files(tmp_path):  # a killed process may leave its temp file behind
            stale += 1
            (tmp_path / name).unlink()
    assert sum(outcomes.values()) == kills
    assert outcomes["A"] + outcomes["B"] > 0
    print(f"\nSIGKILL campaign: {kills} kills, outcomes {dict(outcomes)}, stale temps {stale}")


# -- errors at the edges -------------------------------------------------------------------------
def test_save_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(satchel.SatchelFileNotFoundError) as ei:
        satchel.save({"w": np.ones(3)}, tmp_path / "nope" / "x.satchel")
    assert isinstance(ei.value, FileNotFoundError)
    assert "nope" in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(satchel.SatchelFileNotFoundError) as ei:
        satchel.load(tmp_path / "missing.satchel")
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(satchel.SatchelFileNotFoundError):
        satchel.open(tmp_path / "missing.satchel")


def test_load_directory_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(satchel.FormatError) as ei:
        satchel.load(tmp_path / "adir")
    assert "adir" in str(ei.value)
    with pytest.raises(satchel.FormatError):
        satchel.open(tmp_path / "adir")
