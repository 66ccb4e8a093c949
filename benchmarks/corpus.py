"""Run a hostile-file corpus through ``satchel.load``: every file as it is and wrapped.

A corpus is a folder with a ``MANIFEST.json``: a list of entries ``{"file", "expect", "wrap",
"sha256", "size", "technique", ...}`` where ``expect`` is ``refuse`` (hostile: must be refused),
``load`` (benign: must load) or ``either`` (benign but outside satchel's formats: a clear
refusal is fine), and ``wrap`` names the container the file already sits in (``none``: bare).
Every file is checked against its ``sha256`` first; the corpus is read, never copied.

Each file runs as it is; each file whose bytes are a pickle stream also runs wrapped, by this
script, in every container satchel reads that carries a pickle (layouts from satchel's readers
and writers, docs/formats.md#torch, #mxnet-states, #oneflow and #npy)::

    torch-zip       archive/{data.pkl, .format_version, .storage_alignment, byteorder, version},
                    stored, as torch_writer lays it out; the payload is data.pkl
    torch-legacy    magic, protocol and sys_info pickles, the payload, the (empty) key list
    npy-object      a v1.0 .npy header with descr '|O', the payload as its data
    mxnet-states    a Trainer.save_states file: PROTO 2, the string 'mxnet.optimizer' (what
                    the sniffer looks for) popped at once, then the payload, unchanged
    oneflow-folder  a oneflow.save 0.5-0.9 folder whose pickled_data is the payload
    oneflow-file    the 1.0 single file: PROTO 2, '__oneflow__' popped at once, the payload

Every case runs in its own interpreter (``--jobs`` at a time) whose working folder, ``HOME``
and ``TMPDIR`` are a fresh folder holding only the case; the child imports satchel, warms up
its readers on harmless files, then installs an audit hook and ``RLIMIT_AS``, and calls
``satchel.load`` once. Outcomes:

    unsafe      refused with UnsafeContentError
    refused     refused with another SatchelError
    loaded      returned plain data (containers, numbers, strings, bytes, NumPy arrays)
    internal    returned something else (a satchel stand-in leaking out)
    executed    the audit hook saw code run (process, socket, ctypes, exec/compile of foreign
                code, writes, reads outside Python's own folders) or the case folder changed
    crashed     killed by a signal, no report, or MemoryError under the memory cap
    hung        still running at the timeout
    foreign     an exception that is not a SatchelError

Expectations. Wrapped, a hostile (``refuse``) payload must be ``unsafe`` in every container: the
runner's containers are well formed, so the refusal has to come from the pickle itself. As it
is, a hostile file must be refused (``unsafe`` or ``refused``): its own container may be what
is wrong with it (a bad CRC, a local/central name mismatch, a bare pickle or 7z archive that no
reader recognises), and refusing the container before reading the payload is the safe answer;
the tables show which refusal each got. ``load`` files must be ``loaded`` as they are;
wrapped, benign payloads may load or be refused (a wrapped benign file is not a file any
framework writes). ``internal``, ``executed``, ``crashed``, ``hung`` and ``foreign`` always
fail. The exit status is 1 if any case fails.

    python benchmarks/corpus.py CORPUS_FOLDER --jobs 2 [--markdown] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import pickle
import pickletools
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTCOMES = ("unsafe", "refused", "loaded", "internal", "executed", "crashed", "hung", "foreign")
ALWAYS_BAD = {"internal", "executed", "crashed", "hung", "foreign"}

# -- wrappers ---------------------------------------------------------------------------------
P2 = b"\x80\x02"
_LEGACY_HEAD = (
    pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # torch.serialization MAGIC_NUMBER
    + pickle.dumps(1001, protocol=2)  # PROTOCOL_VERSION
    + pickle.dumps(
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}},
        protocol=2,
    )
)  # fmt: skip
_EMPTY_KEY_LIST = P2 + b"]."


def _marked(marker: str, payload: bytes) -> bytes:
    """``payload`` behind a string the sniffer looks for, pushed and popped at once."""
    raw = marker.encode()
    return P2 + b"X" + struct.pack("<I", len(raw)) + raw + b"0" + payload


def _torch_zip(path: Path, payload: bytes) -> Path:
    records = [
        ("data.pkl", payload),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", b"little"),
        ("version", b"3\n"),
    ]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in records:
            zf.writestr(zipfile.ZipInfo(f"archive/{name}", (1980, 1, 1, 0, 0, 0)), data)
    return path


def _npy_object(path: Path, payload: bytes) -> Path:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    with path.open("ab") as f:
        f.write(payload)
    return path


def _oneflow_folder(path: Path, payload: bytes) -> Path:
    path.mkdir()
    (path / "pickled_data").write_bytes(payload)
    return path


def _write(make: Callable[[bytes], bytes]) -> Callable[[Path, bytes], Path]:
    def write(path: Path, payload: bytes) -> Path:
        path.write_bytes(make(payload))
        return path

    return write


# name -> (file name suffix, writer)
WRAPPERS: dict[str, tuple[str, Callable[[Path, bytes], Path]]] = {
    "torch-zip": (".pt", _torch_zip),
    "torch-legacy": (".pt", _write(lambda p: _LEGACY_HEAD + p + _EMPTY_KEY_LIST)),
    "npy-object": (".npy", _npy_object),
    "mxnet-states": (".states", _write(lambda p: _marked("mxnet.optimizer", p))),
    "oneflow-folder": (".of", _oneflow_folder),
    "oneflow-file": (".of", _write(lambda p: _marked("__oneflow__", p))),
}
_CONTAINER_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY", b"7z\xbc\xaf", b"\x89PNG", b"GGUF")
_OPCODES = {op.code.encode("latin1") for op in pickletools.opcodes}


def is_pickle_stream(data: bytes) -> bool:
    """Bytes that start with a pickle opcode and no other container's magic number."""
    return bool(data) and not data.startswith(_CONTAINER_MAGIC) and data[:1] in _OPCODES


