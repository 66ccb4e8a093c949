"""Plain-text rendering: aligned tables, trees of dotted names, numbers, shapes and sizes."""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._progress import human_bytes
from ._console import Style, visible_len

__all__ = [
    "Cell",
    "HelpFormatter",
    "TreeNode",
    "build_tree",
    "fmt_count",
    "fmt_float",
    "fmt_metrics",
    "fmt_shape",
    "fmt_time",
    "fmt_value",
    "human_bytes",
    "metrics_json",
    "render_fields",
    "render_table",
    "render_tree",
    "split_name",
]

Cell = str | tuple[str, tuple[str, ...]]  # text, or (text, style names)
_SEP = re.compile(r"[./]")


def fmt_count(n: int) -> str:
    """``24846`` -> ``'24,846'``."""
    return f"{n:,}"


def fmt_shape(shape: Sequence[int]) -> str:
    """``(256, 20)`` -> ``'[256, 20]'``; a 0-d shape is ``'[]'``."""
    return "[" + ", ".join(str(n) for n in shape) + "]"


def fmt_float(x: float | None, digits: int = 4) -> str:
    """Compact float for tables: ``-`` for undefined, fixed or scientific by magnitude."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 2, 1)}e}"


def fmt_value(v: Any, limit: int = 60) -> str:
    """A non-tensor value as shown in trees: its repr, shortened."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    style: Style,
    *,
    right: Iterable[int] = (),
    indent: str = "",
) -> list[str]:
    """Rows aligned in columns two spaces apart; ``right`` lists right-aligned columns."""
    right_cols = set(right)
    body = [[c if isinstance(c, tuple) else (c, ()) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], visible_len(text))

    def line(cells: Sequence[tuple[str, tuple[str, ...]]]) -> str:
        parts = []
        for i, (text, names) in enumerate(cells):
            pad = " " * (widths[i] - visible_len(text))
            shown = style(text, *names)
            last = i == len(cells) - 1
            if i in right_cols:
                parts.append(pad + shown)
            else:
                parts.append(shown if last else shown + pad)
        return indent + "  ".join(parts).rstrip()

    out = [line([(h, ("bold",)) for h in headers])]
    out.extend(line(row) for row in body)
    return out


def split_name(name: str) -> tuple[str, ...]:
    """Tree levels of a dotted name: split at ``.`` and ``/`` (TensorFlow), empty parts dropped."""
    parts = tuple(p for p in _SEP.split(name) if p)
    return parts or (name,)


@dataclass
class TreeNode:
    """One level of the tree: children in first-seen order, and what sits at this name."""

    name: str
    children: dict[str, TreeNode] = field(default_factory=dict)
    label: str | None = None  # a tensor's "dtype [shape]" or a value's repr
    is_tensor: bool = False
    tensors: int = 0  # in this subtree
    nbytes: int = 0

    def child(self, name: str) -> TreeNode:
        if name not in self.children:
            self.children[name] = TreeNode(name)
        return self.children[name]


def build_tree(root_name: str, entries: Iterable[tuple[str, str, int | None]]) -> TreeNode:
    """A tree from ``(dotted name, label, nbytes or None for a value)`` in display order."""
    root = TreeNode(root_name)
    for name, label, nbytes in entries:
        node, trail = root, [root]
        for part in split_name(name):
            node = node.child(part)
            trail.append(node)
        node.label = label
        if nbytes is not None:
            node.is_tensor = True
            for n in trail:
                n.tensors += 1
                n.nbytes += nbytes
    return root


def render_tree(
    root: TreeNode,
    style: Style,
    *,
    depth: int | None = None,
    summary: Callable[[TreeNode], str] | None = None,
) -> list[str]:
    """The tree drawn with box characters (ASCII without Unicode); ``depth`` folds deeper levels."""
    tee, last, bar, blank = (
        ("├── ", "└── ", "│   ", "    ")
        if style.unicode
        else (
            "|-- ",
            "`-- ",
            "|   ",
            "    ",
        )
    )
    describe = summary or _summary
    out = [style(root.name, "bold") + _note(root, style, describe)]

    def walk(node: TreeNode, prefix: str, level: int) -> None:
        items = list(node.children.values())
        # Leaves' labels line up within one level; a long outlier name does not push them all.
        width = max(
            (len(c.name) for c in items if c.label is not None and len(c.name) <= 24), default=0
        )
        for i, child in enumerate(items):
            end = i == len(items) - 1
            text = style(child.name, "cyan") if child.children else child.name
            if child.label is not None:
                text += " " * max(0, width - len(child.name))
                sep = "  " if child.is_tensor else " = "
                text += sep + style(child.label, "dim" if child.is_tensor else "yellow")
            folded = depth is not None and level >= depth and child.children
            if child.children:
                text += _note(child, style, describe)
            if folded:
                text += style(" …" if style.unicode else " ...", "dim")
            out.append(prefix + (last if end else tee) + text)
            if child.children and not folded:
                walk(child, prefix + (blank if end else bar), level + 1)

    walk(root, "", 1)
    return out


def _summary(node: TreeNode) -> str:
    if not node.tensors:
        return ""
    noun = "tensor" if node.tensors == 1 else "tensors"
    return f"{node.tensors} {noun}, {human_bytes(node.nbytes)}"


def _note(node: TreeNode, style: Style, describe: Callable[[TreeNode], str]) -> str:
    text = describe(node)
    return "  " + style(f"({text})", "dim") if text else ""


def render_fields(fields: Sequence[tuple[str, str]], style: Style, indent: str = "") -> list[str]:
    """``key  value`` lines with the keys aligned (an empty value drops the line)."""
    shown = [(k, v) for k, v in fields if v]
    width = max((len(k) for k, _ in shown), default=0)
    return [f"{indent}{style(k.ljust(width), 'bold')}  {v}" for k, v in shown]


def fmt_time(t: float) -> str:
    """Unix seconds as local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fmt_metrics(metrics: Mapping[str, float]) -> str:
    """``{'loss': 0.25}`` -> ``'loss=0.25'``."""
    return ", ".join(f"{k}={fmt_float(v)}" for k, v in metrics.items())


def metrics_json(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics for JSON: a non-finite value is ``null`` (as in the commit record, SPEC 8.3)."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps one-paragraph descriptions to the terminal; keeps multi-line text (examples) as is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)
