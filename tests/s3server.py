"""A real S3 API on loopback for the object-storage tests: moto's server mode, and two s3fs
filesystems that see every request (to count them, or to fail one the way a network does).

Both filesystems are s3fs itself with one method wrapped at the boundary where each HTTP request
leaves (``_call_s3``); they are registered with fsspec under their own protocols
(``s3count://``, ``s3faulty://``), so satchel reaches them through the URL like any store.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import s3fs
from moto.server import ThreadedMotoServer

# moto accepts any credentials; botocore refuses to sign without some.
CREDENTIALS = {"key": "testing", "secret": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A moto S3 server on 127.0.0.1 (its state lives in this process: a restart keeps it)."""

    port: int = field(default_factory=free_port)
    _server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def options(self, **extra: Any) -> dict[str, Any]:
        """storage_options pointing s3fs at this server."""
        return {"endpoint_url": self.endpoint, **CREDENTIALS, **extra}


class CountingS3(s3fs.S3FileSystem):
    """s3fs, recording each request: (operation, Range header or None), and in ``keys`` the
    operation with the object key it names."""

    protocol = ("s3count",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str | None]] = []
        self.keys: list[tuple[str, str]] = []
        self.sent: list[tuple[str, int]] = []  # (key, body bytes) of each PUT and upload_part
        self._lock = threading.Lock()

    async def _call_s3(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        name = method if isinstance(method, str) else getattr(method, "__name__", str(method))
        with self._lock:
            self.calls.append((name, kwargs.get("Range")))
            self.keys.append((name, str(kwargs.get("Key", ""))))
            if name in ("put_object", "upload_part"):
                self.sent.append((str(kwargs.get("Key", "")), len(kwargs.get("Body") or b"")))
        return await super()._call_s3(method, *args, **kwargs)

    def gets(self) -> list[tuple[int, int]]:
        """Every get_object as its byte range [start, end); a whole-object get is (0, -1)."""
        out = []
        for op, rng in self.calls:
            if op != "get_object":
                continue
            if rng is None:
                out.append((0, -1))
            else:
                a, b = rng.removeprefix("bytes=").split("-")
                out.append((int(a), int(b) + 1))
        return out


class FaultyS3(s3fs.S3FileSystem):
    """s3fs whose ``fail_on``-th upload_part (or the PUT of a key ending with ``fail_put``) runs
    ``fault`` (raise, or stop the server) first."""

    protocol = ("s3faulty",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_on = 0
        self.fault: Callable[[], None] = lambda: None
        self.parts = 0
        self.fail_put = ""  # a put_object whose key ends with this runs ``fault`` first
        self._lock = threading.Lock()

    async def _call_s3(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        key = str(kwargs.get("Key", ""))
        if method == "put_object" and self.fail_put and key.endswith(self.fail_put):
            self.fail_put = ""
            self.fault()
        if method == "upload_part":
            with self._lock:
                self.parts += 1
                hit = self.parts == self.fail_on
            if hit:
                self.fault()
        return await super()._call_s3(method, *args, **kwargs)


fsspec.register_implementation("s3count", CountingS3, clobber=True)
fsspec.register_implementation("s3faulty", FaultyS3, clobber=True)

# botocore reads these when no key is given (the CLI tests run without storage_options).
os.environ.setdefault("AWS_ACCESS_KEY_ID", CREDENTIALS["key"])
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", CREDENTIALS["secret"])
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