# -- the child: one case in a fresh interpreter ----------------------------------------------
_EVENTS = {
    "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.remove", "os.unlink",
    "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.truncate", "os.putenv", "os.unsetenv",
    "os.startfile", "pty.spawn", "builtins.input", "function.__new__", "code.__new__",
    "marshal.loads", "marshal.load", "pickle.find_class", "sys.setprofile", "sys.settrace",
    "sys.addaudithook", "webbrowser.open", "syslog.openlog",
}  # fmt: skip
_PREFIXES = (
    "os.exec", "os.spawn", "os.posix_spawn", "subprocess.", "socket.", "ctypes.", "http.",
    "urllib.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "telnetlib.", "nntplib.",
    "shutil.", "cpython.run_", "winreg.", "msvcrt.", "sqlite3.", "tempfile.",
)  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _plain(value: Any) -> str | None:
    """The first object in ``value`` that is not plain data (its type and repr), or None."""
    import numpy as np

    atoms = (type(None), bool, int, float, complex, str, bytes, bytearray, np.generic)
    containers = (dict, collections.OrderedDict, list, tuple, set, frozenset)
    seen: dict[int, Any] = {}  # id -> object, kept alive so that ids are never reused
    stack = [value]
    while stack:
        x = stack.pop()
        if type(x) in containers:
            if id(x) not in seen:
                seen[id(x)] = x
                stack.extend([*x.keys(), *x.values()] if isinstance(x, dict) else x)
        elif isinstance(x, np.ndarray) and type(x) is np.ndarray:
            if x.dtype.hasobject:
                return f"NumPy array of dtype {x.dtype}"
        elif not isinstance(x, atoms):
            return f"{type(x).__module__}.{type(x).__qualname__}: {x!r:.80}"
    return None


def warm_up(paths: list[str]) -> None:
    """Import every reader satchel uses lazily, and their error paths, before the hook is on."""
    import numpy  # noqa: F401 - every caller of satchel has it imported

    import satchel

    for path in paths:
        try:
            satchel.detect(path)
            satchel.load(path)
        except satchel.SatchelError:
            pass
    for codec in ("unicode_escape", "raw_unicode_escape", "latin1", "ascii", "utf-8"):
        b"x".decode(codec)


