"""satchel: save and load deep-learning state safely, fast, and readable everywhere.

The whole public surface is re-exported here; everything else is private.
"""

from ._api import detect, load, open, save
from ._checkpoint import (
    CheckpointInfo,
    CheckpointManager,
    CheckpointRoot,
    CheckpointWarning,
    RestoreResult,
)
from ._convert import convert
from ._read.file import ArrayFile, ForeignFile, LazyFile, TensorInfo
from ._rng import capture_rng, restore_rng
from ._state import LoadReport, Mismatch, load_state
from ._verify import Problem, VerifyReport, verify
from ._version import __version__
from .errors import (
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointNotFoundError,
    DiskFullError,
    FormatError,
    FrameworkNotAvailableError,
    IntegrityError,
    MissingKeyError,
    ReadOnlyFileSystemError,
    SatchelError,
    SatchelFileNotFoundError,
    SatchelIsADirectoryError,
    SatchelNotADirectoryError,
    SatchelOSError,
    SatchelPermissionError,
    StateMismatchError,
    UnsafeContentError,
    UnsupportedObjectError,
    UsageError,
)

__all__ = [
    "ArrayFile",
    "CheckpointExistsError",
    "CheckpointInfo",
    "CheckpointLockedError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointRoot",
    "CheckpointWarning",
    "DiskFullError",
    "ForeignFile",
    "FormatError",
    "FrameworkNotAvailableError",
    "IntegrityError",
    "LazyFile",
    "LoadReport",
    "Mismatch",
    "MissingKeyError",
    "Problem",
    "ReadOnlyFileSystemError",
    "RestoreResult",
    "SatchelError",
    "SatchelFileNotFoundError",
    "SatchelIsADirectoryError",
    "SatchelNotADirectoryError",
    "SatchelOSError",
    "SatchelPermissionError",
    "StateMismatchError",
    "TensorInfo",
    "UnsafeContentError",
    "UnsupportedObjectError",
    "UsageError",
    "VerifyReport",
    "__version__",
    "capture_rng",
    "convert",
    "detect",
    "load",
    "load_state",
    "open",
    "restore_rng",
    "save",
    "verify",
]
