"""The ancient (torch < 0.4) tar checkpoint: recognised so it gets a clear refusal."""

from __future__ import annotations

from typing import Any

from ..errors import FormatError

__all__ = ["read", "sniff", "sniff_dir"]


def sniff(pr: Any) -> bool:
    return bool(pr.head[257:262] == b"ustar")


def sniff_dir(pr: Any) -> bool:
    return False


def read(path: Any, *, verify: bool = True) -> Any:
    raise FormatError(
        f"{path}: is a tar archive (the torch < 0.4 checkpoint format); satchel does not unpack "
        "tars (their links can escape the folder). Re-save it with a current torch in a trusted "
        "environment"
    )
