"""``satchel.verify``: every structural rule and checksum of a file, folder or checkpoint root.

Unlike ``load``, it does not stop at the first bad tensor: it lists them all, so a person can
see how much of a file survived.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ._checkpoint import (
    CheckpointInfo,
    CheckpointRoot,
    check_files,
    has_commit,
    read_commit,
    step_of,
)
from ._checkpoint import is_root as is_checkpoint_root
from ._checkpoint.remote import RemoteManager
from ._io.atomic import stale_temps
from ._progress import ProgressArg, reporter
from ._read.file import ArrayFile
from ._read.open import open_path
from ._remote.url import StorageOptions, is_url
from .errors import IntegrityError, SatchelError, UsageError
from .formats.detect import sniffed

__all__ = ["Problem", "VerifyReport", "verify"]

_NATIVE = ("satchel", "safetensors")

Status = Literal["ok", "corrupt", "unreadable"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where (a tensor, file or step) and what."""

    where: str
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """``status`` is ``ok`` (all checks pass), ``corrupt`` (readable, some data bad) or
    ``unreadable`` (the structure itself is broken). ``checked`` counts what was checked.
    ``warnings`` are not about the data: temp files that killed saves left in the folder."""

    path: str
    format: str
    status: Status
    checked: int
    problems: tuple[Problem, ...] = ()
    checksummed: bool = True
    checkpoints: tuple[CheckpointInfo, ...] = ()  # a checkpoint root's step folders, verified
    warnings: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify(
    path: str | os.PathLike[str],
    *,
    progress: ProgressArg = None,
    storage_options: StorageOptions = None,
) -> VerifyReport:
    """Check ``path`` completely and report every problem found (never raises for bad data).

    A satchel file: header, manifest and every tensor's xxh3-64. A plain safetensors file: the
    structure (it has no checksums: ``checksummed`` is False). A checkpoint root or step folder
    (see CheckpointManager): every checkpoint's commit record and files. Other formats: a full
    read with their own checks (TensorFlow's crc32c, zip CRCs). A URL (a satchel/safetensors
    object or a sharded folder, SPEC 11) is fetched with parallel ranged reads, configured by
    ``storage_options``.

    Raises:
        SatchelFileNotFoundError: the path does not exist.
    """
    if is_url(path):
        return _verify_url(str(path), progress, storage_options)
    if storage_options:
        raise UsageError(f"{path}: storage_options apply to URLs (s3://...), not to local paths")
    p = Path(path)
    if is_checkpoint_root(p):
        report = _verify_root(p, progress)
    elif p.is_dir() and has_commit(p):
        report = _verify_step(p)
    else:
        report = _verify_file(p, progress)
    return replace(report, warnings=_stale(p if p.is_dir() else p.parent))


def _stale(folder: Path) -> tuple[Problem, ...]:
    # SPEC 7.3: the next save into the folder removes them; until then they take disk space.
    why = (
        "temporary file left by a killed save (its process is gone); the next save into this "
        "folder removes it, or delete it"
    )
    return tuple(Problem(str(t), why) for t in stale_temps(folder))


def _verify_file(p: Path, progress: ProgressArg) -> VerifyReport:
    """One file through the read pipeline: every storage checked, then the whole structure
    built (foreign formats find most damage while building)."""
    try:
        f = open_path(p)
    except SatchelError as e:
        try:
            fmt = sniffed(p, refine=False) or "unknown"  # the first bytes, on this error path
        except SatchelError:
            fmt = "unknown"
        native = fmt in ("unknown", *_NATIVE)
        status: Status = "corrupt" if isinstance(e, IntegrityError) and not native else "unreadable"
        return VerifyReport(str(p), fmt, status, 0, (Problem(str(p), str(e)),), native)
    return _verify_open(f, str(p), p.name, progress)


def _verify_url(url: str, progress: ProgressArg, options: StorageOptions) -> VerifyReport:
    try:
        f = open_path(url, storage_options=options, whole=True)
    except IntegrityError as e:
        return VerifyReport(url, "unknown", "corrupt", 0, (Problem(url, str(e)),))
    except SatchelError as e:
        # Not a file nor a sharded folder: a checkpoint root in object storage (SPEC 11.9)?
        infos = tuple(RemoteManager(url, storage_options=options).checkpoints(verify=True))
        if not infos:
            return VerifyReport(url, "unknown", "unreadable", 0, (Problem(url, str(e)),))
        problems = tuple(Problem(f"step {i.step}", i.problem) for i in infos if i.problem)
        status: Status = "corrupt" if problems else "ok"
        return VerifyReport(url, "checkpoint-root", status, len(infos), problems, True, infos)
    return _verify_open(f, url, url.rstrip("/").rpartition("/")[2], progress)


def _verify_open(f: ArrayFile, where: str, name: str, progress: ProgressArg) -> VerifyReport:
    with f:
        storages = f.storages()
        total = sum(s.nbytes for s in storages)
        report = reporter(progress, total, f"verifying {name}")
        problems, done = [], 0
        for s in storages:
            try:
                s.data  # noqa: B018 - touching the bytes runs their check
            except IntegrityError as e:
                problems.append(Problem(e.field or s.name, e.reason or str(e)))
            done += s.nbytes
            if report is not None:
                report(done)
        if report is not None:
            report(total)
        if not problems:
            try:
                f.load()
            except IntegrityError as e:
                problems.append(Problem(e.field or where, str(e)))
            except SatchelError as e:
                fail = (Problem(where, str(e)),)
                return VerifyReport(where, f.format, "unreadable", 0, fail, f.checksummed)
    status: Status = "corrupt" if problems else "ok"
    # Stored tensors for satchel's own files (tied weights count once); arrays for the rest.
    checked = len(storages) if f.format in _NATIVE else len(f)
    return VerifyReport(where, f.format, status, checked, tuple(problems), f.checksummed)


def _verify_root(p: Path, progress: ProgressArg) -> VerifyReport:
    infos = tuple(CheckpointRoot(p).checkpoints(verify=True, progress=progress))
    problems = tuple(Problem(f"step {i.step}", i.problem) for i in infos if i.problem)
    status: Status = "corrupt" if problems else "ok"
    return VerifyReport(str(p), "checkpoint-root", status, len(infos), problems, True, infos)


def _verify_step(p: Path) -> VerifyReport:
    try:
        record = read_commit(p, expected_step=step_of(p))
    except (SatchelError, OSError) as e:
        return VerifyReport(str(p), "checkpoint", "unreadable", 0, (Problem(str(p), str(e)),))
    problem = check_files(p, record)
    if problem:
        return VerifyReport(
            str(p), "checkpoint", "corrupt", len(record.items), (Problem(str(p), problem),)
        )
    return VerifyReport(str(p), "checkpoint", "ok", len(record.items))
