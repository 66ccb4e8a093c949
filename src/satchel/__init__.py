"""satchel: save and load deep-learning state safely, fast, and readable everywhere.

The whole public surface is re-exported here; everything else is private.
"""

from ._api import load, open, save
from ._lazy import LazyFile, TensorInfo
from .errors import (
    FormatError,
    FrameworkNotAvailableError,
    IntegrityError,
    MissingKeyError,
    SatchelError,
    SatchelFileNotFoundError,
    UnsafeContentError,
    UnsupportedObjectError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "FormatError",
    "FrameworkNotAvailableError",
    "IntegrityError",
    "LazyFile",
    "MissingKeyError",
    "SatchelError",
    "SatchelFileNotFoundError",
    "TensorInfo",
    "UnsafeContentError",
    "UnsupportedObjectError",
    "UsageError",
    "__version__",
    "load",
    "open",
    "save",
]
