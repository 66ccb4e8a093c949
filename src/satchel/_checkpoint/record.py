"""The commit record of a step folder (SPEC 8.3): written last, checked first.

Its presence makes a folder a checkpoint; the sizes and whole-file xxh3-64 digests it lists
decide whether that checkpoint is valid. It is JSON (never pickle) with a strict schema, and
(version 2) ends with its own xxh3-64, so that no damaged record passes for a valid one. An
item is one file, or (sharded, SPEC 8.15) a folder whose every file the record lists; a step
of an incremental save (version 3, SPEC 8.18) also lists the pool files it references. The
record is opened as ``files`` opens every file of a step (SPEC 8.12); ``validity`` checks the
files it lists.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
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
from .._shards.pool import is_pool_file
from .._version import __version__
from ..errors import FormatError, IntegrityError
from .files import open_regular, read_at_most, step_folder
from .layout import COMMIT_FILE, SHARD_INDEX, is_item_file, is_item_folder, is_item_member

__all__ = [
    "CommitRecord",
    "FileRecord",
    "ItemRecord",
    "read_commit",
    "write_commit",
]

_FORMAT = "satchel-checkpoint"
_VERSION = 2  # 1: satchel 0.1.0, without record_xxh3 (still read)
_POOLED = 3  # SPEC 8.18: a step of an incremental save, listing the pool files it references
_KNOWN = (1, 2, 3)
_MAX_RECORD = 16 << 20  # a commit record lists files and numbers; more than 16 MiB is damage
# SPEC 8.3: a version 2 record ends with this member; its digest covers every byte before the
# comma. Only whitespace may follow the object's closing brace.
_SEAL_KEY = "record_xxh3"
_SEAL = re.compile(rb',\s*"record_xxh3"\s*:\s*"([0-9a-f]{16})"\s*\}\s*\Z')


@dataclass(frozen=True)
class FileRecord:
    """One file of a checkpoint: its basename, size and whole-file xxh3-64."""

    file: str
    size: int
    xxh3: str


@dataclass(frozen=True)
class ItemRecord:
    """One item of a checkpoint: a single file, or a folder (a sharded item, SPEC 8.15: its
    shards and index; a distributed one, SPEC 10.2: its pieces and layout).

    ``files`` lists every file of the item, each checked on its own (SPEC 8.4); for a folder
    item they lie in ``folder``.
    """

    files: tuple[FileRecord, ...]
    folder: str | None = None

    @staticmethod
    def single(file: str, size: int, xxh3: str) -> ItemRecord:
        return ItemRecord((FileRecord(file, size, xxh3),))

    @property
    def file(self) -> str:
        """What ``load`` opens, relative to the step folder: the file; for a folder that holds
        a shard index, that index (never a file added to the folder later); else the folder."""
        if self.folder is None:
            return self.files[0].file
        if any(f.file == SHARD_INDEX for f in self.files):
            return f"{self.folder}/{SHARD_INDEX}"
        return self.folder

    @property
    def size(self) -> int:
        """The bytes of all its files."""
        return sum(f.size for f in self.files)


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
    # SPEC 8.18: the pool files (in the root's ``blobs/``) an incremental step references.
    pool: tuple[FileRecord, ...] = ()

    @staticmethod
    def new(
        step: int,
        items: Mapping[str, ItemRecord],
        metrics: Mapping[str, float],
        retention: tuple[str, ...] = (),
        kept: Mapping[str, tuple[int, ...]] | None = None,
        *,
        pool: tuple[FileRecord, ...] = (),
    ) -> CommitRecord:
        return CommitRecord(
            step,
            time.time(),
            dict(metrics),
            dict(items),
            _versions(),
            retention,
            dict(kept or {}),
            pool,
        )

    @property
    def size(self) -> int:
        """The bytes of every file the step lists, its pool files included."""
        return sum(r.size for r in self.items.values()) + sum(f.size for f in self.pool)


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
        "version": _POOLED if record.pool else _VERSION,
        "step": record.step,
        "time": record.time,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.time)),
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in record.metrics.items()},
        "items": {name: _item_json(r) for name, r in record.items.items()},
        "versions": dict(record.versions),
        "retention": list(record.retention),
    }
    if record.kept:
        doc["kept"] = {name: list(steps) for name, steps in record.kept.items()}
    if record.pool:
        doc["pool"] = [{"file": f.file, "size": f.size, "xxh3": f.xxh3} for f in record.pool]
    text = json.dumps(doc, indent=1, allow_nan=False)
    body = text[: text.rindex("}")].rstrip().encode("ascii")
    data = body + f',\n "{_SEAL_KEY}": "{xxh3_hex(body)}"\n}}\n'.encode("ascii")
    fd = os.open(folder / COMMIT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _item_json(item: ItemRecord) -> dict[str, Any]:
    files = [{"file": f.file, "size": f.size, "xxh3": f.xxh3} for f in item.files]
    return files[0] if item.folder is None else {"folder": item.folder, "files": files}


def read_commit(folder: Path, *, expected_step: int | None) -> CommitRecord:
    """Parse and validate the commit record of ``folder``.

    Raises:
        FormatError: missing, oversized, malformed or not a regular file; ``folder`` is a link.
        IntegrityError: the record does not match its own checksum (damaged).
        OSError: the folder or the record cannot be read (``FileNotFoundError``: no folder).
    """
    where = str(folder / COMMIT_FILE)
    with step_folder(folder) as dir_fd:
        try:
            fd = open_regular(dir_fd, COMMIT_FILE, where)
        except FileNotFoundError as e:
            raise FormatError(f"{where}: no commit record (the save did not finish)") from e
        try:
            if os.fstat(fd).st_size > _MAX_RECORD:
                raise FormatError(f"{where}: commit record larger than {_MAX_RECORD} bytes")
            raw = read_at_most(fd, _MAX_RECORD + 1)
        finally:
            os.close(fd)
    if len(raw) > _MAX_RECORD:  # it grew after fstat
        raise FormatError(f"{where}: commit record larger than {_MAX_RECORD} bytes")
    doc = json_object(raw, where=where, what="commit record")
    version = doc.get("version")
    if doc.get("format") != _FORMAT:
        raise FormatError(f"{where}: not a satchel checkpoint record (format/version)")
    if isinstance(version, bool) or version not in _KNOWN:
        raise FormatError(
            f"{where}: commit record version {version!r}; this satchel reads versions "
            f"{', '.join(map(str, _KNOWN))}: a newer satchel wrote it, upgrade to read it",
            path=where,
            field="version",
        )
    _check_seal(raw, doc, version, where)
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
    pool = _pool(doc.get("pool"), version, where)
    return CommitRecord(
        step,
        float(t),
        metrics,
        items,
        versions,
        tuple(kept),
        _kept(doc.get("kept", {}), where),
        pool,
    )


def _pool(value: Any, version: int, where: str) -> tuple[FileRecord, ...]:
    """SPEC 8.18: a version 3 record lists its pool files; earlier versions have none."""
    if version != _POOLED:
        if value is not None:
            raise FormatError(f"{where}: field 'pool' in a version {version} record", field="pool")
        return ()
    if not isinstance(value, list) or not value:
        raise FormatError(f"{where}: field 'pool' must be a non-empty list", field="pool")
    out = []
    for i, f in enumerate(value):
        at = f"{where}: pool[{i}]"
        if not isinstance(f, dict) or set(f) != {"file", "size", "xxh3"}:
            raise FormatError(f"{at} must have exactly file, size, xxh3", field="pool")
        if not is_pool_file(f["file"]):
            raise FormatError(f"{at}.file {f['file']!r} is not a pool file name", field="pool")
        out.append(_file(f, at))
    if len({f.file for f in out}) != len(out):
        raise FormatError(f"{where}: field 'pool' lists a file twice", field="pool")
    return tuple(out)


def _check_seal(raw: bytes, doc: Mapping[str, Any], version: int, where: str) -> None:
    """SPEC 8.3: a version 2 record ends with its own xxh3-64; a version 1 record has none."""
    if version == 1:
        # 0.1.0 wrote no checksum. A version 1 record that has one is a damaged version 2 one.
        if _SEAL_KEY in doc:
            raise FormatError(f"{where}: a version 1 record with {_SEAL_KEY!r} (damaged)")
        return
    m = _SEAL.search(raw)
    if m is None or doc.get(_SEAL_KEY) != m.group(1).decode("ascii"):
        raise FormatError(f"{where}: the record does not end with its checksum {_SEAL_KEY!r}")
    if xxh3_hex(raw[: m.start()]) != m.group(1).decode("ascii"):
        raise IntegrityError(
            f"{where}: the commit record does not match its checksum {_SEAL_KEY!r} (damaged)",
            path=where,
            field=_SEAL_KEY,
            reason="commit record checksum mismatch",
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
        if isinstance(rec, dict) and set(rec) == {"folder", "files"}:
            out[name] = _folder_item(rec, at)
            continue
        if not isinstance(rec, dict) or set(rec) != {"file", "size", "xxh3"}:
            raise FormatError(f"{at} must have exactly file, size, xxh3 (or folder, files)")
        # Plain basenames only: a record must never point outside its folder.
        if not isinstance(rec["file"], str) or not is_item_file(rec["file"]):
            raise FormatError(f"{at}.file {rec['file']!r} is not a plain '<name>.satchel' basename")
        out[name] = ItemRecord((_file(rec, at),))
    return out


def _folder_item(rec: dict[str, Any], at: str) -> ItemRecord:
    """SPEC 8.16: ``{folder, files}``, every file a plain name in the folder, none twice."""
    folder, files = rec["folder"], rec["files"]
    if not isinstance(folder, str) or not is_item_folder(folder):
        raise FormatError(f"{at}.folder {folder!r} is not a plain item folder name")
    if not isinstance(files, list) or not files:
        raise FormatError(f"{at}.files must be a non-empty list")
    out = []
    for i, f in enumerate(files):
        fat = f"{at}.files[{i}]"
        if not isinstance(f, dict) or set(f) != {"file", "size", "xxh3"}:
            raise FormatError(f"{fat} must have exactly file, size, xxh3")
        if not isinstance(f["file"], str) or not is_item_member(f["file"]):
            raise FormatError(f"{fat}.file {f['file']!r} is not a plain file name")
        out.append(_file(f, fat))
    names = [f.file for f in out]
    if len(set(names)) != len(names):
        raise FormatError(f"{at}.files lists a file twice")
    return ItemRecord(tuple(out), folder)


def _file(rec: dict[str, Any], at: str) -> FileRecord:
    size, digest = rec["size"], rec["xxh3"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**63:
        raise FormatError(f"{at}.size {size!r} is not a byte count")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{16}", digest)):
        raise FormatError(f"{at}.xxh3 must be 16 lowercase hex digits")
    return FileRecord(rec["file"], size, digest)