def child(spec: dict[str, Any]) -> None:
    """Load one case under the audit hook and memory cap; write the report to ``spec['out']``.

    Runs in a process of its own (forked from a warm server, or a fresh interpreter), whose
    working folder is the case folder. With ``spec['control']`` the file is given to
    ``pickle.loads`` instead: the positive control that shows the hook sees code running.
    """
    import resource

    import satchel

    events_fd = os.open(spec["events"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    python = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *sys.path) if p}
    roots = (
        *(p + os.sep for p in python if os.path.isdir(p) and p != "/"),
        os.path.realpath(spec["folder"]) + os.sep,
        "/proc/self/",
        "/sys/devices/system/cpu/",
    )
    armed = [False]

    def record(kind: str, event: str, args: Any) -> None:
        os.write(events_fd, (json.dumps([kind, event, repr(args)[:300]]) + "\n").encode())

    def hook(event: str, args: tuple[Any, ...]) -> None:
        # Records, then refuses (raising in a hook aborts the operation): nothing hostile runs
        # even when a reader is broken, and the report says what was attempted.
        if not armed[0]:
            return
        if event == "open":
            target, mode, flags = (*args, None, None, None)[:3]
            if isinstance(target, int):
                return
            path = os.path.realpath(os.fsdecode(target))
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            if writes or not (path + os.sep).startswith(roots):
                record("exec", event, args)
                raise PermissionError(f"corpus runner: refused open of {path}")
        elif event in ("exec", "compile"):
            code = args[0] if event == "exec" else None
            name = code.co_filename if code is not None else args[1]
            if not (isinstance(name, str) and os.path.isabs(name) and os.path.isfile(name)):
                record("exec", event, args)
                raise PermissionError(f"corpus runner: refused {event} of foreign code")
        elif event == "import":
            record("note", event, args[:1])
        elif event in _EVENTS or event.startswith(_PREFIXES):
            record("exec", event, args)
            raise PermissionError(f"corpus runner: refused {event}")

    def load(path: str) -> Any:
        if spec.get("control"):
            return pickle.loads(Path(path).read_bytes())  # the positive control
        return satchel.load(path)

    resource.setrlimit(resource.RLIMIT_AS, (spec["memory"], spec["memory"]))
    sys.addaudithook(hook)
    armed[0] = True
    report: dict[str, Any] = {"detected": None}
    with contextlib.suppress(satchel.SatchelError):
        report["detected"] = satchel.detect(spec["path"])
    t0 = time.perf_counter()
    try:
        value = load(spec["path"])
        odd = _plain(value)
        report |= {"outcome": "internal" if odd else "loaded", "detail": odd or f"{value!r:.100}"}
    except satchel.UnsafeContentError as e:
        report |= {"outcome": "unsafe", "detail": str(e)}
    except satchel.SatchelError as e:
        report |= {"outcome": "refused", "detail": f"{type(e).__name__}: {e}"}
    except MemoryError as e:
        report |= {"outcome": "crashed", "detail": f"MemoryError under the memory cap: {e}"}
    except BaseException as e:  # the point is to report it
        report |= {"outcome": "foreign", "detail": f"{type(e).__name__}: {e}"}
    report["seconds"] = time.perf_counter() - t0
    report["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    armed[0] = False  # the report is written by the runner's own code
    fd = os.open(spec["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, json.dumps(report).encode())
    os.close(fd)


def serve() -> None:
    """Warm up once, then fork one child per case named on stdin; answer with its exit status.

    Requests and answers are JSON lines. The child gets its own session (so that anything it
    started can be killed with it), the case folder as working folder, ``HOME`` and
    ``TMPDIR``, and its output in the case log; it is killed at the request's timeout.
    """
    warmed = False
    for line in sys.stdin:
        req = json.loads(line)
        spec = json.loads(Path(req["spec"]).read_text())
        if not warmed:
            warm_up(spec["warmup"])
            warmed = True
        pid = os.fork()
        if pid == 0:  # the child: never returns into this loop
            try:
                log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.setsid()
                os.chdir(spec["folder"])
                os.environ.update(HOME=spec["folder"], TMPDIR=spec["folder"])
                child(spec)
            finally:
                os._exit(0)
        deadline = time.monotonic() + req["timeout"]
        hung = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                hung = True
                os.killpg(pid, 9)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.002)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status), "hung": hung}), flush=True)


