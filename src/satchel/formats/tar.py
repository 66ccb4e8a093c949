"""The ancient (torch < 0.4) tar checkpoint: recognised so it gets a clear refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FormatError
from ._reader import Probe

__all__ = ["read", "sniff"]


def sniff(probe: Probe) -> bool:
    """The POSIX tar magic at byte 257."""
    return probe.head[257:262] == b"ustar"


def read(path: Path, *, verify: bool = True) -> Any:
    """Always raises: satchel does not unpack tars.

    Raises:
        FormatError: always, saying how to convert the file.
    """
    raise FormatError(
        f"{path}: is a tar archive (the torch < 0.4 checkpoint format); satchel does not unpack "
        "tars (their links can escape the folder). Re-save it with a current torch in a trusted "
        "environment"
    )
