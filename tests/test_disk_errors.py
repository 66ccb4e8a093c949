"""Real disk failures surface as satchel errors that keep their builtin class and ``errno``.

Every error here is caused for real, never injected: a 1 MiB tmpfs for ENOSPC (mounted by the
test; tests run as root), a read-only tmpfs for EROFS, ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored
for EFBIG, a process that drops root for EACCES (root ignores permission bits), a destination
that is a folder for EISDIR and a path through a file for ENOTDIR. Where a tmpfs cannot be
mounted (no root, no CAP_SYS_ADMIN) those tests fail rather than skip: the suite runs as root,
as CI does.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel.errors import (
    DiskFullError,
    ReadOnlyFileSystemError,
    SatchelIsADirectoryError,
    SatchelNotADirectoryError,
    SatchelOSError,
    SatchelPermissionError,
)

SRC = str(Path(satchel.__file__).resolve().parents[1])
TMP_MARK = ".satchel-tmp-"
BIG = np.arange(600_000, dtype=np.float64)  # 4.8 MB: more than the 1 MiB file systems hold


# -- real file systems --------------------------------------------------------------------------
def _mount_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        # Never a skip: a machine that cannot mount one cannot show these failures are real.
        pytest.fail(f"cannot mount a tmpfs here ({r.stderr.strip()}); these tests need root")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: writes past it fail with a real ENOSPC."""
    yield from _mount_tmpfs(tmp_path / "tiny", "size=1m")


@pytest.fixture
def ro_fs(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs: every create fails with a real EROFS."""
    yield from _mount_tmpfs(tmp_path / "ro", "ro,size=1m")


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TMP_MARK in p.name]


def in_child(code: str, *, fsize: int | None = None, as_nobody: bool = False) -> Any:
    """Run ``code`` in a fresh interpreter; returns what it raised, described as a dict.

    ``fsize`` sets RLIMIT_FSIZE with SIGXFSZ ignored (writes past it fail with EFBIG);
    ``as_nobody`` drops root after the imports, so permission bits apply again.
    """
    prelude = f"""
        import json, os, resource, signal, sys
        import numpy as np
        import satchel
        if {fsize!r} is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize!r}, {fsize!r}))
        if {as_nobody!r} and os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
    """
    report = """
        except BaseException as e:
            print(json.dumps({
                "mro": [c.__name__ for c in type(e).__mro__],
                "errno": getattr(e, "errno", None),
                "filename": str(getattr(e, "filename", None)),
                "message": str(e),
            }))
        else:
            print("null")
    """
    body = textwrap.indent(textwrap.dedent(code), "    ")
    script = textwrap.dedent(prelude) + "try:\n" + body + textwrap.dedent(report)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    r = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_wrapped(e: BaseException, cls: type[BaseException], code: int, where: Path) -> None:
    """One of ours, the builtin too, with the errno, naming the file and what to do."""
    assert isinstance(e, cls), repr(e)
    assert isinstance(e, satchel.SatchelError)
    assert isinstance(e, OSError)
    assert e.errno == code, e
    assert str(where) in str(e), str(e)
    assert ";" in str(e)  # the advice follows the cause
    assert isinstance(e.__cause__, OSError)  # the original error is kept


# -- satchel.save --------------------------------------------------------------------------------
def test_save_onto_a_full_disk_is_disk_full(tiny_fs: Path) -> None:
    target = tiny_fs / "model.satchel"
    satchel.save({"w": np.arange(10)}, target)
    before = target.read_bytes()
    with pytest.raises(DiskFullError) as ei:
        satchel.save({"w": BIG}, target)
    check_wrapped(ei.value, DiskFullError, errno.ENOSPC, target)
    assert "free" in str(ei.value)
    assert target.read_bytes() == before  # the previous file is intact
    assert temps(tiny_fs) == []


def test_save_past_the_file_size_limit_is_disk_full(tmp_path: Path) -> None:
    """EFBIG from RLIMIT_FSIZE: the same advice as a full disk; works without root."""
    target = tmp_path / "model.satchel"
    got = in_child(f"satchel.save({{'w': np.arange(600_000.0)}}, {str(target)!r})", fsize=1 << 20)
    assert got is not None
    assert got["mro"][:3] == ["DiskFullError", "SatchelOSError", "SatchelError"], got
    assert "OSError" in got["mro"]
    assert got["errno"] == errno.EFBIG
    assert got["filename"] == str(target)
    assert str(target) in got["message"]
    assert list(tmp_path.iterdir()) == []


def test_save_on_a_read_only_file_system(ro_fs: Path) -> None:
    target = ro_fs / "model.satchel"
    with pytest.raises(ReadOnlyFileSystemError) as ei:
        satchel.save({"w": np.arange(3)}, target)
    check_wrapped(ei.value, ReadOnlyFileSystemError, errno.EROFS, target)
    assert "read-only" in str(ei.value)


@pytest.fixture
def not_ours() -> Iterator[Path]:
    """A folder others may enter but not write: /tmp/<new>, as pytest's tmp_path is private."""
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o755 if os.geteuid() == 0 else 0o555)  # root's child drops to nobody
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_save_without_permission_is_a_permission_error(not_ours: Path) -> None:
    folder = not_ours
    target = folder / "model.satchel"
    got = in_child(f"satchel.save({{'w': np.arange(3)}}, {str(target)!r})", as_nobody=True)
    assert got is not None
    assert got["mro"][:2] == ["SatchelPermissionError", "SatchelOSError"], got
    assert "PermissionError" in got["mro"]
    assert got["errno"] == errno.EACCES
    assert str(target) in got["message"]
    assert list(folder.iterdir()) == []


