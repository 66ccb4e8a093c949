"""Crash safety of CheckpointManager with real processes, and I/O fault injection at every call.

* A SIGKILL campaign: tests/crash_worker.py trains and saves every step; this test kills it at
  random moments (100 times), and after each kill restore() must give, bit for bit, the last
  checkpoint the worker reported committed or the one it was writing. The next worker resumes
  from that checkpoint. Most workers are forked from a warm server (a real process each, minus
  the interpreter start); every tenth is a fresh interpreter. A shorter campaign does the same
  with sharded items (SPEC 8.15), whose shards parallel workers write.
* Fault injection: an OSError (ENOSPC, EIO) raised at each I/O call of a save in turn must reach
  the caller, leave the previous checkpoints intact and leave no temporary entries behind; for
  a save of sharded items too.
* A reader restoring in a loop while a real training process keeps saving to the same root.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import importlib.util
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel import CheckpointManager, CheckpointRoot, CheckpointWarning
from satchel._checkpoint import workers as pool
from satchel._io.atomic import TMP_MARKER

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "crash_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}

_spec = importlib.util.spec_from_file_location("crash_worker", WORKER)
assert _spec is not None and _spec.loader is not None
crash_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_worker)


def temp_entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if TMP_MARKER in p.name)


# -- the worker processes -------------------------------------------------------------------------
class Child:
    """A crash_worker process whose stdout goes to a file; the test polls that file."""

    def __init__(self, out: Path, stderr: Path, pid: int, reap: Any) -> None:
        self.out, self.stderr, self.pid, self._reap = out, stderr, pid, reap
        self.status: int | None = None

    def lines(self) -> list[str]:
        text = self.out.read_text() if self.out.exists() else ""
        return text.split("\n")[:-1]  # complete lines only

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Poll until ``count`` lines start with ``prefix``; returns those lines."""
        deadline = time.monotonic() + timeout
        while True:
            found = [ln for ln in self.lines() if ln.startswith(prefix)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.poll_dead():
                found = [ln for ln in self.lines() if ln.startswith(prefix)]
                if len(found) >= count:
                    return found
                self.kill()
                raise AssertionError(
                    f"worker {self.pid} never printed {count} x {prefix!r}; "
                    f"lines {self.lines()[-5:]}; stderr:\n{self.stderr.read_text()[-3000:]}"
                )
            time.sleep(0.002)

    def poll_dead(self) -> bool:
        """True once the process has exited (a zombie counts as exited)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

    def join(self) -> int:
        """Wait for the process to exit by itself; its wait status (0: success)."""
        if self.status is None:
            self.status = self._reap(self.pid)
        return self.status

    def kill(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.status = self._reap(self.pid)


def start_interpreter(root: Path, out: Path, stderr: Path, *args: str) -> Child:
    """A worker in a fresh Python interpreter."""
    with out.open("wb") as o, stderr.open("ab") as e:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(root), *args], env=ENV, stdout=o, stderr=e
        )
    return Child(out, stderr, proc.pid, lambda _pid: proc.wait())


class ForkServer:
    """crash_worker.py --serve: forks workers that start with everything already imported."""

    def __init__(self, stderr: Path) -> None:
        self.stderr = stderr
        with stderr.open("ab") as e:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), "--serve"],
                env={**ENV, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=e,
                text=True,
            )
        assert self._reply() == "serving"

    def _reply(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().strip() if ready else ""
        assert line, f"fork server is not answering:\n{self.stderr.read_text()[-3000:]}"
        return line

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def start(self, root: Path, out: Path, *args: str) -> Child:
        kind, pid = self._ask(" ".join(["run", str(out), str(root), *args])).split()
        assert kind == "pid"
        return Child(out, self.stderr, int(pid), self._reap)

    def _reap(self, pid: int) -> int:
        kind, got, status = self._ask(f"reap {pid}").split()
        assert kind == "reaped" and int(got) == pid
        return int(status)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the server kills any worker left, then exits
        self.proc.wait(60)


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    """Start workers (forked or fresh); any still alive when the test ends is killed."""
    started: list[Child] = []
    servers: list[ForkServer] = []
    stderr = tmp_path / "workers-stderr.txt"

    class Factory:
        def fresh(self, root: Path, out: Path, *args: str) -> Child:
            started.append(start_interpreter(root, out, stderr, *args))
            return started[-1]

        def forked(self, root: Path, out: Path, *args: str) -> Child:
            if not servers:
                servers.append(ForkServer(stderr))
            started.append(servers[0].start(root, out, *args))
            return started[-1]

    yield Factory()
    for c in started:
        c.kill()
    for srv in servers:
        srv.close()


def parse(lines: list[str]) -> tuple[list[tuple[int, str]], tuple[int, str] | None, list[float]]:
    """The (step, digest) pairs reported committed, the save in flight, and the save times."""
    committed: list[tuple[int, str]] = []
    seconds: list[float] = []
    writing: tuple[int, str] | None = None
    for line in lines:
        kind, *rest = line.split()
        if kind == "writing":
            writing = (int(rest[0]), rest[1])
        elif kind == "committed":
            committed.append((int(rest[0]), rest[1]))
            seconds.append(float(rest[2]))
            assert writing == committed[-1], (writing, line)
    in_flight = writing if writing is not None and writing not in committed else None
    return committed, in_flight, seconds


N_KILLS = 100
FRESH_EVERY = 10  # every 10th life is a fresh interpreter, the others are forked
TIME_LIMIT = 240.0  # a guard against a hang, far above the ~20 s the campaign takes


def test_sigkill_campaign(tmp_path: Path, workers: Any) -> None:
    campaign(tmp_path, workers, N_KILLS)


N_KILLS_SHARDED = 40
SHARDED = ("--max-shard-size", "1MiB")  # the model as 4 shards, the optimizer as 2


def test_sigkill_campaign_with_sharded_items(tmp_path: Path, workers: Any) -> None:
    stats = campaign(tmp_path, workers, N_KILLS_SHARDED, SHARDED)
    assert stats["kills inside an item folder"] > 0, "no kill landed inside a sharded item"
    # every step the campaign left is sharded: 4 + 2 shards and their indexes
    root = tmp_path / "run"
    steps = CheckpointRoot(root).checkpoints()
    assert steps and all(i.valid for i in steps)
    for info in steps:
        assert info.record is not None
        assert [len(info.record.items[n].files) for n in ("model", "opt")] == [5, 3]


def campaign(
    tmp_path: Path, workers: Any, kills: int, extra: tuple[str, ...] = ()
) -> collections.Counter[str]:
    """Kill ``kills`` workers (saving with ``extra`` arguments) at random moments; see the
    module docstring. Returns what happened, counted."""
    root = tmp_path / "run"
    root.mkdir()
    rng = random.Random(20240607)
    reader = CheckpointRoot(root)
    stats: collections.Counter[str] = collections.Counter()
    reported: dict[int, str] = {}  # every digest reported for a step, over all lives
    save_time = 0.05  # running estimate of one save, from the workers' own reports
    last_restored: tuple[int, str] | None = None
    leftovers: list[str] = []
    start = time.monotonic()

    for life in range(kills):
        assert time.monotonic() - start < TIME_LIMIT, f"only {life} kills in {TIME_LIMIT} s"
        args = ("--keep-last", "3", "--mode", "async" if life % 2 else "blocking", *extra)
        out = tmp_path / f"life{life:03d}.txt"
        fresh = life % FRESH_EVERY == FRESH_EVERY - 1
        w = (workers.fresh if fresh else workers.forked)(root, out, *args)
        (ready,) = w.wait_for("ready ")
        _, step_s, digest_s = ready.split()
        # the worker resumed from exactly what the parent restored after the previous kill
        resumed = (int(step_s), digest_s)
        if last_restored is None:
            assert resumed[0] == -1
        else:
            assert resumed == last_restored, (life, resumed, last_restored)
        # Kill during or just after save number 1, 2 or 3 of this life, at a random moment
        # scaled by how long saves take here, so the run advances on a slow machine too.
        w.wait_for("writing ", count=rng.randint(1, 3))
        time.sleep(rng.uniform(0.0, 1.5 * save_time))
        w.kill()
        assert w.status == -signal.SIGKILL or os.WTERMSIG(w.status) == signal.SIGKILL
        stats["kills"] += 1
        stats["kills of fresh interpreters"] += fresh
        committed, in_flight, seconds = parse(w.lines()[1:])
        if seconds:
            save_time = 0.7 * save_time + 0.3 * sum(seconds) / len(seconds)
        for s, d in [*committed, *([in_flight] if in_flight else [])]:
            # training is deterministic: a step has one digest, whichever life computed it
            assert reported.setdefault(s, d) == d, f"step {s}: digest {d} != {reported[s]}"
        stats["saves reported committed"] += len(committed)
        last_committed = committed[-1] if committed else last_restored

        now = {p.name for p in root.iterdir() if TMP_MARKER in p.name}
        stats["temp leftovers cleaned"] += len(set(leftovers) - now)
        if committed:  # this life saved, so it removed what earlier kills left
            assert not set(leftovers) & now, f"life {life}: not cleaned: {set(leftovers) & now}"
        new = now - set(leftovers)
        stats["kills leaving temp entries"] += bool(new)
        stats["kills inside an item folder"] += any(
            c.is_dir() for e in new if (root / e).is_dir() for c in (root / e).iterdir()
        )
        stats["temp entries left"] += len(new)
        leftovers = sorted(now)

        # no kill ever leaves a broken folder under a step name
        infos = reader.checkpoints()
        assert all(i.valid for i in infos), [(i.step, i.problem) for i in infos if not i.valid]
        stats["most step folders seen"] = max(stats["most step folders seen"], len(infos))

        if last_committed is None and in_flight is None:
            with pytest.raises(satchel.CheckpointNotFoundError):
                reader.restore()
            stats["restores before any commit"] += 1
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", CheckpointWarning)
                res = reader.restore()
        except satchel.CheckpointNotFoundError:
            assert last_committed is None, f"life {life}: nothing restorable after a commit"
            stats["restores before any commit"] += 1
            continue
        got = (res.step, crash_worker.digest(res.items))
        assert res.extra == {"step": res.step, "digest": got[1]}
        stats["restores ok"] += 1
        if got == last_committed:
            stats["restored == last committed"] += 1
        elif got == in_flight:
            stats["restored == in-flight"] += 1
        else:
            raise AssertionError(
                f"life {life}: restored {got}, last committed {last_committed}, "
                f"in flight {in_flight}"
            )
        last_restored = got

    # a last, clean life in a fresh interpreter: it runs to its end, so retention and cleanup
    # are complete
    w = workers.fresh(root, tmp_path / "last.txt", "--keep-last", "3", "--max-steps", "3", *extra)
    w.wait_for("done")
    assert w.join() == 0
    committed, in_flight, _ = parse(w.lines()[1:-1])
    assert in_flight is None and len(committed) == 3
    assert committed[0][0] == (last_restored[0] + 1 if last_restored else 0)
    for s, d in committed:
        assert reported.setdefault(s, d) == d
    assert temp_entries(root) == []
    assert reader.steps() == [s for s, _ in committed]
    res = reader.restore()
    assert (res.step, crash_worker.digest(res.items)) == committed[-1]
    stats["temp leftovers cleaned"] += len(leftovers)

    elapsed = time.monotonic() - start
    assert stats["kills"] >= kills
    assert stats["restores ok"] > 0
    assert stats["restores ok"] + stats["restores before any commit"] == stats["kills"]
    assert stats["kills leaving temp entries"] > 0, "no kill landed inside a save"
    assert stats["temp leftovers cleaned"] == stats["temp entries left"]
    summary = ", ".join(f"{k}: {v}" for k, v in stats.items())
    print(f"\nSIGKILL campaign ({elapsed:.1f} s, last step {res.step}): {summary}")
    print(f"mean save time of the worker (~6 MiB, fsynced): {save_time * 1000:.1f} ms")
    return stats


# -- fault injection ------------------------------------------------------------------------------
IO_FUNCS = (
    "open",
    "write",
    "pwrite",
    "fsync",
    "close",
    "replace",
    "rename",
    "mkdir",
    "ftruncate",
    "unlink",
    "rmdir",
)
_RANDOM_PART = re.compile(r"satchel-tmp-\d+-[0-9a-f]+")


class Injector:
    """Counts the os-level I/O calls made by satchel's modules and fails the k-th one.

    os functions are replaced globally (the satchel modules share the os module); only calls
    whose caller is a satchel module are counted. A failing close still closes the descriptor,
    as the kernel does. Calls from several threads (a sharded save's workers) are counted one
    at a time.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.fail_at = 0
        self.err = 0
        self.base = Path("/")
        self.recording = False
        self.fds: dict[int, str] = {}
        self.reads: set[int] = set()  # descriptors opened by a reader
        for name in IO_FUNCS:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def start(self, base: Path, fail_at: int = 0, err: int = 0) -> None:
        self.calls, self.fds = [], {}
        self.base, self.fail_at, self.err, self.recording = base, fail_at, err, True

    def stop(self) -> list[str]:
        self.recording = False
        return self.calls

    def _short(self, path: Any) -> str:
        rel = os.path.relpath(os.fspath(path), self.base)
        return _RANDOM_PART.sub("satchel-tmp-*", "<root>" if rel == "." else rel)

    def _label(self, name: str, args: tuple[Any, ...], kw: dict[str, Any]) -> str:
        if name == "open":
            path = self._short(args[0])
            if "dir_fd" in kw:
                path = f"{self.fds.get(kw['dir_fd'], '?')}/{args[0]}"
            # A reader's open (SPEC 8.12: never through a link); what it opens is only read.
            reading = args[1] & os.O_NOFOLLOW and args[1] & os.O_ACCMODE == os.O_RDONLY
            return f"{'read ' if reading else ''}open {path}"
        if name in ("mkdir", "unlink", "rmdir"):
            return f"{name} {self._short(args[0])}"
        if name in ("replace", "rename"):
            return f"{name} {self._short(args[0])} -> {self._short(args[1])}"
        fd = self.fds.get(args[0], "?")
        return f"{'read ' if name == 'close' and args[0] in self.reads else ''}{name} {fd}"

    def _wrap(self, name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not (self.recording and caller.startswith("satchel")):
                return real(*args, **kw)
            with self.lock:
                label = self._label(name, args, kw)
                self.calls.append(label)
                hit = len(self.calls) == self.fail_at
            if hit:
                if name == "close":
                    real(*args, **kw)
                raise OSError(self.err, f"{os.strerror(self.err)} (injected: {label})")
            out = real(*args, **kw)
            if name == "open":
                self.fds[out] = label.split(" ")[-1]
                if label.startswith("read "):
                    self.reads.add(out)
                else:
                    self.reads.discard(out)
            return out

        return wrapper


def arrays(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "model": {"w": rng.standard_normal((64, 64)).astype(np.float32), "step": seed},
        "opt": {"m": rng.standard_normal(4096).astype(np.float32)},
        "extra": {"seed": seed},
    }


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def restored_matches(mgr: CheckpointManager, step: int, seed: int) -> bool:
    res = mgr.restore(step=step)
    want = arrays(seed)
    return (
        res.extra == want["extra"]
        and res.items["model"]["step"] == seed
        and np.asarray(res.items["model"]["w"]).tobytes() == want["model"]["w"].tobytes()
        and np.asarray(res.items["opt"]["m"]).tobytes() == want["opt"]["m"].tobytes()
    )


def save(mgr: CheckpointManager, step: int, seed: int, **kw: Any) -> None:
    a = arrays(seed)
    mgr.save(step, model=a["model"], opt=a["opt"], extra=a["extra"], **kw)


def run_faulty(
    inj: Injector,
    mgr: CheckpointManager,
    root: Path,
    k: int,
    *,
    err: int,
    blocking: bool,
    **kw: Any,
) -> tuple[OSError | None, str]:
    """Save step 2 (seed 2) with call ``k`` failing; return the error and where it surfaced."""
    inj.start(root, k, err)
    try:
        try:
            save(mgr, 2, 2, blocking=blocking, **kw)
        except OSError as e:
            return e, "save"
        try:
            mgr.wait()
        except OSError as e:
            return e, "wait"
        return None, "-"
    finally:
        inj.stop()


def clean_run(inj: Injector, template: Path, where: Path, **kw: Any) -> list[str]:
    root = where / "clean"
    shutil.copytree(template, root)
    mgr = CheckpointManager(root, **kw.pop("manager", {}))
    inj.start(root)
    save(mgr, 2, 2, **kw)
    calls = inj.stop()
    mgr.close()
    return calls


def commit_index(calls: list[str], step: int = 2) -> int:
    """1-based index of the rename that publishes the step (the commit point)."""
    final = f"step_{step:08d}"
    (i,) = [i for i, c in enumerate(calls) if c.startswith("rename .") and c.endswith(final)]
    return i + 1


@pytest.fixture
def scratch(tmp_path: Path) -> Any:
    """A folder on tmpfs when there is one: the hundreds of fault cases then cost no disk flush.

    Every os call is still made; only the time the disk takes to flush is saved.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="satchel-faults-", dir=shm))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def template(scratch: Path) -> Path:
    root = scratch / "template"
    with CheckpointManager(root) as mgr:
        save(mgr, 1, 1)
    return root


def test_spec_8_5_save_protocol_order(
    scratch: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inj = Injector(monkeypatch)
    every = clean_run(inj, template, scratch)
    tmp = ".step_00000002.satchel-tmp-*"
    # The lock is held since the manager was made (SPEC 8.6). First the writer reads the commit
    # records on disk (for retention) as any reader does, then it writes into its temp folder.
    start = every.index(f"mkdir {tmp}")
    reads = [c for c in every if c.startswith("read ")]
    assert reads == every[:start] and reads, every[:start]
    assert {c.split()[-1].split("/")[0] for c in reads} == {"step_00000001"}
    calls = every[start:]
    # each item: written to its own temp file, fsynced, renamed, folder fsynced
    for item in ("model", "opt", "extra"):
        (j,) = [j for j, c in enumerate(calls) if c.endswith(f" -> {tmp}/{item}.satchel")]
        f = calls[j].split()[1]  # the item's temp file
        i = max(k for k in range(j) if calls[k] == f"open {f}")
        mine = [c for c in calls[i:j] if c.endswith(f" {f}")]
        assert mine[0] == f"open {f}" and f"fsync {f}" in mine
        assert {c.split()[0] for c in mine[1 : mine.index(f"fsync {f}")]} == {"write"}
        k = calls.index(f"open {tmp}", j)
        assert calls[k : k + 3] == [f"open {tmp}", f"fsync {tmp}", f"close {tmp}"]
        assert set(calls[j + 1 : k]) <= {f"close {f}"}
    # the commit record last, fsynced; the folder fsynced, renamed, the root fsynced
    m = calls.index(f"open {tmp}/manifest.json")
    assert m > max(i for i, c in enumerate(calls) if c.startswith("replace"))
    assert calls[m + 1 :] == [
        f"write {tmp}/manifest.json",
        f"fsync {tmp}/manifest.json",
        f"close {tmp}/manifest.json",
        f"open {tmp}",
        f"fsync {tmp}",
        f"close {tmp}",
        f"rename {tmp} -> step_00000002",
        "open <root>",
        "fsync <root>",
        "close <root>",
    ]


def check_no_litter(root: Path, allowed: set[str]) -> list[str]:
    problems = []
    if temp_entries(root):
        problems.append(f"temp entries {temp_entries(root)}")
    extra = set(os.listdir(root)) - allowed - {".satchel.lock"}
    if extra:
        problems.append(f"unexpected entries {sorted(extra)}")
    return problems


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "async"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_fault_at_every_io_call_of_a_save(
    scratch: Path, template: Path, monkeypatch: pytest.MonkeyPatch, err: int, blocking: bool
) -> None:
    inj = Injector(monkeypatch)
    calls = clean_run(inj, template, scratch)
    n_calls = len(calls)
    commit = commit_index(calls)
    step1 = folder_bytes(template / "step_00000001")
    problems: list[str] = []
    outcome: collections.Counter[str] = collections.Counter()
    for k in range(1, n_calls + 1):
        root = scratch / f"k{k:03d}"
        shutil.copytree(template, root)
        mgr = CheckpointManager(root)
        e, where = run_faulty(inj, mgr, root, k, err=err, blocking=blocking)
        why: list[str] = []
        # A failed read of step 1's record makes step 1 invalid for this save (SPEC 8.12): it
        # is neither ranked nor deleted, and the save goes on.
        read_fault = e is None and calls[k - 1].startswith("read ")
        if read_fault:
            pass
        elif e is None or e.errno != err or "injected" not in str(e):
            why.append(f"error {e!r} did not reach the caller")
        elif where != ("save" if blocking else "wait"):
            why.append(f"error surfaced in {where}")
        if folder_bytes(root / "step_00000001") != step1 or not restored_matches(mgr, 1, 1):
            why.append("step 1 changed")
        after_commit = k > commit or read_fault
        why += check_no_litter(root, {"step_00000001", "step_00000002"})
        present = (root / "step_00000002").exists()
        if present != after_commit:
            why.append(f"step 2 {'present' if present else 'absent'}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointWarning)
            newest = mgr.restore()
        if present and not (mgr.check(2) is None and restored_matches(mgr, 2, 2)):
            why.append("step 2 present but not valid")
        if newest.step != (2 if present else 1):
            why.append(f"restore() gave step {newest.step}")
        try:  # the manager (and its lock) still work
            save(mgr, 3, 3)
            mgr.close()
            assert mgr.steps() == ([1, 2, 3] if present else [1, 3])
        except Exception as ex:
            why.append(f"next save failed: {ex!r}")
        outcome["after commit" if after_commit else "before commit"] += 1
        if why:
            problems.append(f"k={k} ({calls[k - 1]}): {'; '.join(why)}")
        mgr.close()
        shutil.rmtree(root)
    print(
        f"\nfault injection {errno.errorcode[err]} {'blocking' if blocking else 'async'}: "
        f"K={n_calls} I/O calls, commit point = call {commit} ({calls[commit - 1]}); "
        f"{dict(outcome)}; per function {dict(collections.Counter(c.split()[0] for c in calls))}"
    )
    assert not problems, "\n".join(problems)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def sharded_state(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "model": {f"w{i}": rng.standard_normal(1024).astype(np.float32) for i in range(4)},
        "opt": {"m": rng.standard_normal(512).astype(np.float32)},
        "extra": {"seed": seed},
    }


SHARD_LIMIT = 8 << 10  # the model: 4 x 4 KiB in 2 shards; opt and extra: one file each


@pytest.mark.parametrize(
    ("n_workers", "blocking"),
    [(1, True), (2, True), (2, False)],
    ids=["1-worker", "2-workers", "2-workers-async"],
)
def test_fault_at_every_io_call_of_a_sharded_save(
    scratch: Path, monkeypatch: pytest.MonkeyPatch, n_workers: int, blocking: bool
) -> None:
    """As test_fault_at_every_io_call_of_a_save, for a save whose model is sharded (SPEC 8.15).

    With two workers the calls of the two shards interleave differently from run to run, but
    their number and the commit point (after every worker has finished) do not change.
    """
    monkeypatch.setattr(pool, "WRITE_WORKERS", n_workers)
    template = scratch / "template"
    with CheckpointManager(template, max_shard_size=SHARD_LIMIT) as mgr:
        mgr.save(1, **sharded_state(1))
    step1 = tree_bytes(template / "step_00000001")

    def save_step(mgr: CheckpointManager, step: int) -> None:
        mgr.save(step, **sharded_state(step), blocking=blocking)
        mgr.wait()

    def matches(mgr: CheckpointManager, step: int) -> bool:
        res = mgr.restore(step=step)
        want = sharded_state(step)
        return res.extra == want["extra"] and all(
            np.asarray(res.items[item][k]).tobytes() == v.tobytes()
            for item in ("model", "opt")
            for k, v in want[item].items()
        )

    inj = Injector(monkeypatch)
    root = scratch / "clean"
    shutil.copytree(template, root)
    with CheckpointManager(root, max_shard_size=SHARD_LIMIT) as mgr:
        inj.start(root)
        save_step(mgr, 2)
        calls = inj.stop()
    assert sorted(os.listdir(root / "step_00000002" / "model")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    commit = commit_index(calls)
    # SPEC 8.15: the shards, then the index, then the item folder's fsync, then the record
    tmp = ".step_00000002.satchel-tmp-*"
    sub = f"{tmp}/model"
    renames = [i for i, c in enumerate(calls) if c.startswith(f"replace {sub}/")]
    assert [calls[i].rsplit("/", 1)[1] for i in renames] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] or n_workers > 1
    index = calls.index(f"replace {sub}/.satchel-tmp-* -> {sub}/model.safetensors.index.json")
    assert max(renames) == index < calls.index(f"fsync {sub}")
    assert calls.index(f"fsync {sub}") < calls.index(f"open {tmp}/manifest.json")
    problems = []
    for k in range(1, len(calls) + 1):
        root = scratch / f"k{k:03d}"
        shutil.copytree(template, root)
        mgr = CheckpointManager(root, max_shard_size=SHARD_LIMIT)
        inj.start(root, k, errno.ENOSPC)
        e: OSError | None = None
        try:
            save_step(mgr, 2)
        except OSError as ex:
            e = ex
        finally:
            inj.stop()
        read_fault = e is None and calls[k - 1].startswith("read ")
        why = [] if read_fault or (e is not None and "injected" in str(e)) else [f"{e!r}"]
        why += check_no_litter(root, {"step_00000001", "step_00000002"})
        if tree_bytes(root / "step_00000001") != step1 or not matches(mgr, 1):
            why.append("step 1 changed")
        present = (root / "step_00000002").exists()
        if present != (k > commit or read_fault):
            why.append(f"step 2 {'present' if present else 'absent'}")
        if present and not (mgr.check(2) is None and matches(mgr, 2)):
            why.append("step 2 present but not valid")
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointWarning)
            if mgr.restore().step != (2 if present else 1):
                why.append("restore() did not give the newest valid step")
        try:  # the manager (and its lock) still work
            save_step(mgr, 3)
            mgr.close()
            assert mgr.steps() == ([1, 2, 3] if present else [1, 3])
        except Exception as ex:
            why.append(f"next save failed: {ex!r}")
        if why:
            problems.append(f"k={k} ({calls[k - 1]}): {'; '.join(why)}")
        mgr.close()
        shutil.rmtree(root)
    print(f"\nsharded fault injection ({n_workers} workers): K={len(calls)}, commit at {commit}")
    assert not problems, "\n".join(problems)


def test_fault_during_overwrite_keeps_the_old_or_the_new_step(
    scratch: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # template: step 1; add step 2 (seed 20), then overwrite step 2 with seed 2
    with CheckpointManager(template) as mgr:
        save(mgr, 2, 20)
    inj = Injector(monkeypatch)
    calls = clean_run(inj, template, scratch, overwrite=True)
    old2 = folder_bytes(template / "step_00000002")
    problems = []
    for k in range(1, len(calls) + 1):
        root = scratch / f"k{k:03d}"
        shutil.copytree(template, root)
        mgr = CheckpointManager(root)
        e, _ = run_faulty(inj, mgr, root, k, err=errno.EIO, blocking=True, overwrite=True)
        read_fault = e is None and calls[k - 1].startswith("read ")
        why = [] if read_fault or (e is not None and "injected" in str(e)) else [f"{e!r}"]
        why += check_no_litter(root, {"step_00000001", "step_00000002"})
        if not restored_matches(mgr, 1, 1):
            why.append("step 1 changed")
        if not (root / "step_00000002").exists():
            why.append("step 2 lost (neither old nor new)")
        elif folder_bytes(root / "step_00000002") != old2 and not restored_matches(mgr, 2, 2):
            why.append("step 2 is neither the old nor the new one")
        if why:
            problems.append(f"k={k} ({calls[k - 1]}): {'; '.join(why)}")
        mgr.close()
        shutil.rmtree(root)
    print(f"\noverwrite fault injection: K={len(calls)}, failing k: {len(problems)}")
    assert not problems, "\n".join(problems)


def test_fault_during_retention_keeps_the_new_and_the_kept_steps(
    scratch: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # template: steps 0 and 1; saving 2 with keep_last=2 deletes step 0 after the commit
    with CheckpointManager(template) as mgr:
        save(mgr, 0, 1)
    assert CheckpointRoot(template).steps() == [0, 1]
    inj = Injector(monkeypatch)
    calls = clean_run(inj, template, scratch, manager={"keep_last": 2})
    commit = commit_index(calls)
    problems = []
    for k in range(1, len(calls) + 1):
        root = scratch / f"k{k:03d}"
        shutil.copytree(template, root)
        mgr = CheckpointManager(root, keep_last=2)
        e, _ = run_faulty(inj, mgr, root, k, err=errno.EIO, blocking=True)
        read_fault = e is None and calls[k - 1].startswith("read ")
        why = [] if read_fault or (e is not None and "injected" in str(e)) else [f"{e!r}"]
        why += check_no_litter(root, {"step_00000000", "step_00000001", "step_00000002"})
        if not restored_matches(mgr, 1, 1):
            why.append("step 1 changed")
        committed = k > commit or read_fault
        if committed != (root / "step_00000002").exists():
            why.append("step 2 present before / absent after the commit point")
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointWarning)
            if mgr.restore().step != (2 if committed else 1):
                why.append("restore() did not give the newest valid step")
        if why:
            problems.append(f"k={k} ({calls[k - 1]}): {'; '.join(why)}")
        mgr.close()
        shutil.rmtree(root)
    print(f"\nretention fault injection: K={len(calls)}, commit at {commit}: {len(problems)} bad")
    assert not problems, "\n".join(problems)


# -- a reader following a live writer ------------------------------------------------------------
LISTINGS = 2000


def test_spec_8_13_a_reader_always_sees_the_newest_committed_step(
    tmp_path: Path, workers: Any
) -> None:
    """keep_last=1: every save commits a step and deletes the one before, a few ms apart."""
    root = tmp_path / "run"
    w = workers.fresh(root, tmp_path / "writer.txt", "--keep-last", "1", "--small")
    try:
        w.wait_for("committed ")
        view = CheckpointRoot(root)
        failures: collections.Counter[str] = collections.Counter()
        steps_seen: set[int] = set()
        restores = 0
        deadline = time.monotonic() + 60  # a guard only: the loop takes about a second
        for i in range(LISTINGS):
            assert time.monotonic() < deadline, f"only {i} listings in 60 s"
            steps = view.steps()
            if not steps:
                failures["steps() == []"] += 1
            steps_seen.update(steps)
            if i % 4:
                continue
            restores += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", CheckpointWarning)
                    res = view.restore()
                assert res.extra["digest"] == crash_worker.digest(res.items)
            except (satchel.SatchelError, OSError, CheckpointWarning) as e:
                failures[f"{type(e).__name__}: {re.sub(r'[0-9]+', 'N', str(e))[:160]}"] += 1
        assert not w.poll_dead(), "the writer died"
    finally:
        w.kill()
    commits = len([ln for ln in w.lines() if ln.startswith("committed ")])
    assert len(steps_seen) > 10, f"the writer made {len(steps_seen)} steps while the reader read"
    assert not failures, (
        f"{sum(failures.values())} failures in {LISTINGS} listings and {restores} restores while "
        f"the writer committed {commits} steps (keep_last=1):\n"
        + "\n".join(f"{n} x {m}" for m, n in failures.most_common())
    )
