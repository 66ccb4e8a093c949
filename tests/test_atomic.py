"""SPEC 7.1 "nothing lost": an error or a kill at any moment of a save leaves a loadable file.

Two kinds of test:

* deterministic fault injection: every I/O call of one save (``os.open``, ``os.write``,
  ``os.fsync``, ``os.close``, ``os.replace`` as ``satchel._io.atomic`` calls them) is counted,
  then each call in turn fails with ENOSPC or EIO;
* real processes: a child saves two payloads in turn and is SIGKILLed at random moments.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import select
import shutil
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
from satchel._io.atomic import stale_temps

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
    # Short (item 14): the final name is not part of it, so any name the file system allows works.
    assert re.fullmatch(rf"\.satchel-tmp-{os.getpid()}-[0-9a-f]{{8}}", Path(tmp).name), tmp
    assert flags & os.O_EXCL and flags & os.O_CREAT
    i_replace = names.index("replace")
    assert spy.calls[i_replace][1] == (tmp, tmp_path / "count.satchel")
    before = names[:i_replace]
    assert before[-1] == "fsync", before  # data made durable, then the rename
    fd = spy.calls[i_replace - 1][1][0]
    assert all(args[0] == fd for n, args in spy.calls[1:i_replace] if n in ("write", "fsync"))
    after = spy.calls[i_replace + 1 :]
    # Closed (releasing its flock, SPEC 7.3) only once renamed; then the folder is fsynced.
    assert [n for n, _ in after] == ["close", "open", "fsync", "close"]
    assert after[0][1] == (fd,)
    assert Path(after[1][1][0]) == tmp_path


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


# -- the longest names (item 14) -----------------------------------------------------------------
LONGEST = ["n" * 251 + ".bin", "é" * 127 + "x"]  # 255 bytes each, the usual NAME_MAX


@pytest.mark.parametrize("name", LONGEST, ids=["ascii", "utf8"])
def test_spec_7_1_every_name_the_file_system_allows_works(tmp_path: Path, name: str) -> None:
    assert len(name.encode()) == 255
    target = tmp_path / name
    satchel.save({"w": np.arange(5)}, target)
    satchel.save({"w": np.arange(6)}, target)  # replacing works too
    assert satchel.load(target)["w"].tolist() == list(range(6))
    for to in ("npz", "torch", "oneflow"):
        folder = tmp_path / to
        folder.mkdir()
        satchel.convert(target, folder / name, to=to)
        satchel.convert(target, folder / name, to=to)
        assert satchel.load(folder / name)["w"].tolist() == list(range(6)), to
        assert [p.name for p in folder.iterdir()] == [name]
    assert temp_files(tmp_path) == []


# -- temp files of killed writers (item 13) ------------------------------------------------------
def spawn(code: str, *args: str | Path) -> subprocess.Popen[bytes]:
    """A child python running ``code``; it prints ``ready`` once it holds what it should."""
    env = dict(os.environ)
    src = str(Path(satchel.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "child never became ready"
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line == b"ready\n", (line, proc.stderr.read())  # type: ignore[union-attr]
    return proc


def finish(proc: subprocess.Popen[bytes], *, kill: bool) -> int:
    if kill:
        proc.kill()
    else:
        proc.stdin.close()  # type: ignore[union-attr]
    code = proc.wait(timeout=60)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()
    return code


def size(path: Path) -> int:
    """The size of ``path``, 0 once it is gone (renamed into place by its writer)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


BIG_SAVER = r"""
import sys
import numpy as np
import satchel

big = np.ones(25_000_000)  # 200 MB
print("ready", flush=True)
while True:
    satchel.save({"w": big}, sys.argv[1])
"""

LIVE_WRITER = r"""
import os, sys
from pathlib import Path
from satchel._io.atomic import atomic_file

with atomic_file(Path(sys.argv[1])) as fd:
    os.write(fd, b"half a file")
    print("ready", flush=True)
    sys.stdin.read()  # writes until the test closes our stdin
"""

LOCK_HOLDER = r"""
import fcntl, os, sys

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.read()
"""


def test_spec_7_3_next_save_removes_the_temp_of_a_killed_save(tmp_path: Path) -> None:
    proc = spawn(BIG_SAVER, tmp_path / "big.satchel")
    try:
        deadline = time.monotonic() + 60
        while not any(size(tmp_path / n) > 8 << 20 for n in temp_files(tmp_path)):
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.005)
    finally:
        assert finish(proc, kill=True) == -9
    left = temp_files(tmp_path)
    assert len(left) == 1, left
    assert re.fullmatch(rf"\.satchel-tmp-{proc.pid}-[0-9a-f]{{8}}", left[0])
    assert stale_temps(tmp_path) == [tmp_path / left[0]]
    satchel.save({"x": np.arange(3)}, tmp_path / "other.satchel")
    assert temp_files(tmp_path) == []
    assert stale_temps(tmp_path) == []