def test_save_below_a_folder_one_may_not_enter(not_ours: Path) -> None:
    private = not_ours / "private"
    private.mkdir(mode=0o700)
    (private / "sub").mkdir()
    target = private / "sub" / "model.satchel"
    got = in_child(f"satchel.save({{'w': np.arange(3)}}, {str(target)!r})", as_nobody=True)
    assert got is not None
    if os.geteuid() != 0:
        pytest.fail("needs root to make a folder another user cannot enter")
    assert got["mro"][:2] == ["SatchelPermissionError", "SatchelOSError"], got
    assert got["errno"] == errno.EACCES
    assert "model.satchel" in got["message"]


def test_save_onto_a_folder_is_an_is_a_directory_error(tmp_path: Path) -> None:
    target = tmp_path / "model.satchel"
    target.mkdir()
    (target / "keep").write_bytes(b"x")
    with pytest.raises(SatchelIsADirectoryError) as ei:
        satchel.save({"w": np.arange(3)}, target)
    check_wrapped(ei.value, IsADirectoryError, errno.EISDIR, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.satchel"]
    assert [p.name for p in target.iterdir()] == ["keep"]


# -- convert -------------------------------------------------------------------------------------
@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "src.satchel"
    satchel.save({"w": BIG, "b": np.ones(3, dtype=np.float32)}, p)
    return p


@pytest.mark.parametrize("to", ["satchel", "npz", "torch", "oneflow"])
def test_convert_onto_a_full_disk_is_disk_full(tiny_fs: Path, src: Path, to: Any) -> None:
    dst = tiny_fs / "out"
    with pytest.raises(DiskFullError) as ei:
        satchel.convert(src, dst, to=to)
    check_wrapped(ei.value, DiskFullError, errno.ENOSPC, dst)
    assert list(tiny_fs.iterdir()) == []


@pytest.mark.parametrize("to", ["npz", "oneflow"])
def test_convert_through_a_file_is_not_a_directory(tmp_path: Path, src: Path, to: Any) -> None:
    (tmp_path / "afile").write_bytes(b"x")
    dst = tmp_path / "afile" / "out"
    with pytest.raises(SatchelNotADirectoryError) as ei:
        satchel.convert(src, dst, to=to)
    check_wrapped(ei.value, NotADirectoryError, errno.ENOTDIR, dst)


def test_convert_past_the_file_size_limit_is_disk_full(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "out.npz"
    got = in_child(f"satchel.convert({str(src)!r}, {str(dst)!r}, to='npz')", fsize=1 << 20)
    assert got is not None
    assert got["mro"][0] == "DiskFullError", got
    assert got["errno"] == errno.EFBIG
    assert str(dst) in got["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.satchel"]


# -- CheckpointManager ---------------------------------------------------------------------------
def test_manager_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.write_bytes(b"not a folder")
    with pytest.raises(SatchelNotADirectoryError) as ei:
        satchel.CheckpointManager(root)
    check_wrapped(ei.value, NotADirectoryError, errno.ENOTDIR, root)
    assert root.read_bytes() == b"not a folder"
    with pytest.raises(SatchelNotADirectoryError):
        satchel.CheckpointManager(root / "below")


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "async"])
def test_manager_save_onto_a_full_disk(tiny_fs: Path, blocking: bool) -> None:
    mgr = satchel.CheckpointManager(tiny_fs)
    mgr.save(1, model={"w": np.arange(10)})
    with pytest.raises(DiskFullError) as ei:
        mgr.save(2, model={"w": BIG}, blocking=blocking)
        mgr.wait()
    assert ei.value.errno == errno.ENOSPC
    assert str(tiny_fs) in str(ei.value)
    assert isinstance(ei.value.__cause__, OSError)
    mgr.close()
    assert temps(tiny_fs) == []
    assert satchel.CheckpointRoot(tiny_fs).steps() == [1]
    assert satchel.verify(tiny_fs).ok
    with satchel.CheckpointManager(tiny_fs) as mgr:  # saving works again once there is room
        mgr.save(3, model={"w": np.arange(5)})
    assert satchel.CheckpointRoot(tiny_fs).steps() == [1, 3]