# -- the parent ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    file: str
    expect: str
    wrapper: str  # "as-is" or a WRAPPERS key
    source: Path


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    detected: str | None
    seconds: float
    notes: list[str]
    ok: bool = True


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The manifest's entries, each file checked against its recorded size and sha256."""
    entries: list[dict[str, Any]] = json.loads((folder / "MANIFEST.json").read_text())
    for e in entries:
        data = (folder / e["file"]).read_bytes()
        if len(data) != e["size"] or hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise SystemExit(f"{e['file']}: size or sha256 differs from MANIFEST.json")
        if e["expect"] not in ("refuse", "load", "either"):
            raise SystemExit(f"{e['file']}: unknown expect {e['expect']!r}")
    return entries


def plan(folder: Path, entries: list[dict[str, Any]], wrappers: list[str]) -> list[Case]:
    cases = []
    for e in entries:
        src = folder / e["file"]
        cases.append(Case(e["file"], e["expect"], "as-is", src))
        if is_pickle_stream(src.read_bytes()):
            cases.extend(Case(e["file"], e["expect"], w, src) for w in wrappers)
    return cases


def expected(case: Case) -> set[str]:
    """Outcomes that meet the manifest's expectation for this case."""
    if case.expect == "refuse":
        return {"unsafe", "refused"} if case.wrapper == "as-is" else {"unsafe"}
    if case.expect == "load" and case.wrapper == "as-is":
        return {"loaded"}
    return {"unsafe", "refused", "loaded"}


class Launcher:
    """Runs one case spec in its own process: forked from a warm server, or (``fresh``) a new
    interpreter per case. Returns ``(exit status, hung, output tail)``."""

    def __init__(self, jobs: int, *, fresh: bool) -> None:
        self.fresh = fresh
        self.idle: queue.SimpleQueue[subprocess.Popen[str]] = queue.SimpleQueue()
        self.servers: list[subprocess.Popen[str]] = []
        if not fresh:
            for _ in range(jobs):
                self.servers.append(self._start())
                self.idle.put(self.servers[-1])

    @staticmethod
    def _env() -> dict[str, str]:
        quiet = ("PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        return {**os.environ, **dict.fromkeys(quiet, "1")}

    def _start(self) -> subprocess.Popen[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        return subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self._env()
        )

    def run(self, spec: dict[str, Any], spec_path: Path, timeout: float) -> tuple[int, bool, str]:
        log = Path(spec["log"])
        if self.fresh:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
            env = {**self._env(), "HOME": spec["folder"], "TMPDIR": spec["folder"]}
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    cmd, cwd=spec["folder"], env=env, stdout=out, stderr=out,
                    start_new_session=True,
                )  # fmt: skip
                try:
                    status, hung = proc.wait(timeout=timeout), False
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    status, hung = proc.wait(), True
        else:
            server = self.idle.get()
            try:
                assert server.stdin is not None and server.stdout is not None
                server.stdin.write(json.dumps({"spec": str(spec_path), "timeout": timeout}) + "\n")
                server.stdin.flush()
                answer = server.stdout.readline()
            except OSError:
                answer = ""
            if answer:
                reply = json.loads(answer)
                status, hung = reply["status"], reply["hung"]
                self.idle.put(server)
            else:  # the server itself died: report the case as crashed, start another
                status, hung = -1, False
                self.idle.put(self._start())
        tail = log.read_bytes()[-300:].decode("utf-8", "replace") if log.exists() else ""
        return status, hung, tail

    def close(self) -> None:
        for server in self.servers:
            if server.stdin is not None:
                server.stdin.close()
            server.wait()


