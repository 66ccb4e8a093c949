"""Writing one object atomically: the old object stays whole until the new one is complete.

An object store has no rename, but it has an atomic publish (SPEC 11.3):

- S3 (and what speaks its API): a multipart upload. Parts go up in parallel from a bounded
  pool (at most ``concurrency`` parts in memory and in flight); nothing is visible under the
  key until ``CompleteMultipartUpload``, which swaps the object whole. Any failure aborts the
  upload, so no parts are left behind to be billed.
  A writer that could not abort (killed, or the server gone) leaves an unfinished upload; the
  next save to the key aborts it.
- Small objects: one PUT (``pipe_file``), atomic on every object store (not on ``file://``,
  which takes the next way).
- Other stores, large objects: written to a temporary name beside the key, then moved onto it
  (GCS and Azure copy server-side, atomically); the temporary object is removed on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .store import Store, errors

__all__ = ["PART_SIZE", "abort_under", "upload"]

PART_SIZE = 16 << 20  # S3 needs >= 5 MiB per part but the last; 16 MiB measured best here
_MAX_PARTS = 10_000  # S3's limit on parts per upload
_SMALL = 16 << 20  # below this one PUT is simplest and as fast

Chunks = Iterable[bytes | bytearray | memoryview]


def upload(
    store: Store,
    url: str,
    chunks: Chunks,
    size: int,
    *,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write ``chunks`` (``size`` bytes in all) to ``url`` atomically (module docstring)."""
    part = max(PART_SIZE, -(-size // _MAX_PARTS))
    if size <= _SMALL and not _local(store):
        data = b"".join(bytes(c) for c in chunks)
        store.put_small(url, data)
        if progress is not None:
            progress(len(data))
    elif store.is_s3:
        _multipart(store, url, _parts(chunks, part), concurrency, progress)
    else:
        _via_temp(store, url, chunks, progress)


def _local(store: Store) -> bool:
    """fsspec's local filesystem (``file://``) writes a PUT in place: it needs the temp name."""
    protocol = store.fs.protocol
    names = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in names or "local" in names


def _parts(chunks: Chunks, size: int) -> Iterator[bytearray]:
    """The stream cut into parts of exactly ``size`` bytes (the last may be shorter)."""
    buf = bytearray()
    for c in chunks:
        view = memoryview(c).cast("B")
        while view:
            take = min(size - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) == size:
                yield buf
                buf = bytearray()
    if buf:
        yield buf


def _multipart(
    store: Store,
    url: str,
    parts: Iterator[bytearray],
    concurrency: int,
    progress: Callable[[int], None] | None,
) -> None:
    fs = store.fs
    bucket, key, _ = fs.split_path(store.key(url))
    with errors(url, "start an upload to"):
        _abort_stale(fs, bucket, key)
        upload_id = _s3(fs, "create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    done = 0

    def send(number: int, body: bytearray) -> dict[str, Any]:
        with errors(url, f"upload part {number} of"):
            r = _s3(
                fs,
                "upload_part",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
        return {"PartNumber": number, "ETag": r["ETag"], "Size": len(body)}

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="satchel-put") as pool:
            running: set[Future[dict[str, Any]]] = set()
            finished: list[Future[dict[str, Any]]] = []
            for number, body in enumerate(parts, 1):
                # Bounded memory: a new part is cut only when one of the pool's is done.
                while len(running) >= concurrency:
                    ready, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in ready:
                        f.result()  # a failed part stops the upload now, not at the end
                        finished.append(f)
                        done += f.result()["Size"]
                        if progress is not None:
                            progress(done)
                running.add(pool.submit(send, number, body))
            finished.extend(running)
            results = sorted((f.result() for f in finished), key=lambda p: p["PartNumber"])
            listed = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in results]
        with errors(url, "complete the upload of"):
            _s3(
                fs,
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},
            )
    except BaseException:
        # Nothing reached the key; without the abort the parts stay (and are billed) forever.
        with contextlib.suppress(Exception):
            _s3(fs, "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    finally:
        with contextlib.suppress(Exception):
            fs.invalidate_cache(store.key(url))


def _s3(fs: Any, method: str, **kwargs: Any) -> Any:
    """One S3 request through s3fs's event loop. Its ``call_s3`` wrapper is bound to the base
    class's method; awaiting ``_call_s3`` on the instance honours a subclass's override."""
    return asyncio.run_coroutine_threadsafe(fs._call_s3(method, **kwargs), fs.loop).result()


def _abort_stale(fs: Any, bucket: str, key: str) -> None:
    """Abort unfinished uploads to exactly this key: a writer killed (or cut off) mid-upload
    could not abort its own, and its parts are invisible but billed (SPEC 11.4). A save takes
    the key over; two writers saving one key at once race anyway (the last to complete wins),
    here the earlier one fails instead."""
    listed = _s3(fs, "list_multipart_uploads", Bucket=bucket, Prefix=key)
    for u in listed.get("Uploads", []):
        if u.get("Key") == key:
            with contextlib.suppress(Exception):  # it may complete or vanish meanwhile
                _s3(fs, "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=u["UploadId"])


def abort_under(store: Store, folder: str) -> None:
    """Abort every unfinished multipart upload below the folder URL (a killed save's invisible
    parts, SPEC 11.12); stores without multipart uploads have none."""
    if not store.is_s3:
        return
    fs = store.fs
    bucket, key, _ = fs.split_path(store.key(folder))
    prefix = key.rstrip("/") + "/"
    with errors(folder, "list the unfinished uploads of"):
        listed = _s3(fs, "list_multipart_uploads", Bucket=bucket, Prefix=prefix)
    for u in listed.get("Uploads", []):
        if str(u.get("Key", "")).startswith(prefix):
            with contextlib.suppress(Exception):
                _s3(
                    fs,
                    "abort_multipart_upload",
                    Bucket=bucket,
                    Key=u["Key"],
                    UploadId=u["UploadId"],
                )


def _via_temp(
    store: Store, url: str, chunks: Chunks, progress: Callable[[int], None] | None
) -> None:
    fs = store.fs
    head, _, name = url.rstrip("/").rpartition("/")
    temp = f"{head}/.{name}.satchel-{os.getpid()}-{os.urandom(4).hex()}.tmp"
    done = 0
    try:
        with errors(url, "write"):
            f = fs.open(store.key(temp), "wb")
        with f:  # closing publishes the temporary object, whole or (on failure) partial
            for c in chunks:  # the producer's own errors stay its own
                with errors(url, "write"):
                    f.write(c)
                done += memoryview(c).nbytes
                if progress is not None:
                    progress(done)
        with errors(url, "write"):
            fs.mv(store.key(temp), store.key(url))
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm_file(store.key(temp))
        raise
    finally:
        with contextlib.suppress(Exception):
            fs.invalidate_cache(store.key(url))