def test_manager_save_past_the_file_size_limit(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    code = f"""
        mgr = satchel.CheckpointManager({str(root)!r})
        mgr.save(1, model={{"w": np.arange(10)}})
        mgr.save(2, model={{"w": np.arange(600_000.0)}}, blocking=False)
        mgr.wait()
    """
    got = in_child(code, fsize=1 << 20)
    assert got is not None
    assert got["mro"][0] == "DiskFullError", got
    assert got["errno"] == errno.EFBIG
    assert satchel.CheckpointRoot(root).steps() == [1]
    assert temps(root) == []


def test_manager_on_a_read_only_file_system(ro_fs: Path) -> None:
    with pytest.raises(ReadOnlyFileSystemError) as ei:
        # The root exists; its lock file cannot be made (when the manager takes the lock).
        mgr = satchel.CheckpointManager(ro_fs)
        mgr.save(1, model={"w": np.arange(3)})
    assert ei.value.errno == errno.EROFS
    assert str(ro_fs) in str(ei.value)


# -- the classes themselves ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "cls", "builtin"),
    [
        (errno.ENOSPC, DiskFullError, OSError),
        (errno.EDQUOT, DiskFullError, OSError),
        (errno.EFBIG, DiskFullError, OSError),
        (errno.EROFS, ReadOnlyFileSystemError, OSError),
        (errno.EACCES, SatchelPermissionError, PermissionError),
        (errno.EPERM, SatchelPermissionError, PermissionError),
        (errno.EISDIR, SatchelIsADirectoryError, IsADirectoryError),
        (errno.ENOTDIR, SatchelNotADirectoryError, NotADirectoryError),
        (errno.ENOENT, satchel.SatchelFileNotFoundError, FileNotFoundError),
        (errno.EIO, SatchelOSError, OSError),
    ],
)
def test_each_errno_gets_its_class(code: int, cls: type[Exception], builtin: type) -> None:
    raw = OSError(code, os.strerror(code), "/data/x.satchel")
    e = SatchelOSError.from_oserror(raw, doing="save")
    assert type(e) is cls
    assert isinstance(e, builtin)
    assert (e.errno, e.strerror, e.filename) == (code, os.strerror(code), "/data/x.satchel")
    assert str(e).startswith("/data/x.satchel: cannot save: ")
    copy = pickle.loads(pickle.dumps(e))  # crosses process boundaries intact
    assert type(copy) is cls
    assert (copy.errno, copy.filename, str(copy)) == (e.errno, e.filename, str(e))


def test_an_oserror_without_errno_still_reads_well() -> None:
    e = SatchelOSError.from_oserror(OSError("copy failed"), doing="write", path="/d/x")
    assert type(e) is SatchelOSError
    assert str(e) == "/d/x: cannot write: copy failed"


def test_the_errors_are_public_and_drawn_in_the_tree() -> None:
    tree = satchel.errors.__doc__ or ""
    for cls in (
        SatchelOSError,
        DiskFullError,
        ReadOnlyFileSystemError,
        SatchelPermissionError,
        SatchelIsADirectoryError,
        SatchelNotADirectoryError,
    ):
        assert getattr(satchel, cls.__name__) is cls
        assert cls.__name__ in tree
        assert cls.__name__ in (Path(SRC).parent / "README.md").read_text()
    assert issubclass(satchel.SatchelFileNotFoundError, SatchelOSError)
    # A message-only error (no errno) still reads as its message.
    assert str(satchel.SatchelFileNotFoundError("x: no such file")) == "x: no such file"
