"""The commit record of a step folder (SPEC 8.3): written last, checked first.

Its presence makes a folder a checkpoint; the sizes and whole-file xxh3-64 digests it lists
decide whether that checkpoint is valid. It is JSON (never pickle) with a strict schema.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import platform
import re
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._format.header import json_object
from .._format.validate import xxh3_hex
from .._io.atomic import write_all
from .._version import __version__
from ..errors import FormatError
from .layout import COMMIT_FILE, is_item_file

__all__ = [
    "CommitRecord",
    "ItemRecord",
    "check_files",
    "read_commit",
    "write_commit",
]

_FORMAT = "satchel-checkpoint"
_VERSION = 1
_MAX_RECORD = 16 << 20  # a commit record lists files and numbers; more than 16 MiB is damage


@dataclass(frozen=True)
class ItemRecord:
    """One file of a checkpoint: its basename, size and whole-file xxh3-64."""

    file: str
    size: int
    xxh3: str


@dataclass(frozen=True)
class CommitRecord:
    """The parsed commit record of one checkpoint."""

    step: int
    time: float
    metrics: Mapping[str, float]
    items: Mapping[str, ItemRecord]
    versions: Mapping[str, str]
    retention: tuple[str, ...] = ()  # the saving manager's policies, e.g. "keep_last=3"
    # The steps each policy that readers cannot rebuild from its name (a user's own) kept at
    # this save: readers show it as is, since they cannot run that policy's code.
    kept: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @staticmethod
    def new(
        step: int,
        items: Mapping[str, ItemRecord],
        metrics: Mapping[str, float],
        retention: tuple[str, ...] = (),
        kept: Mapping[str, tuple[int, ...]] | None = None,
    ) -> CommitRecord:
        return CommitRecord(
            step, time.time(), dict(metrics), dict(items), _versions(), retention, dict(kept or {})
        )


def _versions() -> dict[str, str]:
    out = {"satchel": __version__, "python": platform.python_version(), "numpy": np.__version__}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(torch.__version__)
    return out


def write_commit(folder: Path, record: CommitRecord) -> None:
    """Write and fsync the commit record into ``folder`` (still under its temp name)."""
    doc: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "step": record.step,
        "time": record.time,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.time)),
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in record.metrics.items()},
        "items": {
            name: {"file": r.file, "size": r.size, "xxh3": r.xxh3}
            for name, r in record.items.items()
        },
        "versions": dict(record.versions),
        "retention": list(record.retention),
    }
    if record.kept:
        doc["kept"] = {name: list(steps) for name, steps in record.kept.items()}
    data = json.dumps(doc, indent=1, allow_nan=False).encode("ascii")
    fd = os.open(folder / COMMIT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_commit(folder: Path, *, expected_step: int | None) -> CommitRecord:
    """Parse and validate the commit record of ``folder``.

    Raises:
        FormatError: missing, oversized or malformed record, naming the field.
        OSError: the folder cannot be read.
    """
    path = folder / COMMIT_FILE
    where = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_RECORD + 1)
    except FileNotFoundError as e:
        raise FormatError(f"{where}: no commit record (the save did not finish)") from e
    if len(raw) > _MAX_RECORD:
        raise FormatError(f"{where}: commit record larger than {_MAX_RECORD} bytes")
    doc = json_object(raw, where=where, what="commit record")
    if doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        raise FormatError(f"{where}: not a satchel checkpoint record (format/version)")
    step = doc.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise FormatError(f"{where}: field 'step' is {step!r}, not a step number")
    if expected_step is not None and step != expected_step:
        raise FormatError(f"{where}: field 'step' is {step!r}, folder says {expected_step}")
    t = doc.get("time")
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise FormatError(f"{where}: field 'time' must be a number")
    metrics = _metrics(doc.get("metrics"), where)
    items = _items(doc.get("items"), where)
    versions = doc.get("versions")
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise FormatError(f"{where}: field 'versions' must map names to strings")
    kept = doc.get("retention", [])
    if not isinstance(kept, list) or not all(isinstance(k, str) for k in kept):
        raise FormatError(f"{where}: field 'retention' must be a list of policy names")
    return CommitRecord(
        step, float(t), metrics, items, versions, tuple(kept), _kept(doc.get("kept", {}), where)
    )


def _kept(value: Any, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: field 'kept' must be an object")
    out = {}
    for name, steps in value.items():
        if not isinstance(steps, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in steps
        ):
            raise FormatError(f"{where}: kept[{name!r}] must be a list of step numbers")
        out[name] = tuple(steps)
    return out


def _metrics(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: field 'metrics' must be an object")
    out = {}
    for k, v in value.items():
        if v is None:
            out[k] = math.nan
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FormatError(f"{where}: metric {k!r} must be a number or null")
        else:
            out[k] = float(v)
    return out


def _items(value: Any, where: str) -> dict[str, ItemRecord]:
    if not isinstance(value, dict) or not value:
        raise FormatError(f"{where}: field 'items' must be a non-empty object")
    out = {}
    for name, rec in value.items():
        at = f"{where}: items[{name!r}]"
        if not isinstance(rec, dict) or set(rec) != {"file", "size", "xxh3"}:
            raise FormatError(f"{at} must have exactly file, size, xxh3")
        file, size, digest = rec["file"], rec["size"], rec["xxh3"]
        # Plain basenames only: a record must never point outside its folder.
        if not isinstance(file, str) or not is_item_file(file):
            raise FormatError(f"{at}.file {file!r} is not a plain '<name>.satchel' basename")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**63:
            raise FormatError(f"{at}.size {size!r} is not a byte count")
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{16}", digest)):
            raise FormatError(f"{at}.xxh3 must be 16 lowercase hex digits")
        out[name] = ItemRecord(file, size, digest)
    return out


def check_files(folder: Path, record: CommitRecord) -> str | None:
    """Why the files disagree with the record (missing, size, digest), or ``None`` if valid."""
    for name, rec in record.items.items():
        path = folder / rec.file
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"item {name!r}: file {rec.file} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"item {name!r}: {rec.file} is not a regular file"
        if st.st_size != rec.size:
            return f"item {name!r}: {rec.file} is {st.st_size} bytes, record says {rec.size}"
        try:
            if rec.size and _digest(path) != rec.xxh3:
                return f"item {name!r}: {rec.file} does not match its checksum (corrupt)"
        except FileNotFoundError:  # deleted between lstat and open (a concurrent writer)
            return f"item {name!r}: file {rec.file} is missing"
    return None


def _digest(path: Path) -> str:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return xxh3_hex(mm)
