"""Keras 3 models and optimizers: their variables by stable names, on save and on load.

Imported only when a Keras object is saved, restored or loaded into. A Keras variable's own
``path`` (``sequential_1/dense_2/kernel``) carries layer names Keras makes unique per process,
so a clone built next to the original gets other paths; names built from them would not match.
satchel names a model's variables the way Keras' own ``.weights.h5`` files address them
(``saving_lib``: attribute names, and for lists of layers the snake-cased class name with a
counter), which is the same for every instance of one architecture, with the variable's name
for Keras' index:

================================  ==========================  ==================================
model                             satchel name                ``.weights.h5`` path (also loaded)
================================  ==========================  ==================================
``Sequential([Dense, Dense])``    ``dense/kernel``,           ``layers/dense/vars/0``,
                                  ``dense_1/bias``            ``layers/dense_1/vars/1``
a subclass with ``self.hidden``   ``hidden/kernel``           ``hidden/vars/0``
================================  ==========================  ==================================

A layer reachable both as an attribute and through a list (a subclassed model's ``self.out``
is also in its ``layers``) is named by the attribute; Keras' file uses whichever its walk meets
first. An optimizer's variables are ``iteration``, ``learning_rate`` and one ``<slot>/<i>`` per
slot and trainable variable ``i`` (``momentum/0``, ``velocity/0`` for Adam), in ``variables``
order; a Keras file's ``optimizer/vars/<i>`` loads into them.

A TensorFlow object-based checkpoint names each variable by the first path TensorFlow's walk
met it on, often through the optimizer (``optimizer/_trainable_variables/0``); its object graph
lists every path, and any path that reaches the variable from the model (``model/...``, as
``tf.train.Checkpoint(model=model)`` writes it) or the optimizer (``optimizer/...``) matches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras  # type: ignore[import-untyped]
from keras.src.saving import saving_lib  # type: ignore[import-untyped]
from keras.src.saving.keras_saveable import KerasSaveable  # type: ignore[import-untyped]
from keras.src.utils.naming import to_snake_case  # type: ignore[import-untyped]

from ..errors import UsageError

__all__ = ["build_optimizer", "state", "variables"]

_H5_MEMBER = "model.weights.h5"  # a .keras zip's weights, a group of satchel.load's result


def state(obj: Any) -> dict[str, Any]:
    """Name -> current value (a backend tensor, read now) of every variable of ``obj``.

    Reading makes a snapshot: training may go on while an async checkpoint writes it.
    """
    named, _ = variables(obj)
    if keras.backend.backend() != "tensorflow":
        return {name: keras.ops.convert_to_numpy(v) for name, v in named.items()}
    import tensorflow as tf  # type: ignore[import-untyped]

    # convert_to_tensor of a tf.Variable reads it: a tensor, not the variable itself.
    return {name: tf.convert_to_tensor(v.value) for name, v in named.items()}


def variables(obj: Any, *, tf_paths: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The live variables of a model, layer or optimizer by satchel name, and aliases.

    Aliases map the names other writers use for the same variables (a ``.weights.h5`` file's,
    a ``.keras`` file's, as ``satchel.load`` flattens them to dotted names) to satchel names;
    with ``tf_paths``, also their object paths in a TensorFlow checkpoint (a walk of the whole
    object graph, so only when the source is one).

    Raises:
        UsageError: ``obj`` has no variables yet (an unbuilt model or optimizer).
    """
    if isinstance(obj, keras.optimizers.Optimizer):
        named = _optimizer_names(obj)
        aliases: dict[str, str] = {}
        for i, n in enumerate(named):  # a Keras file's optimizer group, alone or in a .keras
            for prefix in ("", "optimizer.", f"{_H5_MEMBER}.optimizer."):
                aliases[f"{prefix}vars.{i}"] = n
        by_id = {id(v): n for n, v in named.items()}
        for path, v in _tf_paths(obj).items() if tf_paths else ():
            if id(v) in by_id:
                aliases[path] = aliases[f"optimizer/{path}"] = by_id[id(v)]
        return named, aliases
    if not obj.weights:
        raise UsageError(
            f"{type(obj).__name__} has no variables yet: build it first (call it on a batch, "
            "or model.build(input_shape)) so there is something to load into"
        )
    return _model_names(obj, tf_paths=tf_paths)


def build_optimizer(opt: Any, models: Iterable[Any]) -> None:
    """Create an unbuilt optimizer's variables for the model it trains, as training would.

    Anything but an unbuilt optimizer is left alone.

    Raises:
        UsageError: no built model among ``models`` to build it for.
    """
    if not isinstance(opt, keras.optimizers.Optimizer) or opt.built:
        return
    for model in models:
        if isinstance(model, keras.Layer) and model.trainable_variables:
            opt.build(model.trainable_variables)
            return
    raise UsageError(
        f"{type(opt).__name__} is not built (it has no variables to restore into): call "
        "optimizer.build(model.trainable_variables) first, or restore it with its model"
    )


