"""Registry hooks for satchel's own single file and plain safetensors (read by ``_lazy``)."""

from __future__ import annotations

from typing import Any

from .._format.header import MAX_HEADER

__all__ = ["sniff", "sniff_dir"]


def sniff(pr: Any) -> bool:
    """An 8-byte length that fits the file, followed by a JSON object."""
    head: bytes = pr.head
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= MAX_HEADER and 8 + n <= pr.size and head[8:9] == b"{"


def sniff_dir(pr: Any) -> bool:
    return False
