"""The libraries under comparison, each wrapped as save / load / read-one-tensor calls.

Every saver leaves its file durable (file and directory fsynced) before it returns; the runner
touches every page of what a loader returns (see `measure.touch`), so all peers do the same work.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open

from measure import fsync_file, prefaulted, read_into, touch, write_raw
from workloads import Payload


def satchel() -> ModuleType:
    # Imported on first use: the runner must still report the peers if satchel fails to import.
    return importlib.import_module("satchel")


@dataclass(frozen=True)
class Saver:
    label: str  # the call, as shown in the report
    file: str  # which file format it produces; loaders name the same key
    save: Callable[[Payload, Path], None]


@dataclass(frozen=True)
class Loader:
    label: str
    file: str
    load: Callable[[Path], object]


@dataclass(frozen=True)
class OneReader:
    label: str
    file: str
    read: Callable[[Path, str], object]


RAW_READ = "raw read (into a pre-faulted buffer)"
SATCHEL_VERIFIED = "satchel.load(mmap, verify=True)"
SATCHEL_UNVERIFIED = "satchel.load(mmap, verify=False)"
TORCH_MMAP = "torch.load(weights_only, mmap)"

SUFFIX = {
    "raw": ".bin",
    "torch": ".pt",
    "safetensors": ".safetensors",
    "numpy": ".npz",
    "satchel": ".satchel.safetensors",
}


def _torch_save(p: Payload, path: Path) -> None:
    torch.save(p.state, path)
    fsync_file(path)


def _safetensors_save(p: Payload, path: Path) -> None:
    safetensors.torch.save_file(p.state, path)
    fsync_file(path)


def _numpy_save(p: Payload, path: Path) -> None:
    np.savez(path, allow_pickle=False, **p.arrays)
    fsync_file(path)


def _satchel_save(p: Payload, path: Path) -> None:
    satchel().save(p.state, path)  # fsyncs file and directory itself


SAVERS = [
    Saver("raw write + fsync", "raw", lambda p, path: write_raw(p.flat, path)),
    Saver("torch.save + fsync", "torch", _torch_save),
    Saver("safetensors save_file + fsync", "safetensors", _safetensors_save),
    Saver("np.savez + fsync", "numpy", _numpy_save),
    Saver("satchel.save (fsyncs itself)", "satchel", _satchel_save),
]


def _npz_load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def _satchel_load(verify: bool) -> Callable[[Path], object]:
    return lambda path: satchel().load(path, mmap=True, verify=verify)


def raw_loader(nbytes: int) -> Loader:
    """The raw limit for loading `nbytes`: one sequential read of the file into memory."""
    buf = prefaulted(nbytes)
    return Loader(RAW_READ, "raw", lambda path: read_into(path, buf))


LIB_LOADERS = [
    Loader("torch.load(weights_only)", "torch", lambda p: torch.load(p, weights_only=True)),
    Loader(TORCH_MMAP, "torch", lambda p: torch.load(p, weights_only=True, mmap=True)),
    Loader("safetensors load_file", "safetensors", safetensors.torch.load_file),
    Loader("np.load(npz), every array", "numpy", _npz_load),
    Loader(SATCHEL_VERIFIED, "satchel", _satchel_load(verify=True)),
    Loader(SATCHEL_UNVERIFIED, "satchel", _satchel_load(verify=False)),
]


def _torch_one(mmap: bool) -> Callable[[Path, str], object]:
    def read(path: Path, name: str) -> object:
        return touch(torch.load(path, weights_only=True, mmap=mmap)[name])

    return read


def _safetensors_one(path: Path, name: str) -> object:
    with safe_open(path, framework="pt") as handle:
        return touch(handle.get_tensor(name))


def _npz_one(path: Path, name: str) -> object:
    with np.load(path) as archive:
        return archive[name]


def _satchel_one(path: Path, name: str) -> object:
    # Touch inside the context: the tensor may be a view of a mapping that closing releases.
    with satchel().open(path) as ckpt:
        return touch(ckpt[name])


def one_readers(spans: dict[str, tuple[int, int]]) -> list[OneReader]:
    """Readers of one named tensor; the raw limit preads exactly that tensor's bytes."""

    buf = prefaulted(max(nbytes for _, nbytes in spans.values()))

    def raw(path: Path, name: str) -> object:
        offset, nbytes = spans[name]
        return read_into(path, buf[:nbytes], offset)

    return [
        OneReader("raw pread of the tensor's bytes (pre-faulted buffer)", "raw", raw),
        OneReader("torch.load(weights_only)[name]", "torch", _torch_one(mmap=False)),
        OneReader("torch.load(weights_only, mmap)[name]", "torch", _torch_one(mmap=True)),
        OneReader("safetensors safe_open().get_tensor", "safetensors", _safetensors_one),
        OneReader("np.load(npz)[name]", "numpy", _npz_one),
        OneReader("satchel.open()[name]", "satchel", _satchel_one),
    ]


def saver(file: str) -> Saver:
    return next(s for s in SAVERS if s.file == file)
