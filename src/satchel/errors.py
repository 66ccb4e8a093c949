"""satchel's exceptions: one root; each subclass also a builtin, so ``except ValueError`` works.

The tree::

    SatchelError (Exception)
    ├── FormatError (ValueError)               a file breaks a SPEC.md rule or a foreign layout
    │   └── IntegrityError                     bytes do not match their recorded checksum
    ├── UnsafeContentError (ValueError)        a file asks for code to run (pickle globals, ...)
    ├── UnsupportedObjectError (TypeError)     save() was given something it cannot store
    ├── UsageError (ValueError)                an argument satchel cannot use (say, dtype="int8")
    ├── MissingKeyError (KeyError)             a name that is not in the file
    ├── FrameworkNotAvailableError (ImportError)  the file wants a framework that is not installed
    ├── SatchelOSError (OSError)               the file system refused; errno, filename kept
    │   ├── DiskFullError                      ENOSPC, EDQUOT, EFBIG: no room for the file
    │   ├── ReadOnlyFileSystemError            EROFS
    │   ├── SatchelPermissionError (PermissionError)        EACCES, EPERM
    │   ├── SatchelIsADirectoryError (IsADirectoryError)    the destination is a folder
    │   ├── SatchelNotADirectoryError (NotADirectoryError)  a file where a folder must be
    │   └── SatchelFileNotFoundError (FileNotFoundError)    the path does not exist
    │       └── CheckpointNotFoundError         no (valid) checkpoint for that step in the root
    ├── CheckpointExistsError (FileExistsError)   that step is already saved (overwrite=True)
    ├── CheckpointLockedError (BlockingIOError)   another process is saving to the same root
    └── StateMismatchError (ValueError)        load_state(strict=True) found problems (.report)

Every message names the file and the field at fault and says what to do about it. A failed
system call is re-raised as the ``SatchelOSError`` subclass for its ``errno``
(:meth:`SatchelOSError.from_oserror`), chained to the original ``OSError``.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "CheckpointExistsError",
    "CheckpointLockedError",
    "CheckpointNotFoundError",
    "DiskFullError",
    "FormatError",
    "FrameworkNotAvailableError",
    "IntegrityError",
    "MissingKeyError",
    "ReadOnlyFileSystemError",
    "SatchelError",
    "SatchelFileNotFoundError",
    "SatchelIsADirectoryError",
    "SatchelNotADirectoryError",
    "SatchelOSError",
    "SatchelPermissionError",
    "StateMismatchError",
    "UnsafeContentError",
    "UnsupportedObjectError",
    "UsageError",
]


class SatchelError(Exception):
    """Root of every error satchel raises on purpose."""


class FormatError(SatchelError, ValueError):
    """A file is not laid out as its format requires (truncated, malformed header, bad offsets).

    ``path`` is the file at fault and ``field`` the entry or header field (a tensor's name,
    ``header length``, ...) when known, so tools need not parse the message; ``reason`` is the
    message's core without the location and the advice (``satchel verify`` lists it).
    """

    def __init__(
        self,
        message: str = "",
        *,
        path: str | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.field = field
        self.reason = reason


class IntegrityError(FormatError):
    """Stored bytes do not match the checksum recorded when they were written."""


class UnsafeContentError(SatchelError, ValueError):
    """A file asks for something satchel refuses to do, such as calling a pickled global."""


class UnsupportedObjectError(SatchelError, TypeError):
    """``save`` was handed an object it cannot store without pickle; nothing was written."""


class FrameworkNotAvailableError(SatchelError, ImportError):
    """A leaf was saved from a framework that is not installed here."""


class SatchelOSError(SatchelError, OSError):
    """A system call on a file failed: the disk is full, read-only, the path is wrong...

    ``errno``, ``strerror`` and ``filename`` are those of the failed call, except that
    ``filename`` names the file the caller asked for (not satchel's temporary name). Built by
    :meth:`from_oserror`, which picks the subclass for the ``errno``; the original error is the
    ``__cause__``. Constructed from a message alone (``SatchelFileNotFoundError("x: ...")``),
    it reads as that message.
    """

    advice = "check the path and the disk, then try again"
    doing = ""  # what satchel was doing: "save", "create the checkpoint root", ...

    @classmethod
    def from_oserror(
        cls, err: OSError, *, doing: str, path: str | os.PathLike[str] | None = None
    ) -> SatchelOSError:
        """The satchel error for ``err``, naming ``path`` (else the file ``err`` names)."""
        filename = os.fspath(path) if path is not None else err.filename
        if err.errno is None:  # an OSError raised with a message only (say, shutil.Error)
            return SatchelOSError(f"{filename}: cannot {doing}: {err}")
        kind = _BY_ERRNO.get(err.errno, SatchelOSError)
        new = kind(err.errno, err.strerror, filename)
        new.doing = doing
        return new

    def __str__(self) -> str:
        if self.errno is None or self.strerror is None:
            return super().__str__()
        where = f"{self.filename}: " if self.filename is not None else ""
        what = f"cannot {self.doing}: " if self.doing else ""
        code = errno.errorcode.get(self.errno, str(self.errno))
        return f"{where}{what}{self.strerror} ({code}); {self.advice}"


class DiskFullError(SatchelOSError):
    """No room for the file: the disk is full (ENOSPC), a quota (EDQUOT) or a file-size limit
    (EFBIG) is reached. A failed ``save`` leaves the previous file untouched."""

    advice = "free space on that disk (or raise the quota or file-size limit) or write elsewhere"


class ReadOnlyFileSystemError(SatchelOSError):
    """The file system is mounted read-only (EROFS)."""

    advice = "that file system is mounted read-only; write somewhere else"


class SatchelPermissionError(SatchelOSError, PermissionError):
    """The file or its folder may not be written or read by this user (EACCES, EPERM)."""

    advice = "check the permissions of the file and its folder, or write somewhere else"


class SatchelIsADirectoryError(SatchelOSError, IsADirectoryError):
    """A folder is where a file should go (EISDIR); satchel never replaces a folder by a file."""

    advice = "a folder has that name; choose another name or remove the folder"


class SatchelNotADirectoryError(SatchelOSError, NotADirectoryError):
    """Part of the path is a file where a folder must be (ENOTDIR)."""

    advice = "part of that path is a file, not a folder; fix the path"


class SatchelFileNotFoundError(SatchelOSError, FileNotFoundError):
    """The path to read (or the folder to write into) does not exist."""

    advice = "check the path"


class UsageError(SatchelError, ValueError):
    """An argument value satchel cannot use; the message says which values are accepted."""


class MissingKeyError(SatchelError, KeyError):
    """A name that is not in the file; the message lists names that are."""

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument; a sentence reads better.
        return str(self.args[0]) if self.args else ""


class CheckpointNotFoundError(SatchelFileNotFoundError):
    """No committed, valid checkpoint matches the request; the message says what was skipped."""


class CheckpointExistsError(SatchelError, FileExistsError):
    """The step is already saved; pass ``overwrite=True`` to replace it."""


class CheckpointLockedError(SatchelError, BlockingIOError):
    """Another process holds the root's writer lock (it is saving or deleting right now)."""


class StateMismatchError(SatchelError, ValueError):
    """``load_state(strict=True)`` found problems; ``.report`` (a LoadReport) lists them all."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


_BY_ERRNO: dict[int, type[SatchelOSError]] = {
    errno.ENOSPC: DiskFullError,
    errno.EDQUOT: DiskFullError,
    errno.EFBIG: DiskFullError,
    errno.EROFS: ReadOnlyFileSystemError,
    errno.EACCES: SatchelPermissionError,
    errno.EPERM: SatchelPermissionError,
    errno.EISDIR: SatchelIsADirectoryError,
    errno.ENOTDIR: SatchelNotADirectoryError,
    errno.ENOENT: SatchelFileNotFoundError,
}
