"""Mapping a foreign file for reading: a private copy-on-write view of its bytes."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FormatError, SatchelFileNotFoundError

__all__ = ["map_file"]


def map_file(path: Path) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The whole file as a uint8 array without reading it (empty files give an empty array).

    Raises:
        SatchelFileNotFoundError: no such file.
        FormatError: the path is a folder or cannot be mapped.
    """
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size == 0:
                return np.empty(0, dtype=np.uint8)
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    except FileNotFoundError as e:
        raise SatchelFileNotFoundError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise FormatError(f"{path}: is a folder, expected a file") from e
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot be mapped for reading ({e})") from e
    return np.frombuffer(mm, dtype=np.uint8)
