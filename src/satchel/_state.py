"""``load_state``: parameters from a file or mapping into a live model, optimizer or mapping.

Everything is checked before anything is copied, so a strict failure leaves the target as it
was. Copies happen in place (``copy_``/``np.copyto``), which keeps tied parameters tied and
keeps optimizer references to the parameters valid.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._api import load
from ._read.file import ArrayFile
from ._read.open import open_path
from .adapters import is_array, is_keras
from .errors import StateMismatchError, UsageError
from .formats.detect import sniffed
from .formats.tensorflow import object_paths

__all__ = ["LoadReport", "Mismatch", "load_state"]

Rename = Mapping[str, str] | Callable[[str], str] | None


@dataclass(frozen=True)
class Mismatch:
    """A name present on both sides whose shape or dtype differs."""

    name: str
    expected: str
    found: str


@dataclass(frozen=True)
class LoadReport:
    """What ``load_state`` did: names loaded, missing from the source, unexpected, mismatched."""

    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()
    skipped: tuple[str, ...] = field(default=())  # filtered out by include/exclude

    @property
    def clean(self) -> bool:
        """True when every target name was loaded and nothing else was offered."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line per problem, for error messages and logs."""
        lines = [f"loaded {len(self.loaded)}"]
        if self.missing:
            lines.append(f"missing from source ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(
                f"unexpected in source ({len(self.unexpected)}): {', '.join(self.unexpected)}"
            )
        for m in self.mismatched:
            lines.append(f"mismatched {m.name}: target {m.expected}, source {m.found}")
        return "\n  ".join(lines)


