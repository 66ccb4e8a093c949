"""An object's data section, read range by range on demand (the remote side of ``Storage``).

Slicing a :class:`RangedBytes` fetches exactly those bytes: one ranged GET for a small tensor,
several parts fetched concurrently from a bounded thread pool for a large one (tensorizer and
the Run:ai streamer read the same way). Nothing reads the whole object to serve one tensor
(SPEC 11.2). :meth:`RangedBytes.fetch_all` serves ``load``, which needs every byte anyway.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .store import Store

__all__ = ["READ_PART", "RangedBytes"]

READ_PART = 16 << 20  # one request per this many bytes; more parts, more parallelism

U8Array = np.ndarray[Any, np.dtype[np.uint8]]


class RangedBytes:
    """``nbytes`` bytes of the object at ``url`` starting at byte ``base``, as a sliceable.

    ``concurrency`` bounds the requests one slice has in flight.
    """

    def __init__(self, store: Store, url: str, base: int, nbytes: int, *, concurrency: int) -> None:
        self.store, self.url, self.base, self.nbytes = store, url, base, nbytes
        self.concurrency = max(1, concurrency)

    def __getitem__(self, s: slice, /) -> U8Array:
        start, stop, step = s.indices(self.nbytes)
        if step != 1:
            raise ValueError("RangedBytes slices are contiguous")
        return self.read(start, max(start, stop))

    def read(self, start: int, stop: int, *, part: int = 0) -> U8Array:
        """Bytes ``[start, stop)`` of the section, as a new writable array, in ranged
        requests of ``part`` bytes (default :data:`READ_PART`)."""
        out = np.empty(stop - start, dtype=np.uint8)
        part = part or READ_PART
        spans = [(a, min(a + part, stop)) for a in range(start, stop, part)]
        if len(spans) <= 1 or self.concurrency == 1:
            for a, b in spans:
                self._into(out, start, a, b)
            return out
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(spans)), thread_name_prefix="satchel-get"
        ) as pool:
            for f in [pool.submit(self._into, out, start, a, b) for a, b in spans]:
                f.result()  # the first failure propagates; the pool finishes the others
        return out

    def fetch_all(self) -> U8Array:
        """The whole section (``load`` and ``verify`` read every byte anyway): one ranged
        request per worker, fewer and longer streams than one tensor's parts (a request has
        a fixed cost, and some servers, moto among them, pay for the whole object on each)."""
        return self.read(0, self.nbytes, part=max(READ_PART, -(-self.nbytes // self.concurrency)))

    def _into(self, out: U8Array, origin: int, a: int, b: int) -> None:
        data = self.store.read(self.url, self.base + a, self.base + b)
        out[a - origin : b - origin] = np.frombuffer(data, dtype=np.uint8)