def run_case(
    case: Case, index: int, work: Path, *, launcher: Launcher, warmup: list[str], args: Any
) -> Result:
    folder = work / f"case{index:04d}"
    folder.mkdir()
    name = Path(case.file).name
    if case.wrapper == "as-is":
        target = folder / name
        shutil.copyfile(case.source, target)
    else:
        suffix, write = WRAPPERS[case.wrapper]
        target = write(folder / (Path(name).stem + suffix), case.source.read_bytes())
    stem = work / f"case{index:04d}"
    spec = {
        "path": str(target),
        "folder": str(folder),
        "out": f"{stem}.out.json",
        "events": f"{stem}.events",
        "log": f"{stem}.log",
        "warmup": warmup,
        "memory": args.memory_mib << 20,
        "control": args.control,
    }
    spec_path = Path(f"{stem}.spec.json")
    spec_path.write_text(json.dumps(spec))
    before = sorted(str(p) for p in folder.rglob("*"))
    t0 = time.perf_counter()
    status, hung, tail = launcher.run(spec, spec_path, args.timeout)
    events_path = Path(spec["events"])
    lines = events_path.read_text().splitlines() if events_path.exists() else []
    events = [json.loads(line) for line in lines]
    notes = [f"{ev} {a}" for kind, ev, a in events if kind == "note"]
    executed = [f"{ev} {a}" for kind, ev, a in events if kind == "exec"]
    changed = sorted(str(p) for p in folder.rglob("*")) != before
    out_path = Path(spec["out"])
    report = json.loads(out_path.read_text()) if out_path.exists() else None
    if executed or changed:
        outcome = "executed"
        detail = "; ".join(executed) or "files appeared in the case folder"
    elif hung:
        outcome, detail = "hung", f"no answer after {args.timeout} s"
    elif report is None or status != 0:
        outcome, detail = "crashed", f"exit status {status}: {tail}"
    else:
        outcome, detail = report["outcome"], report["detail"]
    seconds = report["seconds"] if report else time.perf_counter() - t0
    detected = report["detected"] if report else None
    result = Result(case, outcome, detail, detected, seconds, notes)
    result.ok = outcome not in ALWAYS_BAD and outcome in expected(case)
    if args.control:
        result.ok = outcome == "executed"
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def build_warmup(work: Path) -> list[str]:
    """Harmless files in every wrapper (one that loads, one refused) to import readers early."""
    folder = work / "warmup"
    folder.mkdir()
    paths = []
    for i, payload in enumerate((P2 + b"}q\x00.", P2 + b"c__main__\nnothing\n.")):
        for name, (suffix, write) in WRAPPERS.items():
            paths.append(str(write(folder / f"{name}-{i}{suffix}", payload)))
    (folder / "bare.pkl").write_bytes(P2 + b"N.")
    return [*paths, str(folder / "bare.pkl")]


def table(results: list[Result], rows: list[str], *, markdown: bool) -> str:
    """Counts of outcomes by wrapper (rows), plus a total row and the failures per row."""
    counts: dict[str, collections.Counter[str]] = {r: collections.Counter() for r in rows}
    for res in results:
        counts[res.case.wrapper].update(["cases", res.outcome] + ([] if res.ok else ["FAILED"]))
    total: collections.Counter[str] = sum(counts.values(), collections.Counter())
    cols = ["cases", *OUTCOMES, "FAILED"]
    lines = []
    for name, c in [*counts.items(), ("total", total)]:
        cells = [str(c[k]) for k in cols]
        if markdown:
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"{name:<15}" + "".join(f"{x:>9}" for x in cells))
    if markdown:
        head = "| wrapper | " + " | ".join(cols) + " |"
        return "\n".join([head, "|---" + "|---:" * len(cols) + "|", *lines])
    return "\n".join([f"{'wrapper':<15}" + "".join(f"{k:>9}" for k in cols), *lines])