def load_state(
    target: Any,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    rename: Rename = None,
    skip_mismatched: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> LoadReport:
    """Copy arrays from ``source`` into ``target`` in place and report what happened.

    ``target`` is a ``torch.nn.Module`` (parameters and persistent buffers), a torch optimizer
    (its ``load_state_dict`` is used), a built Keras 3 model, layer or optimizer (its variables,
    named as in ``adapters/keras.py``; a ``.weights.h5`` or ``.keras`` file's names are
    understood too), or a mutable mapping of arrays (TensorFlow variables are assigned).
    ``source`` is a path or a mapping (nested mappings are flattened to dotted names).
    ``include``/``exclude`` are glob patterns on source names; ``rename`` maps source-name
    prefixes (``{"hidden.": "encoder.0."}``) or is a callable. Target entries not loaded keep
    their current values.
    A URL ``source`` (``s3://...``) is read tensor by tensor; ``storage_options`` go to fsspec.

    Raises:
        StateMismatchError: ``strict`` and something is missing, unexpected or mismatched
            (mismatches are only reported when ``skip_mismatched``); nothing was copied.
    """
    if is_keras(target):
        return _load_keras(
            target, source, storage_options, strict, include, exclude, rename, skip_mismatched
        )
    if hasattr(target, "load_state_dict") and hasattr(target, "param_groups"):
        return _load_optimizer(target, source, storage_options)
    dst = _target_arrays(target)
    if not isinstance(source, Mapping):
        with open_path(source, storage_options=storage_options) as f:
            return _load_streaming(
                target, dst, f, strict, include, exclude, rename, skip_mismatched
            )
    src_all = _flatten(source)
    report, pairs = _match(dst, src_all, include, exclude, rename)
    _refuse(target, report, strict, skip_mismatched)
    for name, value in pairs:
        _copy_into(dst[name], value)
    return report


def _refuse(target: Any, report: LoadReport, strict: bool, skip_mismatched: bool) -> None:
    # Like torch's load_state_dict, a shape/dtype mismatch fails even when not strict: copying
    # it is impossible. skip_mismatched (OneFlow's ignore_mismatch) turns that into a report.
    fails = (strict and bool(report.missing or report.unexpected)) or (
        bool(report.mismatched) and not skip_mismatched
    )
    if fails:
        raise StateMismatchError(
            f"load_state into {type(target).__name__} found problems "
            "(pass strict=False to allow missing/unexpected names, skip_mismatched=True to skip "
            f"shape/dtype mismatches):\n  {report.summary()}",
            report,
        )


def _load_streaming(  # noqa: PLR0917 - private: load_state passes its own options through
    target: Any,
    dst: dict[str, Any],
    f: ArrayFile,
    strict: bool,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    rename: Rename,
    skip_mismatched: bool,
) -> LoadReport:
    """A file's arrays into ``dst``, matched from headers alone, then read and copied one
    file (shard) at a time, each shard's bytes released before the next is read."""
    structure = f.structure
    if not isinstance(structure, Mapping):
        raise UsageError(f"{f.path}: holds a {type(structure).__name__}, not a mapping of arrays")
    infos = _flatten(structure)
    report, pairs = _match(dst, infos, include, exclude, rename)
    _refuse(target, report, strict, skip_mismatched)
    name_of = {id(info): name for name, info in infos.items()}
    wanted = {name_of[id(info)]: tname for tname, info in pairs}
    if not set(f.keys()).issuperset(wanted):  # a name the file spells differently: read whole
        loaded = _flatten(f.load())
        for name, tname in wanted.items():
            _copy_into(dst[tname], loaded[name])
        return report
    for group in f.groups(wanted):
        for name in group:
            _copy_into(dst[wanted[name]], f[name])
        f.release(group)
    return report


def _load_keras(  # noqa: PLR0917 - private: load_state passes its own options through
    target: Any,
    source: str | os.PathLike[str] | Mapping[str, Any],
    options: Mapping[str, Any] | None,
    strict: bool,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    rename: Rename,
    skip_mismatched: bool,
) -> LoadReport:
    """Variables of a Keras model or optimizer, matched by name or by another writer's name
    for them: a ``.weights.h5``/``.keras`` file's, or a TensorFlow checkpoint's object paths."""
    from .adapters import keras as keras_adapter

    # A TF2 checkpoint names each variable by the first path TF's walk met it on, often
    # through the optimizer ("optimizer/_trainable_variables/0"); any of its paths may match.
    paths: Mapping[str, list[str]] = {}
    if (
        isinstance(source, (str, os.PathLike))
        and "://" not in str(source)
        and sniffed(source, refine=False) == "tensorflow"
    ):
        paths = object_paths(source)
    dst, aliases = keras_adapter.variables(target, tf_paths=bool(paths))  # unbuilt: fails now
    src = _flatten(_as_mapping(source, options))
    user = _renamer(rename)

    def to_target(name: str) -> str:
        for candidate in (name, *paths.get(name, ())):
            renamed = user(candidate)
            found = aliases.get(renamed, renamed)
            if found in dst:
                return found
        return aliases.get(user(name), user(name))

    report, pairs = _match(dst, src, include, exclude, to_target)
    _refuse(target, report, strict, skip_mismatched)
    for name, value in pairs:
        _copy_into(dst[name], value)
    return report


def _as_mapping(
    source: str | os.PathLike[str] | Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    loaded = load(source, storage_options=options)
    if not isinstance(loaded, Mapping):
        raise UsageError(f"{source}: holds a {type(loaded).__name__}, not a mapping of arrays")
    return loaded


def _flatten(m: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in m.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{name}."))
        else:
            out[name] = v
    return out


def _target_arrays(target: Any) -> dict[str, Any]:
    if hasattr(target, "state_dict") and hasattr(target, "named_parameters"):
        # keep_vars: the live Parameters/buffers themselves, so copy_ writes into the model.
        return dict(target.state_dict(keep_vars=True))
    if isinstance(target, MutableMapping):
        return _flatten(target)
    raise UsageError(
        f"load_state target is a {type(target).__name__}; expected a torch.nn.Module, a torch "
        "optimizer or a mutable mapping of arrays"
    )


def _renamer(rename: Rename) -> Callable[[str], str]:
    if rename is None:
        return lambda n: n
    if callable(rename):
        return rename
    prefixes = sorted(rename.items(), key=lambda kv: -len(kv[0]))  # longest prefix wins

    def apply(name: str) -> str:
        for old, new in prefixes:
            if name.startswith(old):
                return new + name[len(old) :]
        return name

    return apply


def _match(
    dst: dict[str, Any],
    src: dict[str, Any],
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    rename: Rename,
) -> tuple[LoadReport, list[tuple[str, Any]]]:
    to_target = _renamer(rename)
    loaded, unexpected, skipped = [], [], []
    mismatched: list[Mismatch] = []
    pairs: list[tuple[str, Any]] = []
    for name, value in src.items():
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            skipped.append(name)
            continue
        if exclude is not None and any(fnmatch.fnmatchcase(name, p) for p in exclude):
            skipped.append(name)
            continue
        if not is_array(value) and not _is_tensor(value):
            skipped.append(name)  # plain values (versions, counters) are not parameters
            continue
        tname = to_target(name)
        if tname not in dst:
            unexpected.append(name)
            continue
        want, got = _describe(dst[tname]), _describe(value)
        if want != got:
            mismatched.append(Mismatch(tname, want, got))
            continue
        loaded.append(tname)
        pairs.append((tname, value))
    # A tied parameter appears under several target names; loading one loads them all.
    done = {id(dst[n]) for n in loaded}
    missing = [n for n in dst if n not in loaded and id(dst[n]) not in done]
    missing = [n for n in missing if n not in {m.name for m in mismatched}]
    report = LoadReport(
        tuple(loaded), tuple(missing), tuple(unexpected), tuple(mismatched), tuple(skipped)
    )
    return report, pairs


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _describe(x: Any) -> str:
    dt = x.dtype  # a str (TensorInfo, Keras), np.dtype, tf.DType (both .name) or torch.dtype
    name = dt if isinstance(dt, str) else getattr(dt, "name", None) or str(dt)
    return f"{name.removeprefix('torch.')}{[int(n) for n in x.shape]}"


def _copy_into(dst: Any, value: Any) -> None:
    if isinstance(dst, np.ndarray):
        np.copyto(dst, np.asarray(value))
        return
    if type(dst).__module__.startswith(("tensorflow", "keras")):
        # tf.Variable or Keras Variable: assign takes NumPy arrays and TensorFlow tensors.
        tf_or_np = type(value).__module__.startswith(("tensorflow", "numpy"))
        dst.assign(value if tf_or_np else np.asarray(value))
        return
    import torch

    src = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    with torch.no_grad():
        if type(dst).__name__ == "DTensor" and type(src).__name__ != "DTensor":
            # A whole tensor into a sharded one (FSDP2, tensor parallel): each rank copies the
            # box its placements give it, reading only that part of the source.
            local, box = _local_box(dst)
            local.copy_(src[box])
        else:
            dst.copy_(src)


def _local_box(dst: Any) -> tuple[Any, tuple[slice, ...]]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    sizes, offsets = compute_local_shape_and_global_offset(
        dst.shape, dst.device_mesh, dst.placements
    )
    box = tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))
    return dst.to_local(), box


def _load_optimizer(
    opt: Any, source: str | os.PathLike[str] | Mapping[str, Any], options: Mapping[str, Any] | None
) -> LoadReport:
    state = _as_mapping(source, options)
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as e:
        raise StateMismatchError(
            f"optimizer state does not fit {type(opt).__name__}: {e}", LoadReport()
        ) from e
    names = tuple(f"state.{k}" for k in state.get("state", {}))
    return LoadReport(loaded=names)
