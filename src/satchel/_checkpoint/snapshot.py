"""Freezing prepared items for an async save: one copy into host memory, reused save to save.

The stall of an async save is this copy. Later saves copy into the previous snapshot's buffers
(``reuse``), so they pay a memcpy. The first save needs fresh memory, and what it costs is the
kernel's, not the copy's: every page is faulted in and zeroed on first touch. Measured in fresh
processes on this project's VM (benchmarks/async_stall.py, 1 GiB):

- 4 KiB pages: ~0.25 s of faults around a ~0.06 s copy (what ``torch.clone`` gets);
- transparent huge pages, which NumPy requests (``madvise``) for every large array: 1.2-5 s.
  A 2 MiB page is a free block of order 9, and this VM's balloon reports free blocks of that
  order to its host, which drops them (virtio-balloon free page reporting,
  ``page_reporting_order`` 9): each first touch is then also a fault on the host. 4 KiB pages
  come from the smaller free blocks first, still backed. (When those run out, as on a freshly
  booted VM, 4 KiB pages pay the host too: there, any first save costs seconds per GiB.)

So fresh buffers come from one anonymous mapping per snapshot, with huge pages refused: a NumPy
state's first save costs what a torch state's does, and thousands of small arrays cost one
mapping, not one each (Linux caps mappings per process at ~65k). Each array still gets a buffer
of its own (its own NumPy base, its own torch storage), because the writer stores arrays that
share memory as views of one blob. CUDA tensors are copied into pinned (page-locked) host
memory, asynchronously, and the snapshot waits for those copies before it returns.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from ..adapters import frozen_foreign, is_array

__all__ = ["snapshot"]

_Place = Literal["host", "pinned"]
_ALIGN = 64  # each buffer starts on a cache line, which also aligns every dtype


def snapshot(obj: Any, *, reuse: Any = None) -> Any:
    """A deep copy whose arrays own their memory, so the caller may change the originals.

    An array object met twice is copied once (tied weights stay tied). This is the only copy an
    async save makes: one memcpy of the state into host memory. ``reuse`` is an earlier
    snapshot of the same structure that is no longer needed: arrays of the same shape and
    dtype at the same place are copied into, not allocated anew. The others get fresh staging
    memory (see the module docstring). GPU tensors come back as CPU tensors.
    """
    copier = _Copier(obj, reuse)
    try:
        return _rebuild(obj, reuse, copier.leaf)
    finally:
        copier.synchronize()  # also on failure: no copy may still write into freed memory


def _rebuild(obj: Any, old: Any, leaf: Callable[[Any, Any], Any]) -> Any:
    """``obj``'s containers rebuilt, each array replaced by ``leaf(array, old array there)``."""
    memo: dict[int, Any] = {}

    def go(x: Any, o: Any) -> Any:
        if id(x) in memo:
            return memo[id(x)]
        out: Any
        if isinstance(x, np.ndarray) or _is_torch_tensor(x):
            out = leaf(x, o)
        elif is_array(x):
            out = frozen_foreign(x)  # a tf.Variable: a new one over its value now
        elif isinstance(x, dict):
            old_map = o if isinstance(o, dict) else {}
            items = ((k, go(v, old_map.get(k))) for k, v in x.items())
            out = OrderedDict(items) if isinstance(x, OrderedDict) else dict(items)
        elif isinstance(x, list | tuple) and type(x) in (list, tuple):
            old_seq = o if isinstance(o, list | tuple) and len(o) == len(x) else [None] * len(x)
            out = type(x)(go(v, w) for v, w in zip(x, old_seq, strict=True))
        else:
            return x  # immutable plain values (and anything save() will refuse with a message)
        memo[id(x)] = out
        return out

    return go(obj, old)