def report(results: list[Result], wrappers: list[str], args: Any) -> None:
    rows = ["as-is", *wrappers]
    print(table(results, rows, markdown=args.markdown))
    by_expect: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_expect[r.case.expect].append(r)
    for expect, group in sorted(by_expect.items()):
        print(f"\nexpect = {expect} ({len({r.case.file for r in group})} files)\n")
        print(table(group, rows, markdown=args.markdown))
    failures = [r for r in results if not r.ok]
    if failures:
        print(f"\n{len(failures)} FAILURES")
        for r in failures:
            want = "executed" if args.control else "/".join(sorted(expected(r.case)))
            print(f"- {r.case.file} [{r.case.wrapper}] expect={r.case.expect}: wanted {want}, "
                  f"got {r.outcome} (detected as {r.detected}): {r.detail[:240]}")  # fmt: skip
    noted = [r for r in results if r.notes]
    if noted:
        print(f"\n{len(noted)} cases imported modules after the warm-up (not failures):")
        for r in noted[:20]:
            print(f"- {r.case.file} [{r.case.wrapper}]: {', '.join(r.notes)[:200]}")
    slowest = max(results, key=lambda r: r.seconds, default=None)
    if slowest is not None:
        print(f"\nslowest load: {slowest.seconds * 1000:.0f} ms ({slowest.case.file} "
              f"[{slowest.case.wrapper}])")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("corpus", nargs="?", type=Path, help="folder holding MANIFEST.json")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cases at a time")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    ap.add_argument("--memory-mib", type=int, default=2048, help="RLIMIT_AS of each case")
    ap.add_argument("--wrappers", default=",".join(WRAPPERS), help="comma-separated subset")
    ap.add_argument("--only", default="", help="run only files whose path contains this")
    ap.add_argument("--fresh", action="store_true", help="a new interpreter per case (slow)")
    ap.add_argument(
        "--control", action="store_true",
        help="positive control: give each file to pickle.loads, expect every case 'executed'",
    )  # fmt: skip
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    ap.add_argument("--json", type=Path, help="write every result to this file")
    ap.add_argument("--keep", action="store_true", help="keep the case folders")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        warm_up(spec["warmup"])
        child(spec)
        return 0
    if args.corpus is None:
        ap.error("the corpus folder is required")
    wrappers = [] if args.control else [w for w in args.wrappers.split(",") if w]
    unknown = set(wrappers) - set(WRAPPERS)
    if unknown:
        ap.error(f"unknown wrappers {sorted(unknown)}; known: {', '.join(WRAPPERS)}")
    entries = [e for e in read_manifest(args.corpus) if args.only in e["file"]]
    if args.control:  # the hostile pickle streams only: the others never reach pickle.loads
        folder = args.corpus
        entries = [
            e for e in entries
            if e["expect"] == "refuse" and is_pickle_stream((folder / e["file"]).read_bytes())
        ]  # fmt: skip
    cases = plan(args.corpus, entries, wrappers)
    work = Path(tempfile.mkdtemp(prefix="satchel-corpus-"))
    t0 = time.perf_counter()
    launcher = Launcher(max(1, args.jobs), fresh=args.fresh)
    try:
        warmup = build_warmup(work)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(
                pool.map(
                    lambda ic: run_case(
                        ic[1], ic[0], work, launcher=launcher, warmup=warmup, args=args
                    ),
                    enumerate(cases),
                )
            )
    finally:
        launcher.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    wrapped = len({r.case.file for r in results if r.case.wrapper != "as-is"})
    mode = "fresh interpreter" if args.fresh else "forked process"
    print(f"{len(entries)} files ({wrapped} pickle streams wrapped in {len(wrappers)} "
          f"containers), {len(results)} cases, one {mode} each, {wall:.0f} s with --jobs "
          f"{args.jobs}" + (" [CONTROL: pickle.loads]" if args.control else "") + "\n")  # fmt: skip
    report(results, wrappers, args)
    if args.json:
        rows = [
            {"file": r.case.file, "wrapper": r.case.wrapper, "expect": r.case.expect,
             "outcome": r.outcome, "ok": r.ok, "detected": r.detected, "detail": r.detail,
             "seconds": r.seconds, "notes": r.notes}
            for r in results
        ]  # fmt: skip
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
