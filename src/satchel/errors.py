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
    ├── SatchelFileNotFoundError (FileNotFoundError)  the path does not exist
    │   └── CheckpointNotFoundError             no (valid) checkpoint for that step in the root
    ├── CheckpointExistsError (FileExistsError)   that step is already saved (overwrite=True)
    ├── CheckpointLockedError (BlockingIOError)   another process is saving to the same root
    └── StateMismatchError (ValueError)        load_state(strict=True) found problems (.report)

Every message names the file and the field at fault and says what to do about it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointExistsError",
    "CheckpointLockedError",
    "CheckpointNotFoundError",
    "FormatError",
    "FrameworkNotAvailableError",
    "IntegrityError",
    "MissingKeyError",
    "SatchelError",
    "SatchelFileNotFoundError",
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


class SatchelFileNotFoundError(SatchelError, FileNotFoundError):
    """The path to read does not exist."""


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