def test_spec_7_3_a_live_writers_temp_is_kept(tmp_path: Path) -> None:
    proc = spawn(LIVE_WRITER, tmp_path / "slow.satchel")
    try:
        (theirs,) = temp_files(tmp_path)
        time.sleep(0.05)  # their temp is now older than our save: only liveness protects it
        assert stale_temps(tmp_path) == []
        satchel.save({"x": np.arange(3)}, tmp_path / "other.satchel")
        assert temp_files(tmp_path) == [theirs]
    finally:
        assert finish(proc, kill=False) == 0
    assert (tmp_path / "slow.satchel").read_bytes() == b"half a file"  # it committed fine
    assert temp_files(tmp_path) == []


def test_spec_7_3_a_locked_temp_is_kept_even_if_its_pid_looks_dead(tmp_path: Path) -> None:
    """The pid in a name may belong to another pid namespace (a container sharing the folder):
    the writer's flock on its temp file is what protects it."""
    temp = tmp_path / f".satchel-tmp-{dead_pid()}-0123abcd"
    proc = spawn(LOCK_HOLDER, temp)
    try:
        time.sleep(0.05)
        satchel.save({"x": np.arange(3)}, tmp_path / "a.satchel")
        assert temp.exists()
        assert stale_temps(tmp_path) == []
    finally:
        finish(proc, kill=False)
    satchel.save({"x": np.arange(3)}, tmp_path / "a.satchel")  # the lock is gone now
    assert not temp.exists()


def test_spec_7_3_only_our_dead_stale_temp_files_are_removed(tmp_path: Path) -> None:
    dead = dead_pid()
    past = time.time() - 60
    removed = [
        f".satchel-tmp-{dead}-0123abcd",
        f".model.satchel.satchel-tmp-{dead}-89abcdef",  # an older satchel's name
    ]
    kept = [
        ".satchel-tmp-notes",
        f"model.satchel-tmp-{dead}-0123abcd",  # no leading dot: not a name satchel makes
        f".satchel-tmp-{dead}-0123abcd.bak",
        f".satchel-tmp-{os.getpid()}-0123abcd",  # this process is alive (another thread?)
    ]
    for name in removed + kept:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (past, past))
    newer = tmp_path / f".satchel-tmp-{dead}-feedbeef"  # newer than the save that cleans
    newer.write_bytes(b"x")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    folder = tmp_path / f".satchel-tmp-{dead}-00000000"  # a folder: never ours to remove
    folder.mkdir()
    os.symlink(tmp_path / kept[0], tmp_path / f".satchel-tmp-{dead}-11111111")
    os.mkfifo(tmp_path / f".satchel-tmp-{dead}-22222222")  # must not block the cleaner
    assert stale_temps(tmp_path) == sorted(tmp_path / n for n in removed)
    satchel.save({"x": np.arange(3)}, tmp_path / "x.satchel")
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(removed)
    assert set(kept) | {newer.name, folder.name, "x.satchel"} <= left
    assert stale_temps(tmp_path) == []


def test_verify_warns_about_stale_temps(tmp_path: Path) -> None:
    target = tmp_path / "m.satchel"
    satchel.save({"x": np.arange(3)}, target)
    stale = tmp_path / f".satchel-tmp-{dead_pid()}-0123abcd"
    stale.write_bytes(b"half")
    for where in (target, tmp_path):
        report = satchel.verify(where)
        assert [w.where for w in report.warnings] == [str(stale)], where
        assert "killed" in report.warnings[0].message
    assert satchel.verify(target).ok  # a warning, not a problem with the file
    env = {**os.environ, "PYTHONPATH": str(Path(satchel.__file__).resolve().parents[1])}
    r = subprocess.run(
        [sys.executable, "-m", "satchel", "verify", str(target)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stdout and stale.name in r.stdout, r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "satchel", "verify", str(target), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    doc = json.loads(r.stdout)
    assert [w["where"] for w in doc["warnings"]] == [str(stale)]


# -- folders replaced by convert(to="oneflow") (item 16) -----------------------------------------
def test_oneflow_folder_is_put_back_when_the_new_one_cannot_take_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second rename fails for real: the finished temp folder is removed just before it, as
    a concurrent cleaner of temp entries would. The one hook is on ``os.rename`` to time that."""
    old_src, new_src = tmp_path / "old.satchel", tmp_path / "new.satchel"
    satchel.save({"w": np.arange(4.0)}, old_src)
    satchel.save({"w": np.arange(9.0)}, new_src)
    dst = tmp_path / "of"
    satchel.convert(old_src, dst, to="oneflow")
    before = sorted(
        (str(p.relative_to(dst)), p.read_bytes()) for p in dst.rglob("*") if p.is_file()
    )
    real_rename = os.rename
    fired = []

    def rename(a: Any, b: Any) -> None:
        if Path(b) == dst and not fired:
            fired.append(a)
            shutil.rmtree(a)  # the new folder vanishes between the two renames
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(satchel.SatchelError) as ei:
        satchel.convert(new_src, dst, to="oneflow")
    monkeypatch.undo()
    assert fired
    assert isinstance(ei.value, FileNotFoundError) and ei.value.errno == errno.ENOENT
    assert str(dst) in str(ei.value)
    after = sorted((str(p.relative_to(dst)), p.read_bytes()) for p in dst.rglob("*") if p.is_file())
    assert after == before  # the old folder is back under its name
    assert satchel.load(dst)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert temp_files(tmp_path) == []
