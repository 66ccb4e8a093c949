"""``diff --plot``: a horizontal bar chart of the relative L2 change per tensor or layer.

matplotlib is an optional extra, imported only here and only when a plot is asked for. The
figure is drawn with the object API (no pyplot, no global backend switch) and written
atomically: a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from ..errors import FrameworkNotAvailableError

__all__ = ["check_target", "plot_changes"]

_MAX_LABEL = 48


def check_target(path: str | os.PathLike[str]) -> None:
    """Fail early (before a long comparison) if the plot cannot be drawn or written.

    Raises:
        FrameworkNotAvailableError: matplotlib is not installed.
        FileNotFoundError: the PNG's folder does not exist.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise FrameworkNotAvailableError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib"
        )
    folder = Path(path).parent
    if not folder.is_dir():
        raise FileNotFoundError(2, "folder does not exist", str(folder))


def plot_changes(
    bars: list[tuple[str, float]],
    path: str | os.PathLike[str],
    *,
    title: str,
    by_layer: bool,
    skipped: int = 0,
) -> None:
    """Draw ``(label, relative change)`` bars top to bottom in the given (file) order.

    Raises:
        FrameworkNotAvailableError: matplotlib is not installed.
    """
    check_target(path)
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 - optional extra, loaded on demand
    except ImportError as e:
        raise FrameworkNotAvailableError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib"
        ) from e
    out = Path(path)
    what = "layer" if by_layer else "tensor"
    labels = [_short(name) for name, _ in bars] or ["(nothing compared)"]
    values = [v for _, v in bars] or [0.0]
    positive = [v for v in values if v > 0]
    log = bool(positive) and max(positive) / min(positive) > 20  # spans orders of magnitude
    height = min(max(2.5, 0.24 * len(values) + 1.6), 60.0)
    fig = Figure(figsize=(9.0, height), layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(values)))
    colours = ["#d62728" if v == max(values) and v > 0 else "#1f77b4" for v in values]
    ax.barh(ys, values, color=colours, height=0.7)
    ax.set_yticks(ys, labels, fontsize=8 if len(values) <= 60 else 6)
    ax.set_ylim(len(values) - 0.5, -0.5)  # first tensor of the file at the top, no margins
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 3, max(positive) * 4)  # room for the value labels
    elif positive:
        ax.set_xlim(0, max(positive) * 1.15)
    ax.set_ylabel(what)
    ax.set_xlabel("relative L2 change  ||b − a|| / ||a||" + ("  (log scale)" if log else ""))
    subtitle = f"per {what}, {len(bars)} {what}s"
    if skipped:
        subtitle += f"; {skipped} not compared (added, removed or reshaped)"
    ax.set_title(f"{title}\n{subtitle}", fontsize=10)
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_axisbelow(True)
    for y, v in zip(ys, values, strict=True):
        if v > 0 or not log:
            ax.annotate(
                f"{v:.3g}",
                (v, y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _short(name: str) -> str:
    return name if len(name) <= _MAX_LABEL else "…" + name[-(_MAX_LABEL - 1) :]
