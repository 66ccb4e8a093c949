"""The commit record of a step folder (SPEC 8.3): written last, checked first.

Its presence makes a folder a checkpoint; the sizes and whole-file xxh3-64 digests it lists
decide whether that checkpoint is valid. It is JSON (never pickle) with a strict schema, and
(version 2) ends with its own xxh3-64, so that no damaged record passes for a valid one.

Every file of a step is opened here and only here, never through a link and only if it is a
regular file (SPEC 8.12): a FIFO or a device named like a checkpoint file must not block or
feed a reader, and a link must not lead a reader (or a writer's retention) out of the root.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import re
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .._format.header import json_object
from .._format.validate import xxh3_hex
from .._io.atomic import write_all
from .._version import __version__
from ..errors import FormatError, IntegrityError
from .layout import COMMIT_FILE, is_item_file

__all__ = [
    "CommitRecord",
    "ItemRecord",
    "check_files",
    "read_commit",
    "write_commit",
]

_FORMAT = "satchel-checkpoint"
_VERSION = 2  # 1: satchel 0.1.0, without record_xxh3 (still read)
_MAX_RECORD = 16 << 20  # a commit record lists files and numbers; more than 16 MiB is damage
_CHUNK = 4 << 20  # item files are hashed this many bytes at a time
# SPEC 8.3: a version 2 record ends with this member; its digest covers every byte before the
# comma. Only whitespace may follow the object's closing brace.
_SEAL_KEY = "record_xxh3"
_SEAL = re.compile(rb',\s*"record_xxh3"\s*:\s*"([0-9a-f]{16})"\s*\}\s*\Z')
# Read-only, never through a link, never waiting (a FIFO opens at once), never a terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    text = json.dumps(doc, indent=1, allow_nan=False)
    body = text[: text.rindex("}")].rstrip().encode("ascii")
    data = body + f',\n "{_SEAL_KEY}": "{xxh3_hex(body)}"\n}}\n'.encode("ascii")
    fd = os.open(folder / COMMIT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_commit(folder: Path, *, expected_step: int | None) -> CommitRecord:
    """Parse and validate the commit record of ``folder``.

    Raises:
        FormatError: missing, oversized, malformed or not a regular file; ``folder`` is a link.
        IntegrityError: the record does not match its own checksum (damaged).
        OSError: the folder or the record cannot be read (``FileNotFoundError``: no folder).
    """
    where = str(folder / COMMIT_FILE)
    with _step_folder(folder) as dir_fd:
        try:
            fd = _open_regular(dir_fd, COMMIT_FILE, where)
        except FileNotFoundError as e:
            raise FormatError(f"{where}: no commit record (the save did not finish)") from e
        try:
            if os.fstat(fd).st_size > _MAX_RECORD:
                raise FormatError(f"{where}: commit record larger than {_MAX_RECORD} bytes")
            raw = _read_at_most(fd, _MAX_RECORD + 1)
        finally:
            os.close(fd)
    if len(raw) > _MAX_RECORD:  # it grew after fstat
        raise FormatError(f"{where}: commit record larger than {_MAX_RECORD} bytes")
    doc = json_object(raw, where=where, what="commit record")
    version = doc.get("version")
    if doc.get("format") != _FORMAT or isinstance(version, bool) or version not in (1, 2):
        raise FormatError(f"{where}: not a satchel checkpoint record (format/version)")
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
    return CommitRecord(
        step, float(t), metrics, items, versions, tuple(kept), _kept(doc.get("kept", {}), where)
    )


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
    """Why the files disagree with the record, or ``None`` if the step is valid (SPEC 8.4).

    Any failure to read counts against the step (SPEC 8.12), never escapes as an error: a
    missing, non-regular or unreadable file, another size, another digest.
    """
    try:
        with _step_folder(folder) as dir_fd:
            for name, rec in record.items.items():
                problem = _check_item(dir_fd, name, rec, str(folder / rec.file))
                if problem is not None:
                    return problem
    except FileNotFoundError:
        return f"{folder.name}: the step folder is gone"
    except (FormatError, OSError) as e:
        return str(e)
    return None


def _check_item(dir_fd: int, name: str, rec: ItemRecord, where: str) -> str | None:
    what = f"item {name!r}: {rec.file}"
    try:
        fd = _open_regular(dir_fd, rec.file, where)
    except FileNotFoundError:
        return f"item {name!r}: file {rec.file} is missing"
    except FormatError as e:
        return f"{what}: {e.reason}"
    except OSError as e:
        return f"{what} cannot be read: {e}"
    try:
        size = os.fstat(fd).st_size
        if size != rec.size:
            return f"{what} is {size} bytes, record says {rec.size}"
        if _digest(fd, rec.size) != rec.xxh3:
            return f"{what} does not match its checksum (corrupt)"
    except OSError as e:
        return f"{what} cannot be read: {e}"
    finally:
        os.close(fd)
    return None


@contextmanager
def _step_folder(folder: Path) -> Iterator[int]:
    """A descriptor of ``folder``, opened without following a link: files are opened in it."""
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise FormatError(f"{folder}: is {_kind(folder)}, not a step folder") from e
    try:
        yield fd
    finally:
        os.close(fd)


def _open_regular(dir_fd: int, name: str, where: str) -> int:
    """Open ``name`` in ``dir_fd`` for reading, refusing anything but a regular file.

    Raises:
        FormatError: a link, FIFO, folder, device or socket (``reason`` says which).
        OSError: it cannot be opened (``FileNotFoundError``: there is none).
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        kind = "a symbolic link" if e.errno == errno.ELOOP else "not openable"
        kind = "a folder" if e.errno == errno.EISDIR else kind
        raise _not_regular(where, kind) from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(where, _KINDS.get(stat.S_IFMT(mode), "a special file"))
    return fd


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFREG: "a regular file",
}


def _kind(path: Path) -> str:
    try:
        return _KINDS.get(stat.S_IFMT(os.lstat(path).st_mode), "a special file")
    except OSError:
        return "not readable"


def _not_regular(where: str, kind: str) -> FormatError:
    reason = f"is {kind}, not a regular file"
    return FormatError(f"{where}: {reason}", path=where, reason=reason)


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``: a bound on what a hostile file can make us hold."""
    parts, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _digest(fd: int, size: int) -> str:
    """xxh3-64 of the first ``size`` bytes of ``fd``, read in chunks (no mapping: a file cut
    short meanwhile is an error here, not a SIGBUS)."""
    h = xxhash.xxh3_64()
    buf = bytearray(min(size, _CHUNK))
    view = memoryview(buf)
    done = 0
    while done < size:
        n = os.preadv(fd, [view[: min(len(buf), size - done)]], done)
        if n == 0:
            raise OSError(errno.EIO, f"file ended after {done} of {size} bytes (cut short)")
        h.update(view[:n])
        done += n
    return h.hexdigest()
