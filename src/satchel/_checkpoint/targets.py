"""What each kind of item becomes on save, and how it goes back into a live object on restore.

=====================================  ==============================  ===========================
item passed to ``save`` / ``restore``  saved as                        restored by
=====================================  ==============================  ===========================
``nn.Module`` (``named_parameters``)   its ``state_dict()``            ``load_state`` (strict)
Keras model, layer or optimizer        its variables by name           ``load_state`` (strict)
optimizer, LR scheduler, GradScaler    its ``state_dict()``            its ``load_state_dict``
a mapping of arrays                    itself                          ``load_state`` (in place)
``rng=True``                           ``capture_rng()``               ``restore_rng``
``extra=`` (any saveable value)        the item ``extra``              returned, never applied
=====================================  ==============================  ===========================

Anything else saveable (arrays, nested structures) is stored as it is and handed back in
``RestoreResult.items``; passing it as a restore target is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._rng import capture_rng, restore_rng
from .._state import LoadReport, load_state
from ..adapters import is_keras
from ..errors import UsageError
from .layout import COMMIT_FILE, EXTRA_ITEM, check_item_name, item_file

__all__ = ["apply", "prepare"]


def prepare(name: str, value: Any) -> Any:
    """The saveable structure for item ``name``.

    Raises:
        UsageError: ``name`` cannot name a file in a step folder, or is the reserved ``extra``.
    """
    if not check_item_name(name):
        raise UsageError(
            f"item name {name!r} must be letters, digits, '_', '.', '-', not start with '.' or "
            f"end in {item_file('')!r}, and not be {EXTRA_ITEM!r} or {COMMIT_FILE!r}"
        )
    if name == "rng" and value is True:
        return capture_rng()
    if is_keras(value):
        from ..adapters import keras as keras_adapter  # noqa: PLC0415 - Keras only when used

        return keras_adapter.state(value)
    state_dict = getattr(value, "state_dict", None)
    if callable(state_dict):
        return state_dict()
    return value


def apply(items: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, LoadReport]:
    """Load restored ``items`` into live ``targets`` of the same names, in place.

    Returns the ``load_state`` report of each model or mapping target.

    Raises:
        StateMismatchError: a model or mapping does not fit its saved arrays.
        UsageError: a target is of no kind in the table above.
    """
    reports: dict[str, LoadReport] = {}
    for name, target in targets.items():
        value = items[name]
        if name == "rng" and target is True:
            restore_rng(value)
        elif is_keras(target):
            from ..adapters import keras as keras_adapter  # noqa: PLC0415 - Keras only when used

            # A fresh Keras optimizer makes its variables on its first step; build them now,
            # for the model restored beside it, so there is something to load into.
            keras_adapter.build_optimizer(target, targets.values())
            reports[name] = load_state(target, value)
        elif hasattr(target, "named_parameters"):
            # Before load_state_dict: a module has both, and load_state keeps tied weights tied.
            reports[name] = load_state(target, value)
        elif hasattr(target, "load_state_dict"):
            target.load_state_dict(value)
        elif isinstance(target, dict):
            reports[name] = load_state(target, value)
        elif target not in (None, False):
            raise UsageError(f"restore target {name}={type(target).__name__} is not loadable")
    return reports
