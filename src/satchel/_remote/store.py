"""One object store behind an fsspec URL: sizes, ranged reads, listings, deletes, errors.

Every call names the URL the user gave in its errors: a missing object is
``SatchelFileNotFoundError``, a refused one ``SatchelPermissionError``, anything else the
store's client raises (a refused connection, a timeout, a bad credential) ``SatchelOSError``
saying what was being done and what to check. For S3 the client gets bounded connect and read
timeouts and retries unless the caller chose their own (SPEC 11.6), so an unreachable endpoint
fails in seconds, not after botocore's minutes.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..errors import (
    FormatError,
    FrameworkNotAvailableError,
    SatchelError,
    SatchelFileNotFoundError,
    SatchelOSError,
    SatchelPermissionError,
)
from .url import StorageOptions

__all__ = ["S3_DEFAULTS", "Store", "open_store"]

# botocore's own defaults are 60 s connect and read timeouts, each retried, under s3fs's own
# five tries: an endpoint that accepts and never answers would hang a call for half an hour.
# With these a refused connection fails at once and a silent one within 5 x 20 s (s3fs still
# retries timeouts itself); storage_options' config_kwargs override them.
S3_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 20,
    "retries": {"max_attempts": 1, "mode": "standard"},
}


def open_store(url: str, storage_options: StorageOptions = None) -> Store:
    """The store ``url`` lives in, configured with ``storage_options`` (given to fsspec as is).

    Raises:
        FrameworkNotAvailableError: fsspec is not installed.
        SatchelOSError: fsspec knows no such protocol, or its backend package is missing.
    """
    try:
        # Here only, once a URL was given: import satchel never imports fsspec (SPEC 11.7).
        import fsspec  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as e:
        raise FrameworkNotAvailableError(
            f"{url}: reading and writing URLs needs fsspec (and s3fs for s3://): "
            "pip install 'satchel[s3]'"
        ) from e
    options = dict(storage_options or {})
    protocol = url.split("://", 1)[0].lower()
    if protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        for k, v in S3_DEFAULTS.items():
            config.setdefault(k, v)
        options["config_kwargs"] = config
    try:
        fs, _ = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise SatchelOSError(
            f"{url}: the {protocol}:// protocol needs a package that is not installed ({e}); "
            "install satchel[s3] for S3, or the fsspec backend for this store"
        ) from e
    except (ValueError, TypeError) as e:
        raise SatchelOSError(f"{url}: cannot open this URL with fsspec: {e}") from e
    return Store(fs)


class Store:
    """An fsspec filesystem; every method takes the full URL and names it in its errors."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    @property
    def is_s3(self) -> bool:
        """Whether the store speaks S3's multipart upload (s3fs, and what copies its API)."""
        return callable(getattr(self.fs, "_call_s3", None)) and hasattr(self.fs, "split_path")

    def key(self, url: str) -> str:
        """The filesystem's own name for ``url`` (``bucket/key`` for S3)."""
        return str(self.fs._strip_protocol(url))

    def size(self, url: str) -> int | None:
        """The object's size in bytes; ``None`` when there is no object at ``url`` (a folder
        prefix, or nothing)."""
        with errors(url, "read"):
            self.fs.invalidate_cache(self.key(url))  # another writer may have replaced it
            try:
                info = self.fs.info(self.key(url))
            except FileNotFoundError:
                return None
        if info.get("type") != "file":
            return None
        size = info.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FormatError(f"{url}: the store reports a size of {size!r}", path=url)
        return size

    def read(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object, in one ranged request.

        Raises:
            FormatError: fewer bytes came back (the object shrank or was replaced since its
                header was read).
        """
        with errors(url, "read"):
            data = self.fs.cat_file(self.key(url), start=start, end=end)
        if len(data) != end - start:
            raise FormatError(
                f"{url}: asked for bytes {start}-{end} and got {len(data)}; the object changed "
                "since it was opened (open it again)",
                path=url,
                reason="object shorter than its header says",
            )
        return bytes(data)

    def read_all(self, url: str, cap: int) -> bytes:
        """The whole of a small object (a shard index), at most ``cap`` bytes of it."""
        size = self.size(url)
        if size is None:
            raise SatchelFileNotFoundError(f"{url}: no such object")
        if size > cap:
            raise FormatError(f"{url}: {size} bytes, more than the {cap} allowed", path=url)
        return self.read(url, 0, size) if size else b""

    def names(self, folder: str) -> set[str]:
        """The names of the objects directly under the folder URL (empty when none)."""
        with errors(folder, "list"):
            self.fs.invalidate_cache(self.key(folder))
            try:
                found = self.fs.ls(self.key(folder), detail=False)
            except FileNotFoundError:
                return set()
        return {str(p).rstrip("/").rpartition("/")[2] for p in found}

    def sizes(self, folder: str) -> dict[str, int]:
        """Every object under the folder URL, at any depth: its path below the folder -> size."""
        base = self.key(folder).rstrip("/")
        with errors(folder, "list"):
            self.fs.invalidate_cache(base)
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return {}
        out = {}
        for path, info in found.items():
            rel = str(path).rstrip("/")[len(base) + 1 :]
            size = info.get("size")
            if rel and info.get("type") == "file" and isinstance(size, int):
                out[rel] = size
        return out

    def delete(self, url: str) -> None:
        """Remove one object; one already gone is fine."""
        with errors(url, "delete"):
            with suppress(FileNotFoundError):
                self.fs.rm_file(self.key(url))
            self.fs.invalidate_cache(self.key(url))

    def put_small(self, url: str, data: bytes) -> None:
        """One object from bytes in one request (a single PUT: atomic on every store)."""
        with errors(url, "write"):
            self.fs.pipe_file(self.key(url), data)
            self.fs.invalidate_cache(self.key(url))


@contextmanager
def errors(url: str, doing: str) -> Iterator[None]:
    """Whatever the store's client raises, as a satchel error naming ``url``."""
    try:
        yield
    except SatchelError:
        raise
    except FileNotFoundError as e:
        raise SatchelFileNotFoundError(f"{url}: cannot {doing}: no such object or bucket") from e
    except PermissionError as e:
        raise SatchelPermissionError(
            errno.EACCES, f"access denied ({e}); check the credentials", url
        ) from e
    except Exception as e:  # every fsspec backend has its own error types: name the URL
        raise SatchelOSError(
            f"{url}: cannot {doing}: {type(e).__name__}: {e}; check the URL, the endpoint "
            "(storage_options, AWS_ENDPOINT_URL), the credentials and the network"
        ) from e