class _Copier:
    """Copies each array into its old buffer when one fits, else into fresh staging memory."""

    def __init__(self, obj: Any, reuse: Any) -> None:
        self._obj, self._reuse = obj, reuse
        self._used: set[int] = set()  # one old buffer never serves two arrays
        self._arenas: dict[_Place, _Arena | None] | None = None  # made at the first fresh array
        self._devices: set[Any] = set()  # CUDA devices with a copy in flight

    def leaf(self, x: Any, old: Any) -> Any:
        if _fits(old, x) and id(old) not in self._used:
            self._used.add(id(old))
            return self._copy(x, old)
        place = _place(x)
        buf = None if place is None else self._arena(place).take(x)
        if buf is None:
            return x.copy() if isinstance(x, np.ndarray) else _clone_tensor(x)
        out = self._copy(x, buf)
        if isinstance(x, np.ndarray) or type(x) is type(out):
            return out
        import torch  # x is a Parameter (see _place)

        return torch.nn.Parameter(out, requires_grad=x.requires_grad)

    def synchronize(self) -> None:
        if self._devices:
            import torch

            for device in self._devices:
                torch.cuda.synchronize(device)

    def _copy(self, x: Any, dst: Any) -> Any:
        if isinstance(x, np.ndarray):
            np.copyto(dst, x)
            return dst
        import torch

        with torch.no_grad():
            if x.is_cuda:
                # Into pinned memory the copy is a DMA; synchronize() waits for it.
                dst.copy_(x.detach(), non_blocking=True)
                self._devices.add(x.device)
            else:
                dst.copy_(x.detach())
        return dst

    def _arena(self, place: _Place) -> _Arena:
        if self._arenas is None:
            # One more walk, the first time an array needs fresh memory: the decisions leaf()
            # makes, replayed to add up the bytes, so each mapping is made once, at its size.
            sizes: dict[_Place, int] = {"host": 0, "pinned": 0}
            used: set[int] = set()

            def count(x: Any, old: Any) -> None:
                if _fits(old, x) and id(old) not in used:
                    used.add(id(old))
                elif (where := _place(x)) is not None:
                    sizes[where] += _aligned(_nbytes(x))

            _rebuild(self._obj, self._reuse, count)
            self._arenas = {p: _Arena.make(n, p) if n else None for p, n in sizes.items()}
        arena = self._arenas[place]
        return arena if arena is not None else _Arena.NONE


class _Arena:
    """A bump allocator over one block of staging memory; hands out arrays of their own."""

    NONE: _Arena  # holds nothing: every take() says no, and the caller allocates as before

    def __init__(self, block: Any, nbytes: int) -> None:
        self._block, self._size, self._next = block, nbytes, 0

    @classmethod
    def make(cls, nbytes: int, place: _Place) -> _Arena:
        if place == "pinned":
            import torch

            try:
                pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            except RuntimeError:  # no page-locked memory left: pageable copies, one by one
                return cls.NONE
            return cls(pinned.numpy(), nbytes)
        private = getattr(mmap, "MAP_PRIVATE", None)
        anonymous = getattr(mmap, "MAP_ANONYMOUS", None)
        if private is None or anonymous is None:  # Windows: each array allocated on its own
            return cls.NONE
        try:
            # Not mmap.mmap(-1, n): that is MAP_SHARED, memory of a tmpfs file.
            block = mmap.mmap(-1, nbytes, flags=private | anonymous)
        except OSError:  # no room to map it all at once (strict overcommit): one by one
            return cls.NONE
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            block.madvise(mmap.MADV_NOHUGEPAGE)  # see the module docstring
        return cls(block, nbytes)

    def take(self, x: Any) -> Any:
        """A buffer for ``x``'s values (same shape and dtype, C order), or None when full."""
        n = _nbytes(x)
        start = self._next
        if start + n > self._size:
            return None  # only if the sizing walk disagreed with the copy walk
        self._next = start + _aligned(n)
        if isinstance(x, np.ndarray):
            # An ndarray over the block itself (base: the mmap), not a slice of one big array:
            # slices would share a base, and the writer would store them as views of it.
            return np.ndarray(x.shape, dtype=x.dtype, buffer=self._block, offset=start)
        import torch

        flat = np.ndarray((n,), dtype=np.uint8, buffer=self._block, offset=start)
        # from_numpy gives each tensor a storage of its own that keeps the block alive.
        return torch.from_numpy(flat).view(x.dtype).view(x.shape)


_Arena.NONE = _Arena(None, 0)


def _place(x: Any) -> _Place | None:
    """Where ``x`` gets fresh staging memory: None for what keeps the plain copy."""
    if isinstance(x, np.ndarray):
        # Subclasses keep their type through x.copy(); object arrays hold references.
        plain = type(x) is np.ndarray and not x.dtype.hasobject and x.size > 0
        return "host" if plain else None
    import torch

    if type(x) not in (torch.Tensor, torch.nn.Parameter):
        return None  # a subclass keeps its type through the plain copy
    if x.layout != torch.strided or x.is_quantized or x.numel() == 0:
        return None  # save() refuses most of these with its own message
    if x.device.type == "cpu":
        return "host"
    return "pinned" if x.is_cuda and torch.cuda.is_available() else None


def _nbytes(x: Any) -> int:
    return int(x.nbytes) if isinstance(x, np.ndarray) else int(x.numel() * x.element_size())


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _fits(old: Any, x: Any) -> bool:
    """Whether ``old`` (from the previous snapshot) can take ``x``'s values in place."""
    if type(old) is not type(x) or old.shape != x.shape or old.dtype != x.dtype:
        return False
    if isinstance(x, np.ndarray):
        return bool(old.flags.c_contiguous and old.flags.writeable)
    return bool(old.is_contiguous() and old.device.type == "cpu")


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "untyped_storage")


def _clone_tensor(t: Any) -> Any:
    import torch

    c = t.detach().to("cpu", copy=True)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(c, requires_grad=t.requires_grad)
    return c