# -- names ----------------------------------------------------------------------------------------
def _model_names(root: Any, *, tf_paths: bool) -> tuple[dict[str, Any], dict[str, str]]:
    wanted = {id(v): v for v in root.weights}
    found: dict[int, tuple[str, int]] = {}  # variable id -> (h5 group path, index in it)
    readable: dict[int, str] = {}  # variable id -> group path, attributes before lists
    groups: dict[str, list[Any]] = {}
    memo: dict[int, list[tuple[str, Any]]] = {}  # each walk asks Keras for children: once
    for path, own in _walk(root, memo, attributes_first=False):
        groups[path] = own
        for i, v in enumerate(own):
            if id(v) in wanted and id(v) not in found:
                found[id(v)] = (path, i)
    for path, own in _walk(root, memo, attributes_first=True):
        for v in own:
            readable.setdefault(id(v), path)
    # Sequential and Functional models put their layers under "layers/": every name would
    # start with it, so it is left out (as torch's Sequential names are "0.weight").
    strip = "layers/" if isinstance(root, keras.Model) else ""
    names: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    by_id: dict[int, str] = {}
    for v in root.weights:
        where = found.get(id(v))
        if where is None:
            # A layer whose save_own_variables stores derived values (quantized kernels):
            # Keras' own files cannot address this variable either; its path names it.
            by_id[id(v)] = v.path
            names[v.path] = v
            continue
        path, i = where
        same = [w for w in groups[path] if getattr(w, "name", None) == v.name]
        leaf = v.name if len(same) == 1 else f"vars/{i}"
        nice = readable.get(id(v), path)
        short = nice.removeprefix(strip)
        name = f"{short}/{leaf}" if short else leaf
        if name in names:
            name = f"{nice}/{leaf}"
        names[name] = v
        by_id[id(v)] = name
        dotted = f"{path.replace('/', '.')}.vars.{i}".lstrip(".")
        aliases[dotted] = name
        aliases[f"{_H5_MEMBER}.{dotted}"] = name
    for path, v in _tf_paths(root).items() if tf_paths else ():
        if id(v) in by_id:
            # tf.train.Checkpoint(model=model), as TensorFlow's guides write it, puts "model/"
            # in front; another root name is a rename away.
            aliases[path] = aliases[f"model/{path}"] = by_id[id(v)]
    return names, aliases


def _tf_paths(root: Any) -> dict[str, Any]:
    """Object path (as TensorFlow checkpoints spell it) -> variable, breadth-first from ``root``."""
    if keras.backend.backend() != "tensorflow":
        return {}
    import tensorflow as tf

    view = tf.train.TrackableView(root)
    out: dict[str, Any] = {}
    queue, seen = [(root, "")], {id(root)}
    for obj, path in queue:  # grows while walked: breadth-first, as TF names objects
        for local, child in view.children(obj).items():
            child_path = _join(path, local)
            if isinstance(child, keras.Variable):
                out.setdefault(child_path, child)
            if id(child) not in seen:
                seen.add(id(child))
                queue.append((child, child_path))
    return out


def _walk(
    root: Any, memo: dict[int, list[tuple[str, Any]]], *, attributes_first: bool
) -> list[tuple[str, list[Any]]]:
    """Every saveable's own variables by the path Keras' ``saving_lib`` gives it, in its order.

    This repeats ``saving_lib._save_state``'s walk (children in name order; lists' layers
    named by class) so that a ``.weights.h5`` file's paths are known; optimizers are not model
    state. ``attributes_first`` visits a model's layer attributes (``self.out``) before its
    lists (``layers``), so a layer is named by its attribute when it has one: satchel's names.
    """
    out: list[tuple[str, list[Any]]] = []
    visited: set[int] = set()

    def visit(obj: Any, path: str) -> None:
        if id(obj) in visited or isinstance(obj, keras.optimizers.Optimizer):
            return
        visited.add(id(obj))
        if hasattr(obj, "save_own_variables"):
            store: dict[str, Any] = {}
            obj.save_own_variables(store)
            out.append((path, [store[k] for k in sorted(store, key=_index)]))
        if id(obj) not in memo:
            memo[id(obj)] = list(saving_lib._walk_saveable(obj))
        children = memo[id(obj)]
        if attributes_first:
            children = sorted(children, key=lambda c: not isinstance(c[1], KerasSaveable))
        for attr, child in children:
            if isinstance(child, KerasSaveable):
                visit(child, _join(path, attr))
            elif isinstance(child, (list, dict, tuple)):
                container(child, _join(path, attr), set())

    def container(items: Any, path: str, seen: set[int]) -> None:
        if id(items) in seen:
            return
        seen.add(id(items))
        used: dict[str, int] = {}
        for item in items.values() if isinstance(items, dict) else items:
            if isinstance(item, KerasSaveable):
                visit(item, _join(path, _unique(to_snake_case(type(item).__name__), used)))
            elif isinstance(item, (list, dict, tuple)):
                container(item, _join(path, _unique("container", used)), seen)

    visit(root, "")
    return out


def _optimizer_names(opt: Any) -> dict[str, Any]:
    if not opt.variables or not opt.built:
        raise UsageError(
            f"{type(opt).__name__} is not built (it has no variables yet): call "
            "optimizer.build(model.trainable_variables) first"
        )
    # Keras names a slot variable "<reference variable's path with / as _>_<slot>"; the path
    # holds per-process layer names, so the slot is named by the variable's index instead.
    refs = [(v.path.replace("/", "_") + "_", k) for k, v in enumerate(opt._trainable_variables)]
    refs.sort(key=lambda r: -len(r[0]))  # the longest prefix wins ("d_kernel_" vs "d_k_")
    out: dict[str, Any] = {}
    for i, v in enumerate(opt.variables):
        name = next(
            (f"{v.name[len(p) :]}/{k}" for p, k in refs if v.name.startswith(p)), str(v.name)
        )
        out[name if name not in out else f"vars/{i}"] = v
    return out


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _unique(name: str, used: dict[str, int]) -> str:
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _index(key: str) -> int:
    return int(key) if key.isdigit() else -1
