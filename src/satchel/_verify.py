"""``satchel.verify``: every structural rule and checksum of a file, folder or checkpoint root.

Unlike ``load``, it does not stop at the first bad tensor: it lists them all, so a person can
see how much of a file survived.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._format.validate import xxh3_hex
from ._io.reader import open_file
from ._progress import ProgressArg, reporter
from .errors import SatchelError
from .formats.detect import sniffed

__all__ = ["Problem", "VerifyReport", "verify"]

Status = Literal["ok", "corrupt", "unreadable"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (a tensor, file or step) and what."""

    where: str
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """``status`` is ``ok`` (all checks pass), ``corrupt`` (readable, some data bad) or
    ``unreadable`` (the structure itself is broken). ``checked`` counts what was checked."""

    path: str
    format: str
    status: Status
    checked: int
    problems: tuple[Problem, ...] = ()
    checksummed: bool = True

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify(path: str | os.PathLike[str], *, progress: ProgressArg = None) -> VerifyReport:
    """Check ``path`` completely and report every problem found (never raises for bad data).

    A satchel file: header, manifest and every tensor's xxh3-64. A plain safetensors file: the
    structure (it has no checksums: ``checksummed`` is False). A checkpoint root or step folder
    (see CheckpointManager): every checkpoint's commit record and files. Other formats: a full
    read with their own checks (TensorFlow's crc32c, zip CRCs).

    Raises:
        SatchelFileNotFoundError: the path does not exist.
    """
    p = Path(path)
    if p.is_dir() and _is_checkpoint_root(p):
        return _verify_root(p)
    if p.is_dir() and (p / "manifest.json").is_file():
        return _verify_step(p)
    fmt = sniffed(p, refine=False)  # _verify_native tells satchel from safetensors itself
    if fmt in (None, "satchel", "safetensors"):
        return _verify_native(p, fmt or "unknown", progress)
    return _verify_foreign(p, fmt)


def _verify_native(p: Path, fmt: str, progress: ProgressArg) -> VerifyReport:
    try:
        opened = open_file(p)
    except SatchelError as e:
        return VerifyReport(str(p), fmt, "unreadable", 0, (Problem(str(p), str(e)),))
    m = opened.manifest
    if m is None:
        return VerifyReport(
            str(p), "safetensors", "ok", len(opened.header.entries), checksummed=False
        )
    total = sum(entry.nbytes for entry in opened.header.entries)
    report = reporter(progress, total, f"verifying {p.name}")
    problems, done = [], 0
    for entry in opened.header.entries:
        digest = xxh3_hex(opened.data[entry.start : entry.end])
        recorded = m.stored[entry.name].xxh3
        if digest != recorded:
            problems.append(
                Problem(entry.name, f"checksum mismatch (xxh3 {digest}, recorded {recorded})")
            )
        done += entry.nbytes
        if report is not None:
            report(done)
    if report is not None:
        report(total)
    status: Status = "corrupt" if problems else "ok"
    return VerifyReport(str(p), "satchel", status, len(opened.header.entries), tuple(problems))


def _verify_foreign(p: Path, fmt: str) -> VerifyReport:
    from ._foreign import ForeignFile
    from .errors import IntegrityError

    try:
        with ForeignFile(p, fmt, verify=True) as f:
            n = len(f)
            f.load()
    except IntegrityError as e:
        return VerifyReport(str(p), fmt, "corrupt", 0, (Problem(str(p), str(e)),), False)
    except SatchelError as e:
        return VerifyReport(str(p), fmt, "unreadable", 0, (Problem(str(p), str(e)),), False)
    return VerifyReport(str(p), fmt, "ok", n, checksummed=fmt == "tensorflow")


def _is_checkpoint_root(p: Path) -> bool:
    from ._lock import LOCK_FILE
    from ._steps import is_step_dir

    return (p / LOCK_FILE).exists() or any(is_step_dir(c) for c in p.iterdir())


def _verify_root(p: Path) -> VerifyReport:
    from ._manager import CheckpointManager

    infos = CheckpointManager.reader(p).checkpoints(verify=True)
    problems = tuple(Problem(f"step {i.step}", i.problem) for i in infos if i.problem)
    status: Status = "corrupt" if problems else "ok"
    return VerifyReport(str(p), "checkpoint-root", status, len(infos), problems)


def _verify_step(p: Path) -> VerifyReport:
    from ._commit import check_files, read_commit
    from ._steps import step_of

    step = step_of(p)
    try:
        record = read_commit(p, expected_step=step)
    except (SatchelError, OSError) as e:
        return VerifyReport(str(p), "checkpoint", "unreadable", 0, (Problem(str(p), str(e)),))
    problem = check_files(p, record)
    if problem:
        return VerifyReport(
            str(p), "checkpoint", "corrupt", len(record.items), (Problem(str(p), problem),)
        )
    return VerifyReport(str(p), "checkpoint", "ok", len(record.items))
