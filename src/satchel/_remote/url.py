"""Telling an object-storage URL from a local path (no optional package needed)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["StorageOptions", "is_url", "join", "split"]

StorageOptions = Mapping[str, Any] | None

# RFC 3986 scheme, then "://": "s3://b/k", "memory://x", "gs://...". A Windows drive ("C:\\x")
# or a relative name with a colon is not one. "file://" is a URL too: fsspec reads it.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: object) -> bool:
    """Whether ``path`` is a string naming an fsspec URL rather than a local path."""
    if isinstance(path, os.PathLike):
        return False  # a Path collapsed "s3://" to "s3:/" already; it names a local file
    return isinstance(path, str) and _URL.match(path) is not None


def join(url: str, name: str) -> str:
    """``url/name`` (a folder URL and one object name inside it)."""
    return f"{url.rstrip('/')}/{name}"


def split(url: str) -> tuple[str, str]:
    """(the folder URL, the last name) of an object URL."""
    head, _, tail = url.rstrip("/").rpartition("/")
    return head, tail
